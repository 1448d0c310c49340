"""Regenerate the tables of BENCHMARKS.md from the JSON under benchmarks/results/.

    python benchmarks/render.py [--check]

Every table lives between two marker comments, ``<!-- bench:NAME:begin -->`` and
``<!-- bench:NAME:end -->``; this script replaces what is between them and touches nothing
else (the prose around a table is written by hand). A section whose JSON files are missing
keeps its current text. ``--check`` exits 1 if BENCHMARKS.md would change (CI: tables match
the committed JSON).

Sections and their files:

* ``auctioneer_load``: ``bench_auctioneer_load.json`` (memory on) and
  ``bench_auctioneer_load_nomem.json`` (memory off), written by ``make bench``;
* ``serve_overhead``, ``service_path``, ``memory_retrieval``, ``snapshot_throughput``:
  ``bench_<name>*.json``;
* ``eval_humaneval`` / ``eval_reasoning_gym``: the evaluation's ``summary.json`` copied to
  ``eval_summary_humaneval_plan.json`` / ``eval_summary_reasoning_gym_plan.json`` (every method present is shown,
  and a "× largest_direct" column when ``largest_direct`` is); for HumanEval the methods of a
  separate direct-baselines run, ``eval_summary_direct_humaneval.json``, are merged in when it
  was scored on the same held-out task ids;
* ``economics`` / ``unseen``: ``economics.json`` / ``unseen.json`` (``benchmarks/economics.py``,
  ``benchmarks/unseen.py``);
* ``memory_learning``: ``memory_learning.json``; ``demo``: ``demo_summary.json`` (the
  ``summary.json`` of ``make demo``).

Benchmark files carry ``_meta`` (commit, date, load; see ``benchmarks/bench.py``); for the
model-based files the header names the commit that last changed the file instead.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "BENCHMARKS.md"


# --- small helpers ---------------------------------------------------------------------------------
def _load(name: str) -> dict | None:
    p = RESULTS / name
    return json.loads(p.read_text()) if p.is_file() else None


def _num(x: float | None, nd: int = 1) -> str:
    if x is None:
        return "–"
    return f"{x:,.{nd}f}"


def _pct(x: float | None, nd: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{nd}f} %"


def _table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _meta_line(data: dict) -> str:
    m = data.get("_meta") or {}
    load = m.get("loadavg_before") or []
    after = m.get("loadavg_after") or []
    parts = [
        f"`{m.get('command', '?')}`",
        f"commit `{m.get('commit', '?')}`",
        m.get("date", "?"),
        f"load {load[0]:.2f} → {after[0]:.2f} (1-min average before → after) on "
        f"{m.get('nproc', '?')} CPUs"
        if load and after
        else "load not recorded",
        f"{m.get('wall_s', 0):.0f} s",
    ]
    return "_" + "; ".join(parts) + "._"


def _meta_block(runs: list[dict]) -> str:
    """One meta line, or a list of them (one per JSON file shown in the table)."""
    lines = [_meta_line(d) for d in runs]
    return lines[0] if len(lines) == 1 else "\n".join(f"- {ln}" for ln in lines)


def _file_line(name: str) -> str:
    """Where a model-based figure comes from: the file and the commit that last changed it."""
    try:
        log = subprocess.run(
            ["git", "log", "-1", "--format=%h %cs", "--", f"benchmarks/results/{name}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        log = []
    when = f"committed in `{log[0]}` on {log[1]}" if len(log) == 2 else "not committed yet"
    return f"_From `benchmarks/results/{name}` ({when}); machine load not recorded in it._"


# --- the no-model benchmarks -------------------------------------------------------------------------
def render_auctioneer() -> str | None:
    on, off = _load("bench_auctioneer_load.json"), _load("bench_auctioneer_load_nomem.json")
    runs = [d for d in (on, off) if d]
    if not runs:
        return None
    cols = ["measure"] + [
        "memory on (default)" if d.get("memory") else "memory off (`--no-memory`)" for d in runs
    ]

    def row(label: str, f: Callable[[dict], str]) -> list[str]:
        return [label] + [f(d) for d in runs]

    rows = [
        row("tasks per run (same ids, same prompts in all three)", lambda d: f"{d['tasks']:,}"),
        row("**batched auctioneer** (auctions/s)", lambda d: f"**{_num(d['auctions_per_s'])}**"),
        row("unbatched auctioneer, same tasks", lambda d: _num(d["unbatched_auctions_per_s"])),
        row("in-process, no Ray (the limit)", lambda d: _num(d["inprocess_auctions_per_s"])),
        row("batched ÷ unbatched", lambda d: f"{d['batched_over_unbatched']:.2f} ×"),
        row(
            "batched ÷ in-process (goal ≥ 0.5)",
            lambda d: f"**{d['batched_over_inprocess']:.2f}**",
        ),
        row(
            "peak RSS / PSS, all processes (MiB)",
            lambda d: f"{_num(d['peak_rss_mib'], 0)} / {_num(d['peak_pss_mib'], 0)}",
        ),
        row("lost / double awards", lambda d: f"{d['lost']} / {d['double_awards']}"),
    ]
    levels = list(runs[0]["added_latency_p50_ms"])
    for c in levels:
        rows.append(
            row(
                f"added latency at {c} in flight, p50 / p99 (ms; in-process p50)",
                lambda d, c=c: (
                    f"{_num(d['added_latency_p50_ms'].get(c))} / "
                    f"{_num(d.get('added_latency_p99_ms', {}).get(c))} "
                    f"({_num(d.get('inprocess_added_latency_p50_ms', {}).get(c))})"
                ),
            )
        )
    lat = runs[0].get("latency_ms", [0, 0])
    note = (
        f"Added latency: agents sleeping U[{lat[0]:g}, {lat[1]:g}] ms per call, the batched "
        "auctioneer; per auction, its time in the auctioneer (waiting for a slot excluded) minus "
        "the scripted latency on its critical path."
    )
    return "\n\n".join([_meta_block(runs), _table(cols, rows), note])


def render_serve() -> str | None:
    d = _load("bench_serve_overhead.json")
    if d is None:
        return None
    c = d.get("auction_clients", 10)
    rows = [
        [
            "passthrough (`model: <agent>`) vs the upstream called directly",
            "1",
            f"{_num(d['p50_ms']['direct'], 2)}",
            f"{_num(d['p50_ms']['passthrough'], 2)}",
            f"**{_num(d['p50_overhead_ms'], 2)}**",
            f"{_num(d['p99_overhead_ms'], 2)}",
        ],
        [
            "Serve's floor: echo deployment vs the same app under uvicorn",
            "1",
            f"{_num(d['p50_ms']['uvicorn_echo'], 2)}",
            f"{_num(d['p50_ms']['serve_echo'], 2)}",
            f"{_num(d['serve_floor_p50_ms'], 2)}",
            "–",
        ],
        [
            "auction (`model: sale`, 2 agents) vs the same auction in-process",
            "1",
            f"{_num(d['auction_inprocess_p50_ms'], 2)}",
            f"{_num(d['auction_serve_p50_ms'], 2)}",
            f"**{_num(d['auction_p50_overhead_ms'], 2)}**",
            f"{_num(d['auction_p99_overhead_ms'], 2)}",
        ],
        [
            "the same auction, clients at once",
            str(c),
            f"{_num(d['auction_inprocess_p50_ms_c10'], 2)}",
            f"{_num(d['auction_serve_p50_ms_c10'], 2)}",
            f"**{_num(d['auction_p50_overhead_ms_c10'], 2)}**",
            f"{_num(d['auction_p99_overhead_ms_c10'], 2)}",
        ],
    ]
    head = [
        "path",
        "clients",
        "baseline p50 (ms)",
        "sale-ray p50 (ms)",
        "p50 overhead (ms)",
        "p99 overhead (ms)",
    ]
    verdict = "met" if d.get("goal_met") else "**not met**"
    tail = (
        f"Passthrough overhead ÷ Serve's floor: {d['overhead_over_floor']} (goal ≤ 1.5: "
        f"{verdict}); passthrough throughput {_num(d['rps'])} req/s at {d['concurrency']} "
        f"clients; errors {d['throughput_errors']} (passthrough) / "
        f"{d.get('auction_errors_c10', 0)} (auctions at {c} clients)."
    )
    return "\n\n".join([_meta_line(d), _table(head, rows), tail])


def render_service_path() -> str | None:
    d = _load("bench_service_path.json")
    if d is None:
        return None

    def met(x: dict) -> str:
        if "error" in x:
            return "**did not run**"
        return "met" if x.get("met") else "**not met**"

    def trio(m: dict) -> str:
        return f"{_num(m.get('p50'))} / {_num(m.get('p90'))} / {_num(m.get('p99'))}"

    parts = [_meta_line(d)]
    on = d.get("online") or {}
    if "levels" in on:
        rows = [
            [
                str(lv["clients"]),
                f"{lv['requests_per_side']:,}",
                trio(lv["inprocess_ms"]),
                trio(lv["serve_ms"]),
                f"**{lv['p50_ratio']:.2f}** ({met(lv)})" if lv.get("p50_ratio") else "–",
                f"{_num(lv['service_direct_ms']['p50'])} ({lv['service_direct_p50_ratio']:.2f})"
                if lv.get("service_direct_p50_ratio")
                else "–",
                f"{_num(lv['inprocess_rps'])} / {_num(lv['serve_rps'])}",
                f"{lv['errors']['inprocess']} / {lv['errors']['serve']}",
            ]
            for lv in on["levels"]
        ]
        head = [
            "clients at once",
            "requests per side",
            "in-process p50 / p90 / p99 (ms)",
            "service path p50 / p90 / p99 (ms)",
            f"p50 ratio (goal ≤ {on.get('goal_p50_ratio', 1.5):g})",
            "service alone, no HTTP / Serve: p50 (ratio)",
            "req/s in-process / service",
            "errors in-process / service",
        ]
        parts.append(
            f"**Online auction path** ({met(on)}): `model: sale` over HTTP → Serve "
            f"({on.get('replicas')} replicas) → the service → {on.get('agents')} scripted agents "
            f"sleeping {on.get('latency_ms_per_call'):g} ms a call; baseline: "
            f"{on.get('baseline')}. Memory off on both sides. *Service alone*: this driver "
            "calling `Service.submit` (what a replica does), interleaved with the other two."
        )
        parts.append(_table(head, rows))
    elif on:
        parts.append(f"**Online auction path**: did not run ({str(on.get('error'))[:200]}).")
    rows = []
    b = d.get("batch") or {}
    if "shared_span_auctions_per_s" in b:
        rows += [
            [
                f"`run_batch` attached to a running service vs a private one: auctions/s over "
                f"the auctions' span, median of {b['repeat']} × {b['tasks']:,} tasks",
                _num(b["shared_span_auctions_per_s"]),
                _num(b["private_span_auctions_per_s"]),
                f"**{b['span_shared_over_private']:.2f}** (≥ {b['goal_span_shared_over_private']:g}"
                f": {met(b)})",
            ],
            [
                "the same runs, auctions/s over the `run_batch` call (the private one starts "
                "its agents and auctioneer)",
                _num(b["shared_auctions_per_s"]),
                _num(b["private_auctions_per_s"]),
                f"{b['shared_over_private']:.2f}",
            ],
        ]
    elif b:
        rows.append(["`run_batch` shared vs private", "–", "–", met(b)])
    f = d.get("inflight") or {}
    if "peak_pss_mib" in f:
        rows.append(
            [
                f"{f['tasks']:,} tasks in flight through the service, memory on "
                f"(`{f['embedder']}`, {f['shards']} shards): PSS of every Ray process (MiB), "
                "at the peak vs idle",
                f"**{_num(f['peak_pss_mib'], 0)}**",
                _num(f["idle_pss_mib"], 0),
                f"< {_num(f['goal_peak_pss_mib'], 0)}: {met(f)}",
            ]
        )
    elif f:
        rows.append(["tasks in flight, peak PSS", "–", "–", met(f)])
    if rows:
        parts.append(_table(["measure", "service", "baseline", "ratio / goal"], rows))
    if "peak_pss_mib" in f:
        top = ", ".join(
            f"{k} {_num(v['pss_mib'], 0)}" + (f" ({v['processes']})" if v["processes"] > 1 else "")
            for k, v in list(f["by_name_at_peak"].items())[:6]
        )
        parts.append(
            f"At {f['tasks']:,} in flight (peak {f['peak_in_flight']:,} admitted at once; "
            f"{f['records']:,} records, {f['lost']} lost, {f['errors']} errors, "
            f"{_num(f['auctions_per_s'])} auctions/s): PSS at the peak by process "
            f"(MiB; how many): {top}; "
            f"{f['processes_at_peak']} processes, RSS sum {_num(f['peak_rss_mib'], 0)} MiB."
        )
    return "\n\n".join(parts)


def _bench_files(prefix: str) -> list[dict]:
    out = [json.loads(p.read_text()) for p in sorted(RESULTS.glob(f"bench_{prefix}*.json"))]
    return sorted(out, key=lambda d: d.get("records", 0))


def render_retrieval() -> str | None:
    runs = _bench_files("memory_retrieval")
    if not runs:
        return None

    def recall(d: dict) -> str:
        r = next((v for k, v in d.items() if k.startswith("recall_at_")), None)
        same = "yes" if d.get("exact_match") else "no"
        return same if r is None else f"{r:.3f} ({same})"

    def goal(d: dict) -> str:
        g = d.get("goal_p99_ms")
        if g is None:
            return "–"
        return "met" if d["p99_ms"] <= g else f"missed ({d['p99_ms'] / g:.1f} × {g:g} ms)"

    def pair(d: dict, a: str, b: str) -> str:
        return f"{_num(d.get(a))} / {_num(d.get(b))}" if a in d else "–"

    def during(d: dict) -> str:
        if "during_snapshot_p99_ms" not in d:
            return "–"
        return f"{_num(d['during_snapshot_p99_ms'])} ({d['during_snapshot_p99_ms'] / d['p99_ms']:.1f} × idle)"

    def restore(d: dict) -> str:
        if d.get("restore_s") is None:
            return "–"
        rebuilt = d.get("restore_rebuild_s")
        return (
            f"{_num(d['restore_s'])} / {_num(rebuilt)}"
            if rebuilt is not None
            else _num(d["restore_s"])
        )

    rows = [
        [
            f"{d['records']:,}",
            f"{d.get('index', 'exact')} · {d.get('transport', 'calls')}",
            pair(d, "p50_ms", "p99_ms"),
            pair(d, "calls_p50_ms", "calls_p99_ms"),
            pair(d, "exact_p50_ms", "exact_p99_ms"),
            pair(d, "baseline_p50_ms", "baseline_p99_ms"),
            _num(d["batched_per_query_ms"]),
            recall(d),
            goal(d),
        ]
        for d in runs
    ]
    head = [
        "records",
        "index · transport",
        "p50 / p99 (ms)",
        "same queries, actor calls (ms)",
        "exact through the shards (ms)",
        "in-process scan (ms)",
        "batched 32 (ms/query)",
        "recall@8 (top-8 = scan)",
        "p99 goal",
    ]
    upkeep = [
        [
            f"{d['records']:,}",
            _num(d.get("snapshot_s")),
            during(d),
            restore(d),
            _num(d.get("build_s")),
            _num(d.get("bytes_per_record"), 0),
            f"{d.get('shards_peak_rss_mb', 0):,} MB",
        ]
        for d in runs
        if "snapshot_s" in d
    ]
    upkeep_head = [
        "records",
        "snapshot (s)",
        "p99 during it (ms)",
        "restore, index loaded / rebuilt (s)",
        "index build (s)",
        "bytes / record",
        "shards' peak RSS",
    ]
    parts = [_meta_block(runs), _table(head, rows)]
    if upkeep:
        parts.append(_table(upkeep_head, upkeep))
    return "\n\n".join(parts)


def render_snapshot() -> str | None:
    runs = _bench_files("snapshot_throughput")
    if not runs:
        return None
    rows = [
        [
            f"{d['records']:,} ({_num(d['data_mb'], 0)} MB)",
            d["target"],
            f"{_num(d['mb_per_s'])} / {_num(d['raw_mb_per_s'])}",
            f"**{d['ratio']:.2f}**",
            f"{_num(d['restore_mb_per_s'])} / {_num(d['raw_restore_mb_per_s'])}",
            f"{d['restore_ratio']:.2f}",
            f"{_num(d['snapshot_file_mb'])} / {_num(d['raw_file_mb'])}",
        ]
        for d in runs
    ]
    head = [
        "records",
        "store",
        "snapshot / raw MB/s",
        "ratio (goal ≥ 0.70)",
        "restore / raw read MB/s",
        "restore ratio",
        "file MB snapshot / raw",
    ]
    return "\n\n".join([_meta_block(runs), _table(head, rows)])


# --- model-based figures (their own commands; rendered from their summaries) -----------------------
LABELS = {
    "cascade": "cascade (FrugalGPT-style, example self-check)",
    "knn": "knn (MiniLM neighbours)",
    "sale_default": "sale_default (shipped weights)",
    "sale_no_memory": "sale_no_memory (fitted weights)",
    "sale_published": "sale_published (fitted weights + memory, live: SALE as published)",
    "sale": "**sale** (the recommended configuration: bid = direct answer)",
    "sale_lean": "sale_lean (reserve, cheap jury)",
    "sale_lean_nojury": "sale_lean_nojury",
    "sale_lean_verify": "sale_lean_verify (reserve, cheap jury, escalate on failed examples)",
    "oracle": "oracle (cheapest agent whose plan-conditioned answer passes)",
    "largest_direct": "largest_direct (one call, no plan)",
    "smallest_direct": "smallest_direct (one call, no plan)",
    "cascade_direct": "cascade_direct (direct calls, example self-check)",
    "knn_direct": "knn_direct (MiniLM neighbours, direct calls)",
    "oracle_direct": "oracle_direct (cheapest agent whose direct call passes)",
}


def _methods(d: dict) -> dict[str, dict]:
    return {k: v for k, v in d.items() if not k.startswith("_") and isinstance(v, dict)}


def render_eval(name: str, direct_name: str | None = None) -> str | None:
    """The methods of ``name``; plus those of ``direct_name`` (a separate run of the direct
    baselines) when that file exists and was scored on the same held-out task ids."""
    d = _load(name)
    if d is None:
        return None
    methods = _methods(d)
    sources = [_file_line(name)]
    extra = _load(direct_name) if direct_name else None
    if extra is not None:
        same = (extra.get("_run") or {}).get("test_ids") == (d.get("_run") or {}).get("test_ids")
        if same:
            methods.update({k: v for k, v in _methods(extra).items() if k not in methods})
            sources.append(_file_line(direct_name)[:-2] + "; same held-out task ids: merged._")
        else:
            sources.append(_file_line(direct_name)[:-2] + "; other held-out tasks: not merged._")
    direct = methods.get("largest_direct")
    plan = methods.get("largest")
    head = ["method", "pass@1", "cost $"]
    if direct:
        head.append("× largest_direct")
    if plan:
        head.append("× largest (plan-conditioned)" if direct else "× largest")
    head += ["largest share", "auction overhead"]
    rows = []
    for m, v in methods.items():
        r = [LABELS.get(m, m), f"{v['pass_at_1']:.3f} ({v.get('passed', '?')}/{v['tasks']})"]
        r.append(f"{v['cost_usd']:.6f}")
        for base in (direct, plan):
            if base:
                r.append(f"{v['cost_usd'] / base['cost_usd']:.2f}" if base["cost_usd"] else "–")
        r += [_pct(v.get("largest_share")), _num(v.get("auction_overhead"), 2)]
        rows.append(r)
    src = sources[0] if len(sources) == 1 else "\n".join(f"- {x}" for x in sources)
    parts = [src, _table(head, rows)]
    run = d.get("_run") or {}
    if run:
        parts.append(
            f"{run.get('dataset', '?')}: {run.get('tasks', '?')} tasks, "
            f"{run.get('train_tasks', '?')} train / {run.get('test_tasks', '?')} held-out "
            f"(figures on the held-out tasks); largest agent `{run.get('largest_agent', '?')}`."
        )
    sale = d.get("_sale") or {}
    if sale:
        base = "`largest`" + (" (plan-conditioned)" if direct else "")
        parts.append(f"Targets as the summary's `_sale` computes them, against {base}:")
        parts.append(_targets(sale))
    return "\n\n".join(parts)


def _targets(sale: dict) -> str:
    """The targets table: one row per SALE variant, from the summary's ``_sale`` section."""

    def yes(b: bool | None) -> str:
        return "–" if b is None else ("**met**" if b else "missed")

    rows = []
    for m, s in sale.items():
        t = s.get("targets") or {}
        cost_key = next((k for k in t if k.startswith("cost_le")), None)
        nd = t.get("not_dominated_by") or {}
        rows.append(
            [
                m,
                f"{s.get('pass_at_1_minus_largest', 0):+.3f} ({yes(t.get('pass_at_1_ge_largest'))})",
                f"{_num(s.get('cost_vs_largest'), 2)} × ({yes(t.get(cost_key))})",
                yes(t.get("largest_share_le_0.40")),
                ", ".join(f"{k}: {'no' if ok else 'yes'}" for k, ok in nd.items()) or "–",
                _pct(s.get("oracle_gain_captured"), 0),
                _pct(s.get("oracle_saving_captured"), 0),
            ]
        )
    head = [
        "SALE variant",
        "pass@1 − largest (≥ 0)",
        "cost ÷ largest (≤ 0.60)",
        "largest share ≤ 40 %",
        "dominated by",
        "oracle's pass@1 gain captured",
        "oracle's saving captured",
    ]
    return _table(head, rows)


