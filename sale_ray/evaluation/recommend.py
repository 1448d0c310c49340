"""The recommended configuration: the fitter chooses the mechanism, not only the weights.

On the training split's direct calls it fits ``bid: answer`` (:mod:`sale_ray.auction.policy`):

* **outcome memory as V** — per agent, the share of its training answers that passed the hidden
  tests, by what the answer's own check said (``passed`` / ``failed`` / ``unchecked``), shrunk
  towards the agent's overall pass rate (``PRIOR_WEIGHT`` pseudo-answers) so a state seen twice
  does not read as certainty; an unseen state is the agent's overall rate;
* **outcome memory of similar tasks** (``answer_memory_k``) — how each agent's answers did on
  the k most similar training tasks moves its answer's value (:func:`policy.answer_value`);
  what memory holds of a training task is what the live auction would have recorded there:
  the outcome of every agent the same configuration asked (k = 0, memory off, is always a
  candidate; a held-out task's memory is the training tasks);
* **a check that fits the task** — code: the answer's run of the prompt's examples; answers: a
  per-agent mean-token-entropy threshold (the one that best predicts its training outcomes);
* **which mechanism** — every ladder (each subset of the cheaper agents, the dearest always
  last) × every acceptance threshold that changes a decision × every memory k, scored by the
  training loss
  ``mean (1 - passed) + cost_lambda * cost / mean cost of the dearest agent called directly`` (the
  loss SALE's weights are fitted on), ties to the shorter ladder and then the higher threshold;
* **memory only where it generalises** — whether the choice may read memory at all is decided
  by cross-validation of the whole fit on the training split (:func:`memory_cv`): with ~700
  candidates and a few dozen training tasks, the lowest training loss picks memory for gains
  of one task's cost, which is selection, not evidence; on each fold the fit is rerun on the
  other folds with memory among the candidates and without, and memory is allowed only when
  it wins on the folds it did not see.

The result is a plain ``auction:`` section (:func:`recommended_auction`) that ``sale-ray run
--config``, the service and ``model: sale`` online read; ``sale-ray eval`` writes it as
``recommended.yaml`` and reports it as the method ``sale``.
"""

from __future__ import annotations

import hashlib
import itertools
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..auction import policy
from ..config import AnswerTrust, AuctionConfig, write_config_file
from ..types import Execution, Task
from .matrix import Decision, TaskRow, spend
from .neighbours import Neighbours

PRIOR_WEIGHT = 2.0  # pseudo-answers at the agent's overall rate behind every per-state figure
MEMORY_FOLDS = 5  # cross-validation folds that decide whether the fit may read memory
MEMORY_KS = (3, 5, 8, 12)  # memory sizes tried besides 0 (off): the kNN router's grid
# with memory an answer's value is continuous: thresholds on a grid besides the trust figures
MEMORY_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))

#: what memory holds of one past task: agent -> whether its answer passed
Outcomes = dict[str, bool]


def has_examples(row: TaskRow) -> bool:
    """Whether the task's prompt shows examples an answer's own check can run (code only), as
    the live auction decides it (``prompt_examples``; the row keeps no entry point, and on
    HumanEval's 164 prompts that changes no answer). A recorded check on a prompt without
    examples only says whether the code runs."""
    from ..evaluators.code import prompt_examples

    if row.kind != "code":
        return False
    return prompt_examples(Task(id=row.task_id, prompt=row.prompt, kind="code")) is not None


def _answers(row: TaskRow) -> dict[str, Execution]:
    """Each agent's recorded answer in ``row`` (a :func:`.row.direct_view` row)."""
    return {a: row.cells[a].execution or Execution(agent=a, error="no answer") for a in row.cells}


def _entropy_limit(points: Sequence[tuple[float, bool]]) -> float | None:
    """The entropy threshold that best predicts success (accept at or below it); None when no
    threshold beats accepting everything."""
    if not points:
        return None
    base = float(np.mean([ok for _, ok in points]))
    best: tuple[float, float | None] = (base, None)
    for tau in sorted({h for h, _ in points}):
        acc = float(np.mean([(h <= tau) == ok for h, ok in points]))
        if acc > best[0] + 1e-12:
            best = (acc, tau)
    return best[1]


