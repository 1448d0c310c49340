"""`make bench`: run the benchmarks that need no model, save their JSON, regenerate BENCHMARKS.md.

    python benchmarks/bench.py [--only NAME ...] [--list]

Each benchmark prints one JSON line; it is saved as ``benchmarks/results/bench_<name>.json``
with a ``_meta`` key added (the command, the commit — ``git rev-parse --short HEAD``, "+dirty"
when tracked files differ from it —, the date, the 1-minute load average before and after, the
CPU count, the wall time). Then :mod:`render` rewrites the tables of BENCHMARKS.md from all
the JSON there. A benchmark that fails keeps its previous file and makes the exit status 1.
Sizes are chosen to fit in about 15 minutes on a 2-core machine (more when it is shared: the
load average each file records says how busy it was).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

# name -> arguments of `python benchmarks/...` (the sizes that fit the time on this box)
BENCHES: dict[str, list[str]] = {
    "auctioneer_load": ["auctioneer_load.py", "--tasks", "500", "--repeat", "2", "--json"],
    "auctioneer_load_nomem": [
        "auctioneer_load.py",
        "--tasks",
        "2000",
        "--repeat",
        "2",
        "--no-memory",
        "--json",
    ],
    # --index ann: what memory.index: auto runs at these sizes (the exact scan is measured too)
    "memory_retrieval_100k": [
        "memory_retrieval.py",
        "--records",
        "100000",
        "--index",
        "ann",
        "--json",
    ],
    "memory_retrieval_1m": [
        "memory_retrieval.py",
        "--records",
        "1000000",
        "--index",
        "ann",
        "--json",
    ],
    "snapshot_throughput": [
        "snapshot_throughput.py",
        "--records",
        "100000",
        "--repeat",
        "3",
        "--json",
    ],
    "serve_overhead": ["serve_overhead.py", "--json"],
    # online path at 1/10/100 clients, batch shared vs private, 10,000 in flight (~10 min)
    "service_path": ["service_path.py", "--json"],
}
TIMEOUT_S = 900


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        # the results this run writes (and the page rendered from them) are not dirt
        dirty = bool(
            git(
                "status", "--porcelain", "--untracked-files=no", "--", ".",
                ":!benchmarks/results", ":!BENCHMARKS.md",
            )
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _finite(x):
    """NaN / infinity (which some benchmarks print) as null: the file stays standard JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def run_one(name: str, args: list[str]) -> bool:
    cmd = [sys.executable, str(ROOT / "benchmarks" / args[0]), *args[1:]]
    shown = "python benchmarks/" + " ".join(args)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    meta = {
        "command": shown,
        "commit": commit(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
    print(f"bench: {name}: {shown}", flush=True)
    t0 = time.monotonic()
    try:
        p = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        print(f"bench: {name}: timed out after {TIMEOUT_S} s", file=sys.stderr)
        return False
    meta["wall_s"] = round(time.monotonic() - t0, 1)
    meta["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
    try:
        result = json.loads(lines[-1])
        assert isinstance(result, dict)
    except (IndexError, ValueError, AssertionError):
        print(f"bench: {name}: no JSON line (exit {p.returncode})", file=sys.stderr)
        print(p.stderr[-3000:], file=sys.stderr)
        return False
    meta["exit_status"] = p.returncode
    result = _finite(result)
    result["_meta"] = meta
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"bench_{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"bench: {name}: {meta['wall_s']} s, exit {p.returncode}", flush=True)
    return p.returncode == 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=sorted(BENCHES), help="run only these")
    ap.add_argument("--list", action="store_true", help="print the commands and exit")
    args = ap.parse_args()
    if args.list:
        for name, a in BENCHES.items():
            print(f"{name:<24} python benchmarks/{' '.join(a)}")
        return 0
    t0 = time.monotonic()
    ok = [run_one(n, BENCHES[n]) for n in (args.only or BENCHES)]
    print(f"bench: all done in {time.monotonic() - t0:.0f} s", flush=True)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import render

    rc = render.render_file()
    return 0 if all(ok) and rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