def render_memory_learning() -> str | None:
    d = _load("memory_learning.json")
    if d is None:
        return None
    rows = []

    def add(arm: str, w: dict, label: str | None = None) -> None:
        rows.append(
            [
                arm,
                label or f"{w['start']}–{w['end']}",
                _pct(w["cheap_share"]),
                f"{w['pass_at_1']:.3f}",
                str(w["refined_bids"]),
                str(w["refined_wins"]),
                f"{w['cost_usd']:.6f}",
            ]
        )

    for arm, a in d["arms"].items():
        for w in a["windows"]:
            add(arm, w)
        add(arm, a["total"], "all")
    ref = d.get("reference_largest_only")
    if ref:
        add("largest alone", ref["total"], "all")
    head = [
        "arm",
        "window",
        "cheap share",
        "pass@1",
        "refined bids",
        "refined winners",
        "$ (all phases)",
    ]
    return "\n\n".join([_file_line("memory_learning.json"), _table(head, rows)])


def render_demo() -> str | None:
    d = _load("demo_summary.json")
    if d is None:
        return None
    rows = [
        [
            p,
            f"{d['tokens_by_phase'].get(p, 0):,}",
            f"{d['cost_usd_by_phase'].get(p, 0.0):.8f}",
            f"{d['seconds_by_phase'].get(p, 0.0):.2f}",
        ]
        for p in d["tokens_by_phase"]
    ]
    share = ", ".join(f"{a} {100 * s:.0f} %" for a, s in d.get("winner_share", {}).items())
    p1 = d.get("pass_at_1")
    head_line = (
        f"tasks {d['tasks']}, errors {d['errors']}; pass@1 "
        f"{'–' if p1 is None else f'{p1:.3f}'} ({d['passed']}/{d['verified']}); total cost "
        f"${d['cost_usd']:.8f}; auction overhead {_num(d.get('auction_overhead'), 2)} "
        f"(bid+jury+refine tokens ÷ execution tokens); winner share {share}."
    )
    table = _table(["phase", "tokens", "cost $", "mean s/task"], rows)
    return "\n\n".join([_file_line("demo_summary.json"), head_line, table])