def _agent_trust(a: str, rows: Sequence[TaskRow], examples: bool | None) -> AnswerTrust:
    """One agent's figures from ``rows`` (see :func:`fit_trust`)."""
    limit = _entropy_limit(
        [
            (r.cells[a].execution.entropy, r.cells[a].passed)
            for r in rows
            if r.kind != "code"
            and r.cells[a].execution is not None
            and r.cells[a].execution.entropy is not None
        ]
    )
    probe = policy.Policy(
        weights=AuctionConfig().weights, answer_trust={a: AnswerTrust(entropy_max=limit)}
    )
    counts: dict[str, list[bool]] = {s: [] for s in policy.CHECK_STATES}
    for r in rows:
        shown = has_examples(r) if examples is None else examples
        state = policy.check_state(probe, r.kind, _answers(r)[a], shown)
        counts[state].append(r.cells[a].passed)
    overall = float(np.mean([r.cells[a].passed for r in rows])) if rows else 0.5
    figures = {
        s: (sum(v) + PRIOR_WEIGHT * overall) / (len(v) + PRIOR_WEIGHT) for s, v in counts.items()
    }
    return AnswerTrust(
        **{s: round(f, 4) for s, f in figures.items()}, entropy_max=limit, overall=round(overall, 4)
    )


def fit_trust(train: Sequence[TaskRow], examples: bool | None = None) -> dict[str, AnswerTrust]:
    """Per agent, P(passed) of its answers by check state, from the training rows' outcomes;
    when the rows mix task kinds, figures per kind as well (``AnswerTrust.kinds``): a check
    means something else on code than on answers, and an agent may be good at only one.
    ``examples``: as in :func:`answer_decision`."""
    agents = sorted({a for r in train for a in r.cells})
    kinds = sorted({r.kind for r in train})
    out: dict[str, AnswerTrust] = {}
    for a in agents:
        rows = [r for r in train if a in r.cells]
        base = _agent_trust(a, rows, examples)
        if len(kinds) > 1:
            per = {k: _agent_trust(a, [r for r in rows if r.kind == k], examples) for k in kinds}
            base = base.model_copy(update={"kinds": per})
        out[a] = base
    return out


def outcomes(row: TaskRow, asked: Sequence[str] | None = None) -> Outcomes:
    """What memory holds of ``row`` once its auction was judged: each asked agent's outcome
    (``asked``: default every agent in the row)."""
    return {a: row.cells[a].passed for a in (row.cells if asked is None else asked)}


def answer_decision(
    method: str,
    row: TaskRow,
    pol: policy.Policy,
    examples: bool | None = None,
    memory: Sequence[Outcomes] | None = None,
) -> Decision:
    """``bid: answer`` replayed on a direct-view row, priced: every answer asked but the
    winner's is a lost bid, the winner's answer is the execution. ``examples`` overrides
    whether the recorded check read the prompt's examples (default: :func:`has_examples`);
    ``memory``: the outcomes of past tasks, most similar first (``pol.memory_k`` are read)."""
    shown = has_examples(row) if examples is None else examples
    evidence = policy.memory_evidence((memory or [])[: pol.memory_k]) if pol.memory_k else None
    out = policy.replay_answers(pol, row.kind, shown, row.prices, _answers(row), evidence)
    cells = row.cells
    lost = [cells[a].run_usage for a in out.executed if a != out.winner]
    won = [cells[out.winner].run_usage] if out.winner else []
    tokens, cost = spend({"bid": lost, "execute": won})
    return Decision(
        method=method,
        task_id=row.task_id,
        bin=row.bin,
        order=row.order,
        agent=out.winner,
        executed=list(out.executed),
        provisional=out.winner,
        passed=bool(out.winner) and cells[out.winner].passed,
        tokens=tokens,
        cost_usd=cost,
        note=out.reasons[0] if out.reasons else "",
    )


