"""`sale-ray report` on a decisions log far larger than the report: time and peak memory.

    .venv/bin/python benchmarks/report_scale.py [--copies 8000] [--dir /tmp/report-scale]

Builds a synthetic evaluation (50 tasks, every method), repeats its ``decisions.parquet`` rows
``--copies`` times (3.0 M rows at 8000), then measures, each in a fresh process: the report
(DuckDB queries over the file in place) and, for contrast, only loading the same rows as Python
dicts, as the report did before it was built on :mod:`sale_ray.queries`. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.fakes

CHILD = """
import resource, sys, time
from pathlib import Path
src = Path(sys.argv[1])
t = time.perf_counter()
if sys.argv[2] == "report":
    from sale_ray.evaluation.analytics import write_report
    write_report(str(src), src / "report", plots=True)
else:
    import pyarrow.parquet as pq
    pq.read_table(src / "decisions.parquet").to_pylist()
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def build(folder: Path, copies: int) -> dict:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from sale_ray.config import EvalConfig, SaleConfig
    from sale_ray.evaluation import DEFAULT_METHODS, analyse
    from sale_ray.evaluation.matrix import decisions_table
    from tests.fakes.synthetic import synthetic_matrix

    rows = synthetic_matrix(50, seed=3)
    decisions, _ = analyse(
        rows, SaleConfig(eval=EvalConfig(embedder="hashing")), DEFAULT_METHODS, sweep=False
    )
    base = decisions_table(decisions, "large")
    col = base.schema.get_field_index("order")
    big = pa.concat_tables(
        base.set_column(col, "order", pc.add(base.column("order"), i * 1000)) for i in range(copies)
    )
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(big, folder / "decisions.parquet")
    return {
        "rows": big.num_rows,
        "arrow_mib": round(big.nbytes / 2**20),
        "file_mib": round((folder / "decisions.parquet").stat().st_size / 2**20),
    }


def measure(folder: Path, what: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder), what], capture_output=True, text=True, check=True
    ).stdout.split()
    return {"seconds": round(float(out[0]), 1), "peak_rss_mib": round(float(out[1]))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--copies", type=int, default=8000)
    p.add_argument("--dir", default="/tmp/report-scale")
    args = p.parse_args()
    folder = Path(args.dir)
    res = build(folder, args.copies)
    res["report"] = measure(folder, "report")
    res["python_rows_only"] = measure(folder, "rows")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