def _ci(r: dict) -> str:
    return "–" if r.get("ci95") is None else f"[{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}]"


def render_jury_injection() -> str | None:
    d = _load("jury_injection.json")
    if d is None:
        return None
    # "without the screen": the held-out arms from the same run, the fitted ones from the run
    # before the screen existed (jury_injection_noscreen.json, same tasks and juror)
    before = (_load("jury_injection_noscreen.json") or {}).get("arms", {})
    arms = {a: r for a, r in d["arms"].items() if not a.endswith("_screen_off")}
    rows = []
    for arm, r in arms.items():
        off = d["arms"].get(f"{arm}_screen_off") or before.get(arm)
        rows.append(
            [
                arm,
                str(r["n"]),
                _num(r["mean_gain"], 3),
                _ci(r),
                _pct(r.get("share_gained_over_0.5"), 0),
                "–" if off is None else f"{_num(off['mean_gain'], 3)} {_ci(off)}",
            ]
        )
    beat = ", ".join(d["attacks_beating_noise"]) or "none"
    head = (
        f"juror `{d['model']}`, {d['trials']} HumanEval tasks, {d['abstained']} abstentions, "
        f"{d['seconds']:.0f} s; screen {'on' if d.get('screen') else 'off'}; attacks whose "
        f"interval lies wholly above the benign arm's: **{beat}**."
    )
    fp = d.get("false_positives")
    if fp:
        head += (
            f" False positives: {fp['real_bids_flagged']} of {fp['real_bids']} real bids by the "
            f"juror model, {fp['task_prompts_flagged']} of {fp['task_prompts']} task prompts "
            "(HumanEval and reasoning-gym) had a sentence removed."
        )
    table = _table(
        ["arm", "trials", "mean score gain", "95 % CI", "gained > 0.5", "gain without the screen"],
        rows,
    )
    return "\n\n".join([_file_line("jury_injection.json"), head, table])