@dataclass(frozen=True)
class Candidate:
    """One mechanism the fitter tried, with its training figures."""

    ladder: tuple[str, ...]
    accept_value: float
    loss: float
    pass_at_1: float
    cost_usd: float
    memory_k: int = 0

    def describe(self) -> str:
        memory = f", memory k={self.memory_k}" if self.memory_k else ""
        return f"ladder {' -> '.join(self.ladder)}, accept at {self.accept_value:.4g}{memory}"


@dataclass
class Fit:
    """What the fitter chose, and everything it weighed; with memory, the training rows and
    their neighbourhoods that a held-out task's memory is read from (:meth:`memory`)."""

    trust: dict[str, AnswerTrust]
    chosen: Candidate
    candidates: list[Candidate] = field(default_factory=list)
    train: Sequence[TaskRow] = ()
    neighbours: Neighbours | None = None
    examples: bool | None = None
    #: what :func:`memory_cv` found, when it decided whether memory may be read
    memory_cv: dict[str, Any] | None = None

    def policy(self) -> policy.Policy:
        return policy.Policy(
            weights=AuctionConfig().weights,
            bid="answer",
            answer_agents=self.chosen.ladder,
            answer_trust=self.trust,
            accept_value=self.chosen.accept_value,
            memory_k=self.chosen.memory_k,
        )

    def memory(self, row: TaskRow) -> list[Outcomes] | None:
        """What memory holds for ``row`` under the chosen configuration (:func:`memory_for`,
        the training tasks)."""
        return memory_for(row, self.policy(), self.train, self.neighbours, self.examples)

    def decide(self, method: str, row: TaskRow) -> Decision:
        """The chosen configuration on ``row``, with the memory it would have."""
        return answer_decision(method, row, self.policy(), self.examples, self.memory(row))

    def summary(self, top: int = 20) -> dict[str, Any]:
        """The choice, the trust figures, the ``top`` candidates by training loss and the best
        one of each memory size (how much memory bought on the training split)."""
        ranked = sorted(self.candidates, key=_preference)
        best: dict[int, Candidate] = {}
        for c in ranked:
            best.setdefault(c.memory_k, c)
        return {
            "mechanism": "bid: answer",
            "chosen": self.chosen.describe(),
            "trust": {a: t.model_dump() for a, t in self.trust.items()},
            "candidates_tried": len(ranked),
            "memory_cv": self.memory_cv,
            "candidates": [_candidate(c) for c in ranked[:top]],
            "best_by_memory_k": {str(k): _candidate(c) for k, c in sorted(best.items())},
        }


def _preference(c: Candidate) -> tuple:
    """The fitter's order: training loss, then (ties) no memory, the shorter ladder and the
    stricter threshold (trust less on equal evidence)."""
    return (round(c.loss, 12), c.memory_k, len(c.ladder), -c.accept_value)


def _candidate(c: Candidate) -> dict[str, Any]:
    return {
        "ladder": list(c.ladder),
        "accept_value": c.accept_value,
        "memory_k": c.memory_k,
        "train_loss": round(c.loss, 6),
        "train_pass_at_1": round(c.pass_at_1, 4),
        "train_cost_usd": c.cost_usd,
    }


def blind(trust: Mapping[str, AnswerTrust]) -> dict[str, AnswerTrust]:
    """``trust`` with the check ignored: every answer worth its agent's unchecked figure."""

    def one(t: AnswerTrust) -> AnswerTrust:
        u = t.unchecked
        return AnswerTrust(
            passed=u, failed=u, unchecked=u, kinds={k: one(v) for k, v in t.kinds.items()}
        )

    return {a: one(t) for a, t in trust.items()}


def _figures(t: AnswerTrust) -> set[float]:
    out = {getattr(t, s) for s in policy.CHECK_STATES}
    for k in t.kinds.values():
        out |= _figures(k)
    return out


def _asked(
    pol: policy.Policy, past: Sequence[TaskRow], examples: bool | None
) -> dict[str, list[str]]:
    """Per past task: the agents ``pol`` (memory off) asks there — whose outcomes the live
    auction, judging every answer it got, leaves in memory."""
    plain = replace(pol, memory_k=0)
    return {r.task_id: answer_decision("memory", r, plain, examples).executed for r in past}