def render_memory_poisoning() -> str | None:
    d = _load("memory_poisoning.json")
    if d is None:
        return None
    head = (
        f"refiner `{d['model']}`, {d['trials']} HumanEval tasks, planted word `{d['word']}`; "
        f"the screen removed the planted sentence in {d['screen_caught_phrasings']} of "
        f"{d['trials']} poisoned past tasks; {d['seconds']:.0f} s."
    )
    rows = [
        [arm, str(r["n"]), _pct(r["share_with_word"], 0), _ci({"ci95": r["gain_vs_control_ci95"]})]
        for arm, r in d["arms"].items()
    ]
    table = _table(
        ["arm", "trials", "refined plans with the word", "gain vs control, 95 % CI"], rows
    )
    return "\n\n".join([_file_line("memory_poisoning.json"), head, table])


def render_agent_loop() -> str | None:
    d = _load("agent_loop.json")
    if d is None:
        return None
    arms = ("single", "single_steps", "loop")
    cells = {(r["dataset"], r["bin"], r["agent"], r["arm"]): r for r in d["table"]}
    rows = []
    for key, b in d["bins"].items():
        for agent in d["agents"]:
            row = [key if agent == d["agents"][0] else "", agent]
            for arm in arms:
                c = cells.get((b["dataset"], b["bin"], agent, arm))
                row.append(
                    "–"
                    if c is None
                    else f"{c['pass_at_1']:.2f} ({c['tasks']}) · {c['mean_tokens']:.0f}"
                )
            rows.append(row)
    table = _table(
        ["bin", "agent", "single: pass@1 (n) · tokens", "single, step by step", "loop"], rows
    )
    curve = _table(
        [
            "bin",
            "length",
            "largest, loop: median tokens",
            "largest, single",
            "auction (bids + jury)",
            "auction / loop execution",
            "auction / single execution",
        ],
        [
            [
                k,
                b["length"] or "–",
                _num(b["largest_loop_tokens_median"], 0),
                _num(b["largest_single_tokens_median"], 0),
                _num(b["auction_tokens_median"], 0),
                _num(b["overhead_vs_loop_median"], 2),
                _num(b["overhead_vs_single_median"], 2),
            ]
            for k, b in d["bins"].items()
        ],
    )
    head = (
        f"{d['tasks']} tasks, agents {', '.join(f'`{a}`' for a in d['agents'])}, loop "
        f"`max_turns: {d['max_turns']}`; a bin is `long` from a median of {d['long_tokens']} "
        "tokens of the largest agent's loop execution. The median auction (bids + jury) spends "
        f"{_num(d.get('auction_tokens_median'), 0)} tokens: it would cost as much as the "
        f"execution it buys at {_num(d.get('break_even_execution_tokens'), 0)} execution tokens, "
        f"and 25 % of it at {_num(d.get('quarter_overhead_execution_tokens'), 0)}."
    )
    png = "![auction overhead against execution length](benchmarks/results/agent_loop_overhead.png)"
    return "\n\n".join([_file_line("agent_loop.json"), head, table, curve, png])


def _iv(ci: list | None, nd: int = 3) -> str:
    return f"[{ci[0]:.{nd}f}, {ci[1]:.{nd}f}]" if ci else "–"


def _yes(x: bool | None) -> str:
    return "–" if x is None else ("**met**" if x else "missed")


METHOD_HEAD = [
    "method",
    "pass@1",
    "95 % CI",
    "− largest_direct (paired CI)",
    "cost $",
    "× largest_direct (CI)",
    "largest share",
]


def _method_table(methods: dict, overhead: bool = True) -> str:
    """One row per method: pass@1 with its interval, the paired difference against the
    largest agent called directly, cost and its ratio, largest share (and auction overhead)."""
    rows = []
    for m, x in methods.items():
        row = [
            LABELS.get(m, m),
            f"{x['pass_at_1']:.3f} ({x.get('passed', '?')}/{x['tasks']})",
            _iv(x.get("pass_at_1_ci")),
            _iv(x.get("pass_at_1_diff_ci")),
            f"{x['cost_usd']:.6f}",
            f"{_num(x.get('cost_vs_largest_direct'), 2)} {_iv(x.get('cost_ratio_ci'), 2)}",
            _pct(x.get("largest_share")),
        ]
        rows.append(row + ([_num(x.get("auction_overhead"), 2)] if overhead else []))
    return _table(METHOD_HEAD + (["overhead"] if overhead else []), rows)