def memory_for(
    row: TaskRow,
    pol: policy.Policy,
    past: Sequence[TaskRow],
    neighbours: Neighbours | None,
    examples: bool | None = None,
) -> list[Outcomes] | None:
    """What memory holds for ``row`` when ``past`` ran before it under ``pol``: the
    ``pol.memory_k`` most similar past tasks, each with the outcomes of the agents ``pol``
    asked there (as if memory were off then: a replay does not chain memories). None:
    memory off."""
    if not pol.memory_k or neighbours is None:
        return None
    near = neighbours.of(row, past)[: pol.memory_k]
    asked = _asked(pol, near, examples)
    return [outcomes(p, asked[p.task_id]) for p in near]


def _reference_cost(rows: Sequence[TaskRow]) -> float:
    """The loss's unit of cost: the dearest agent's mean direct-call cost on ``rows``."""
    dearest = rows[0].by_price()[-1]
    return float(np.mean([r.cells[dearest].run_usage.cost_usd for r in rows])) or 1.0


def _loss(ds: Sequence[Decision], cost_lambda: float, ref: float) -> tuple[float, float, float]:
    """(the fitter's loss, pass@1, mean cost) of ``ds``: ``(1 - passed) + cost_lambda * cost /
    ref``, averaged."""
    passed = float(np.mean([d.passed for d in ds]))
    cost = float(np.mean([d.total_cost for d in ds]))
    return (1 - passed) + cost_lambda * cost / ref, passed, cost


def _folds(rows: Sequence[TaskRow], k: int) -> list[list[TaskRow]]:
    """``rows`` in ``k`` folds by a hash of the task id (a task's fold never depends on which
    other tasks are there, nor on their order); empty folds left out."""
    out: list[list[TaskRow]] = [[] for _ in range(k)]
    for r in rows:
        out[zlib.crc32(r.task_id.encode()) % k].append(r)
    return [f for f in out if f]


def memory_cv(
    train: Sequence[TaskRow], cost_lambda: float, folds: int, neighbours: Neighbours, **fit: Any
) -> dict[str, Any] | None:
    """Does reading outcome memory pay on tasks the fit did not see? The whole fit (ladder,
    threshold and memory size chosen by training loss), with memory among the candidates and
    without, is rerun on each fold's complement and scored on the fold with the loss it
    minimises (``fit``: the other arguments of :func:`fit_recommended`). None when there are
    not two folds."""
    parts = _folds(train, folds)
    if len(parts) < 2:
        return None
    ref = _reference_cost(train)
    scored: dict[bool, list[Decision]] = {True: [], False: []}
    for part in parts:
        seen = {r.task_id for r in part}
        rest = [r for r in train if r.task_id not in seen]
        for mem in (True, False):
            f = fit_recommended(
                rest, cost_lambda, neighbours=neighbours if mem else None, memory_folds=0, **fit
            )
            scored[mem] += [f.decide("cv", r) for r in part]
    with_, without = (_loss(scored[m], cost_lambda, ref)[0] for m in (True, False))
    return {
        "folds": len(parts),
        "loss_with_memory": round(with_, 6),
        "loss_without_memory": round(without, 6),
        "memory_pays": with_ < without - 1e-12,
    }


#: fits made in this process, by what they were fitted on (see :func:`fit_recommended`)
_FITS: dict[tuple, Fit] = {}
_FITS_KEPT = 32


def fit_recommended(
    train: Sequence[TaskRow],
    cost_lambda: float,
    *,
    use_check: bool = True,
    ladders: Sequence[tuple[str, ...]] | None = None,
    examples: bool | None = None,
    neighbours: Neighbours | None = None,
    memory_ks: Sequence[int] = MEMORY_KS,
    memory_folds: int = MEMORY_FOLDS,
) -> Fit:
    """Choose ladder, threshold and memory size on the training rows (direct views); see the
    module doc.

    ``neighbours`` (embedding every training row) turns outcome memory on as a candidate:
    each training task's memory is the other training tasks, leave one out. For ablations:
    ``use_check=False`` fits without the answers' own checks (memory alone), ``ladders``
    restricts the ladders tried, ``neighbours=None`` leaves memory out; ``examples`` as in
    :func:`answer_decision` (a replay of another check); ``memory_folds``: the folds of
    :func:`memory_cv`, which decides whether the choice may read memory (below 2: the lowest
    training loss decides, memory or not).

    The fit is deterministic and, cross-validated, costs a dozen fits; one evaluation asks for
    the same one several times (the method, its ablations, the written config), so the last
    few are remembered by the rows' content and the arguments."""
    digest = hashlib.sha256()
    for r in train:
        digest.update(r.model_dump_json().encode())
    key = (
        digest.hexdigest(),
        cost_lambda,
        use_check,
        tuple(map(tuple, ladders)) if ladders else None,
        examples,
        neighbours.embedder if neighbours is not None else None,
        tuple(memory_ks),
        memory_folds,
    )
    if key not in _FITS:
        if len(_FITS) >= _FITS_KEPT:
            _FITS.pop(next(iter(_FITS)))
        _FITS[key] = _fit(
            train, cost_lambda, use_check, ladders, examples, neighbours, memory_ks, memory_folds
        )
    return _FITS[key]


def _fit(
    train: Sequence[TaskRow],
    cost_lambda: float,
    use_check: bool,
    ladders: Sequence[tuple[str, ...]] | None,
    examples: bool | None,
    neighbours: Neighbours | None,
    memory_ks: Sequence[int],
    memory_folds: int,
) -> Fit:
    """:func:`fit_recommended`, uncached."""
    if not train:
        raise ValueError("no training rows to fit the recommended configuration on")
    trust = fit_trust(train, examples)
    if not use_check:
        trust = blind(trust)
    order = train[0].by_price()
    dearest, cheaper = order[-1], order[:-1]
    ref = _reference_cost(train)
    values = sorted(set().union(*(_figures(t) for t in trust.values())))
    thresholds = sorted({*values, 1.0})
    candidates = []
    every = [
        (*c, dearest) for n in range(len(cheaper) + 1) for c in itertools.combinations(cheaper, n)
    ]
    blank = Fit(trust, Candidate((dearest,), 1.0, 0, 0, 0))
    near = {r.task_id: neighbours.of(r, train) for r in train} if neighbours else {}
    ks = [0, *memory_ks] if neighbours else [0]
    for ladder in ladders or every:
        for tau in sorted({*thresholds, *(MEMORY_THRESHOLDS if neighbours else ())}):
            base = replace(blank, chosen=Candidate(ladder, tau, 0, 0, 0)).policy()
            asked = _asked(base, train, examples) if neighbours else {}  # shared by every k
            for k in (k for k in ks if k or tau in thresholds):  # memory thresholds: k > 0
                pol = replace(base, memory_k=k)
                # each training task's memory: the others, as this configuration judged them
                memory = (
                    {t: [outcomes(p, asked[p.task_id]) for p in ps[:k]] for t, ps in near.items()}
                    if k
                    else {}
                )
                ds = [
                    answer_decision("fit", r, pol, examples, memory.get(r.task_id)) for r in train
                ]
                loss, passed, cost = _loss(ds, cost_lambda, ref)
                candidates.append(Candidate(ladder, tau, loss, passed, cost, k))
    cv = None
    if neighbours is not None and memory_folds >= 2:
        opts = {"use_check": use_check, "ladders": ladders, "examples": examples}
        cv = memory_cv(train, cost_lambda, memory_folds, neighbours, memory_ks=memory_ks, **opts)
    allowed = [c for c in candidates if not c.memory_k] if cv and not cv["memory_pays"] else []
    chosen = min(allowed or candidates, key=_preference)
    return Fit(trust, chosen, candidates, train, neighbours, examples, cv)