def _targets_table(t: dict) -> str:
    """The issue's targets for ``sale``, each with its figure and verdict."""
    rows = [
        [
            "pass@1 − largest_direct: lower end of the paired 95 % CI ≥ −0.03",
            _iv(t["pass_at_1_diff_ci"]),
            _yes(t["pass_diff_lower_at_least_-0.03"]),
        ],
        [
            "cost ≤ 0.60 × largest_direct",
            f"{_num(t['cost_ratio'], 3)} {_iv(t.get('cost_ratio_ci'), 2)}",
            _yes(t["cost_at_most_0.60"]),
        ],
        [
            "not dominated by cascade_direct / knn_direct",
            ", ".join(t["dominated_by"]) or "none",
            _yes(not t["dominated_by"]),
        ],
        [
            "≥ 50 % of the direct oracle's pass@1 gain",
            _pct(t["oracle_gain_captured"]),
            _yes(t["oracle_gain_at_least_50pc"]),
        ],
        [
            "≥ 60 % of the direct oracle's saving",
            _pct(t["oracle_saving_captured"]),
            _yes(t["oracle_saving_at_least_60pc"]),
        ],
    ]
    if "long_bin_overhead" in t:
        rows.append(
            [
                "auction tokens ≤ 25 % of execution tokens on the long bins",
                "no long bin"
                if t.get("long_bin_overhead") is None
                else _pct(t["long_bin_overhead"]),
                _yes(t.get("long_bin_overhead_at_most_25pc")),
            ]
        )
    return _table(["target", "figure", "verdict"], rows)


def _ablation_table(ablations: dict) -> str:
    head = [
        "configuration",
        "what is taken away",
        "chosen on the training split",
        "pass@1",
        "cost $",
        "answers / task",
    ]
    return _table(
        head,
        [
            [
                k,
                a["what"],
                a["chosen"],
                f"{a['pass_at_1']:.3f}",
                f"{a['cost_usd']:.6f}",
                f"{a['asked_per_task']:.2f}",
            ]
            for k, a in ablations.items()
        ],
    )