ABLATIONS = {
    "every_agent": "every agent on the ladder (no agent skipped by its training record)",
    "no_check": "the answers' own checks ignored: outcome memory alone values an answer",
    "no_memory": "no outcome memory of similar tasks (answer_memory_k 0): an answer is worth "
    "its agent's figure for what its check said",
    "memory_by_loss": "memory read whenever it lowers the training loss (memory_folds 0: no "
    "cross-validation)",
    "unfitted_trust": "default trust figures (no outcome memory): passed 0.9, failed 0.05, "
    "unchecked 0.5, every agent, accept at 0.8",
}


def ablate(
    rows: Sequence[TaskRow],
    cost_lambda: float,
    neighbours: Neighbours | None = None,
    memory_folds: int = MEMORY_FOLDS,
) -> dict[str, Any]:
    """The recommended fit and, per mechanism taken away (refitted without it), its held-out
    pass@1 and cost: the ``_recommend`` section of ``summary.json`` (direct-view rows;
    ``neighbours`` embeds them all, or None to fit without outcome memory)."""
    train = [r for r in rows if r.split == "train"]
    test = [r for r in rows if r.split == "test"]
    near: dict[str, Any] = {"neighbours": neighbours, "memory_folds": memory_folds}
    fit = fit_recommended(train, cost_lambda, **near)
    everyone = (tuple(train[0].by_price()),)
    fits = {
        "recommended": fit,
        "every_agent": fit_recommended(train, cost_lambda, ladders=everyone, **near),
        "no_check": fit_recommended(train, cost_lambda, use_check=False, **near),
    }
    if neighbours is not None:
        fits["no_memory"] = fit_recommended(train, cost_lambda)
        fits["memory_by_loss"] = fit_recommended(
            train, cost_lambda, neighbours=neighbours, memory_folds=0
        )
    default = {a: AnswerTrust() for a in train[0].cells}
    unfitted = Fit(default, Candidate(everyone[0], AuctionConfig().accept_value, 0, 0, 0))
    out: dict[str, Any] = {"fit": fit.summary(), "ablations": {}}
    for name, f in {**fits, "unfitted_trust": unfitted}.items():
        ds = [f.decide(name, r) for r in test]
        out["ablations"][name] = {
            "what": ABLATIONS.get(name, "the recommended configuration"),
            "chosen": f.chosen.describe(),
            "pass_at_1": sum(d.passed for d in ds) / max(len(ds), 1),
            "cost_usd": sum(d.total_cost for d in ds),
            "asked_per_task": sum(len(d.executed) for d in ds) / max(len(ds), 1),
        }
    return out


def write_recommended(fit: Fit, base: Any, path: Any, provenance: Mapping[str, Any]) -> Any:
    """The recommended configuration as a whole config file (``base`` with its auction
    section replaced): ``sale-ray run --config`` and the service read it."""
    data = base.model_dump(mode="json")
    data["auction"] = recommended_auction(fit, base.auction)
    head = [
        "# The recommended configuration, fitted by sale_ray.evaluation.recommend.",
        f"# chosen: bid: answer, {fit.chosen.describe()} (training loss {fit.chosen.loss:.4f})",
        f"# provenance: {dict(provenance)}",
    ]
    return write_config_file(path, data, head)


def recommended_auction(fit: Fit, base: AuctionConfig | Mapping[str, Any] | None = None) -> dict:
    """The ``auction:`` section of the recommended configuration (``base``'s other settings
    kept): what ``recommended.yaml`` holds."""
    cfg = AuctionConfig.model_validate(base or {}).model_dump(mode="json")
    cfg.update(
        bid="answer",
        answer_agents=list(fit.chosen.ladder),
        answer_trust={a: t.model_dump(mode="json") for a, t in fit.trust.items()},
        accept_value=fit.chosen.accept_value,
        answer_memory_k=fit.chosen.memory_k,
    )
    return cfg


__all__ = [
    "ABLATIONS",
    "Candidate",
    "Fit",
    "ablate",
    "answer_decision",
    "blind",
    "fit_recommended",
    "fit_trust",
    "has_examples",
    "memory_for",
    "memory_cv",
    "outcomes",
    "recommended_auction",
    "write_recommended",
]