def _runs_table(first: str, runs: dict, chosen: bool = False) -> str:
    """One row per replayed configuration (``economics.held_out``'s figures)."""
    head = [first, *(["chosen"] if chosen else []), "tasks", "pass@1", "largest_direct pass@1"]
    head += ["− largest_direct (paired CI)", "× largest_direct (CI)"]
    return _table(
        head,
        [
            [
                k,
                *([x["chosen"]] if chosen else []),
                str(x["tasks"]),
                f"{x['pass_at_1']:.3f}",
                f"{x['largest_direct_pass_at_1']:.3f}",
                _iv(x.get("pass_at_1_diff_ci")),
                f"{_num(x['cost_vs_largest_direct'], 2)} {_iv(x.get('cost_ratio_ci'), 2)}",
            ]
            for k, x in runs.items()
        ],
    )


def _cv_line(cv: dict | None) -> str:
    """What the cross-validation of the whole fit said about outcome memory."""
    if not cv:
        return "."
    verdict = "allowed" if cv["memory_pays"] else "kept off"
    return (
        f"; memory {verdict} by {cv['folds']}-fold cross-validation of the fit on the training "
        f"split (loss {cv['loss_with_memory']:.4f} with memory, {cv['loss_without_memory']:.4f} "
        "without)."
    )


def render_economics() -> str | None:
    """Per domain: the held-out table with paired intervals, the targets, the ablations; the
    transfer between domains; the overhead-vs-length curve (``economics.json``)."""
    d = _load("economics.json")
    if d is None:
        return None
    parts = [_file_line("economics.json")]
    for dom, v in d["domains"].items():
        rec = v["recommend"]
        parts += [
            f"### {dom}: {v['held_out']} held-out of {v['tasks']} tasks",
            _method_table(v["methods"]),
            f"Targets for `sale` on {dom} (goals, not assertions):",
            _targets_table(v["targets"]),
            f"The recommended configuration fitted here: {rec['fit']['chosen']}"
            + _cv_line(rec["fit"].get("memory_cv"))
            + " Ablations (each refitted on the training split without the mechanism, scored "
            "held-out):",
            _ablation_table(rec["ablations"]),
        ]
    emb = {k: v["embedded_default"] for k, v in d["domains"].items() if "embedded_default" in v}
    if emb:
        parts.append(
            "### The embedded default (`sale_ray/recommended.yaml`, fitted on every shipped "
            "domain's training split, trust per task kind) on each domain's held-out tasks"
        )
        parts.append(_runs_table("domain", emb))
    if d.get("transfer"):
        parts.append("### Transfer: fitted on one domain, run unchanged on the other")
        parts.append(_runs_table("fitted on → run on", d["transfer"], chosen=True))
    pvd = d.get("plan_vs_direct")
    if pvd:
        parts.append(
            f"### Execute by the plan, or directly? ({pvd['tasks']} held-out HumanEval tasks)"
        )
        rows = []
        for agent, a in pvd["agents"].items():
            for b, x in a["per_bin"].items():
                rows.append(
                    [
                        agent,
                        b,
                        str(x["tasks"]),
                        f"{x['plan_pass_at_1']:.3f}",
                        _num(x["direct_pass_at_1"], 3),
                        f"{x['plan_cost_usd']:.6f}",
                        _num(x["direct_cost_usd"], 6),
                    ]
                )
            rows.append(
                [
                    f"**{agent}**",
                    "all",
                    str(pvd["tasks"]),
                    f"{a['plan_pass_at_1']:.3f}",
                    f"{a['direct_pass_at_1']:.3f}",
                    f"{a['plan_tokens']} tok",
                    f"{a['direct_tokens']} tok",
                ]
            )
        parts.append(
            _table(
                [
                    "agent",
                    "bin",
                    "tasks",
                    "pass@1, plan then execute",
                    "pass@1, direct",
                    "cost $, plan",
                    "cost $, direct",
                ],
                rows,
            )
        )
        parts.append(
            "Planning first never raised an agent's pass@1 in any bin and cost ~3× the tokens, "
            "so the recommended configuration executes directly: no bin is left where the "
            "policy would choose the plan (a plan could still pick the winner; here the "
            "answer's own check does that for free)."
            if all(
                x["plan_pass_at_1"] <= (x["direct_pass_at_1"] or 0)
                for a in pvd["agents"].values()
                for x in a["per_bin"].values()
            )
            else "In some bins planning first raised pass@1: see the rows."
        )
    if d.get("plot"):
        parts.append(f"![auction overhead against execution length]({d['plot']})")
    return "\n\n".join(parts)


def render_unseen() -> str | None:
    """Per domain: every router fitted on the shipped training split, scored on the tasks past
    the shipped matrix (``unseen.json``)."""
    d = _load("unseen.json")
    if d is None:
        return None
    parts = [_file_line("unseen.json")]
    for dom, v in d["domains"].items():
        extra = {"embedded default": v["embedded_default"]}
        extra["sale, memory of all 80 shipped tasks"] = v["memory_of_all_shipped"]
        extra |= {f"fitted on {k.split('->')[0]}": x for k, x in v["transfer"].items()}
        parts += [
            f"### {dom}: {v['tasks']} unseen tasks ({v['first']} … {v['last']})",
            _method_table(v["methods"], overhead=False),
            f"Targets for `sale` on the unseen {dom} tasks:",
            _targets_table(v["targets"]),
            f"`sale` here is the configuration fitted on the shipped training split: {v['chosen']}"
            + _cv_line(v.get("memory_cv"))
            + " Its ablations, refitted there without each mechanism:",
            _ablation_table(v["ablations"]),
            "Other configurations on the same unseen tasks:",
            _runs_table("configuration", extra),
        ]
    return "\n\n".join(parts)


SELF_TESTS = ("self_tests.json", "self_tests_writer_1.5b.json")


def render_self_tests() -> str | None:
    docs = [(n, d) for n in SELF_TESTS if (d := _load(n)) is not None]
    if not docs:
        return None
    parts = []
    for name, d in docs:
        ho = d["held_out"]
        parts.append(
            f"#### Writer `{d['writer']}`: `{d['command']}`\n\n"
            + _file_line(name)
            + f"\n\n{d['tasks']} tasks, {d['tasks_with_tests']} with usable tests "
            f"({d['tests_per_task']:.1f} per task). The writer's own tests are wrong often: "
            f"HumanEval's reference solution passes {_pct(d['reference_test_accuracy'], 0)} of "
            f"them and all of a task's in {_pct(d['reference_passes_all'], 0)} of tasks. "
            f"Writing them costs {_num(d['writer_cost_vs_largest_direct'], 2)}x the largest "
            f"agent's direct calls on the same tasks. Rates per answering agent on the "
            f"{ho['tasks']} held-out tasks (strict: every test passes; lenient: at least half; "
            "the example check reads the original prompts, where they show examples):"
        )
        rows = []
        for a, r in ho["agents"].items():
            st, half, ex = r["self_tests"], r["self_tests_half"], r["example_check"]
            rows.append(
                [
                    f"`{a}`",
                    f"{st['hidden_passed']}/{st['checked']}",
                    _pct(st["false_alarm"], 0),
                    _pct(st["miss"], 0),
                    _pct(half["false_alarm"], 0),
                    _pct(half["miss"], 0),
                    _num(r["self_tests_auc"], 2),
                    _pct(ex["false_alarm"], 0),
                    _pct(ex["miss"], 0),
                ]
            )
        parts.append(
            _table(
                [
                    "answers of",
                    "hidden tests passed",
                    "false alarm (strict)",
                    "miss (strict)",
                    "false alarm (lenient)",
                    "miss (lenient)",
                    "AUC (share of tests passed)",
                    "example check: false alarm",
                    "example check: miss",
                ],
                rows,
            )
        )
        rp = d["replay"]
        ref = rp["largest_direct"]
        lines = [
            ["largest agent called directly", "–", _num(ref["pass_at_1"], 3), "1.00", "1", "–"]
        ]
        for arm, what in (
            ("runs_only", "no examples, no tests: only whether the code runs"),
            ("self_tests", "the writer's tests, strict"),
            ("self_tests_half", "the writer's tests, lenient"),
        ):
            r = rp[arm]
            lines.append(
                [
                    what,
                    r["chosen"],
                    _num(r["pass_at_1"], 3),
                    _num(r["cost_vs_largest_direct"], 2),
                    _num(r["asked_per_task"], 2),
                    _num(r.get("train_loss"), 3),
                ]
            )
        parts.append(
            f"What the check buys: the answer auction refitted on the training split with each "
            f"check in place of the examples, on the {rp['held_out_tasks']} held-out tasks, the "
            "tests' price counted on every task:\n\n"
            + _table(
                [
                    "check",
                    "fitted ladder",
                    "pass@1",
                    "cost / largest direct",
                    "answers asked",
                    "training loss",
                ],
                lines,
            )
            + f"\n\nBy training loss the fitter would pick **{rp.get('fitter_picks', '?')}**."
        )
    return "\n\n".join(parts)


SECTIONS: dict[str, Callable[[], str | None]] = {
    "economics": render_economics,
    "unseen": render_unseen,
    "self_tests": render_self_tests,
    "agent_loop": render_agent_loop,
    "jury_injection": render_jury_injection,
    "memory_poisoning": render_memory_poisoning,
    "auctioneer_load": render_auctioneer,
    "serve_overhead": render_serve,
    "service_path": render_service_path,
    "memory_retrieval": render_retrieval,
    "snapshot_throughput": render_snapshot,
    "eval_humaneval": lambda: render_eval(
        "eval_summary_humaneval_plan.json", "eval_summary_direct_humaneval.json"
    ),
    "eval_reasoning_gym": lambda: render_eval("eval_summary_reasoning_gym_plan.json"),
    "memory_learning": render_memory_learning,
    "demo": render_demo,
}


def render(text: str) -> tuple[str, list[str]]:
    """``text`` with every section whose data exists regenerated; and the sections done."""
    done = []
    for name, fn in SECTIONS.items():
        pat = re.compile(
            rf"(<!-- bench:{re.escape(name)}:begin -->\n)(.*?)(<!-- bench:{re.escape(name)}:end -->)",
            re.S,
        )
        if not pat.search(text):
            print(f"render: no markers for {name} in BENCHMARKS.md", file=sys.stderr)
            continue
        body = fn()
        if body is None:
            continue
        text = pat.sub(lambda m, body=body: m.group(1) + body + "\n" + m.group(3), text, count=1)
        done.append(name)
    return text, done


def render_file(check: bool = False) -> int:
    """Rewrite BENCHMARKS.md (``check``: only say whether it would change, by the status)."""
    old = DOC.read_text()
    new, done = render(old)
    if check:
        return int(new != old)
    DOC.write_text(new)
    print(f"render: BENCHMARKS.md sections regenerated: {', '.join(done) or 'none'}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if BENCHMARKS.md would change")
    return render_file(ap.parse_args().check)


if __name__ == "__main__":
    sys.exit(main())
