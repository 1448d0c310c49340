"""Does the auction pay for itself? Replayed from the shipped evaluation matrices in about a minute.

    python benchmarks/economics.py [--json]

For every domain whose matrix is shipped (``benchmarks/results/eval-<dataset>/matrix.parquet``,
written by ``sale-ray eval --methods direct``; its response cache is ``benchmarks/cache/``), on
that matrix's seeded split:

* the held-out table of every direct method and of ``sale`` (the recommended configuration,
  fitted on the training split), with bootstrap 95 % intervals paired by task: pass@1, the
  pass@1 difference against ``largest_direct`` and the cost ratio — written as
  ``benchmarks/results/eval_summary_<dataset>.json`` (the same document ``sale-ray eval`` writes);
* the ablation of each mechanism of the recommended configuration (``_recommend``);
* the transfer: the configuration fitted on one domain's training split, run unchanged on the
  other's held-out tasks, against the one fitted there;
* the auction overhead ((lost bids) / execution tokens) against execution length, per bin, as
  a PNG (``economics_overhead.png``).

Nothing is fitted on a held-out task. ``--json`` prints the document (also written to
``benchmarks/results/economics.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sale_ray.config import load_config  # noqa: E402
from sale_ray.evaluation.intervals import method_intervals  # noqa: E402
from sale_ray.evaluation.matrix import decisions_table  # noqa: E402
from sale_ray.evaluation.measurement import load_matrix  # noqa: E402
from sale_ray.evaluation.neighbours import Neighbours  # noqa: E402
from sale_ray.evaluation.recommend import (  # noqa: E402
    answer_decision,
    fit_recommended,
    memory_for,
)
from sale_ray.evaluation.row import direct_view  # noqa: E402
from sale_ray.evaluation.run import analyse, expand_methods, run_info, summarize  # noqa: E402
from sale_ray.problem_sets import task_length  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CONFIG = ROOT / "benchmarks" / "eval_local.yaml"
DOMAINS = ("humaneval", "reasoning_gym")
TARGETS = {"pass_diff_lo": -0.03, "cost_ratio": 0.60, "oracle_gain": 0.5, "oracle_saving": 0.6}


#: what economics.json keeps of each method's summary
METHOD_FIGURES = (
    "pass_at_1",
    "passed",
    "tasks",
    "pass_at_1_ci",
    "pass_at_1_diff_ci",
    "cost_usd",
    "cost_vs_largest_direct",
    "cost_ratio_ci",
    "largest_share",
    "auction_overhead",
)


def method_figures(methods: dict) -> dict:
    """Each method's :data:`METHOD_FIGURES` (``methods``: a summary without its ``_`` keys)."""
    return {m: {k: v.get(k) for k in METHOD_FIGURES} for m, v in methods.items()}


def matrix_path(domain: str) -> Path:
    return RESULTS / f"eval-{domain}" / "matrix.parquet"


def domain_summary(domain: str) -> tuple[dict, list]:
    rows = load_matrix(matrix_path(domain))
    cfg = load_config(CONFIG)
    methods = expand_methods(["direct"])
    decisions, extras = analyse(rows, cfg, methods)
    run = run_info(rows, cfg, domain, methods) | {
        "replayed_from": str(matrix_path(domain).relative_to(ROOT))
    }
    return summarize(rows, decisions, extras, run), rows


def verdicts(s: dict) -> dict:
    """The issue's targets for ``sale`` on one domain, each met or not."""
    sale, ref, orc = s["sale"], s["largest_direct"], s["oracle_direct"]
    gain = orc["pass_at_1"] - ref["pass_at_1"]
    saving = ref["cost_usd"] - orc["cost_usd"]
    captured_gain = (sale["pass_at_1"] - ref["pass_at_1"]) / gain if gain > 1e-12 else None
    captured_saving = (ref["cost_usd"] - sale["cost_usd"]) / saving if saving > 0 else None
    dominated_by = [
        m
        for m in ("cascade_direct", "knn_direct")
        if s[m]["pass_at_1"] >= sale["pass_at_1"]
        and s[m]["cost_usd"] <= sale["cost_usd"]
        and (s[m]["pass_at_1"] > sale["pass_at_1"] or s[m]["cost_usd"] < sale["cost_usd"])
    ]
    lo = sale["pass_at_1_diff_ci"][0]
    ratio = sale["cost_vs_largest_direct"]
    return {
        "pass_at_1_diff_ci": sale["pass_at_1_diff_ci"],
        "pass_diff_lower_at_least_-0.03": lo >= TARGETS["pass_diff_lo"],
        "cost_ratio": ratio,
        "cost_ratio_ci": sale.get("cost_ratio_ci"),
        "cost_at_most_0.60": ratio is not None and ratio <= TARGETS["cost_ratio"],
        "dominated_by": dominated_by,
        "oracle_gain_captured": captured_gain,
        "oracle_saving_captured": captured_saving,
        "oracle_gain_at_least_50pc": None if captured_gain is None else captured_gain >= 0.5,
        "oracle_saving_at_least_60pc": captured_saving is not None and captured_saving >= 0.6,
    }


def held_out(method: str, rows: list, pol, near: Neighbours) -> dict:
    """``pol`` (a ``bid: answer`` policy) replayed on ``rows``' held-out tasks, against the
    largest agent called directly on the same tasks (paired intervals). With outcome memory,
    a held-out task's memory is ``rows``' training tasks as ``pol`` judged them."""
    view = [direct_view(r) for r in rows]
    test = [r for r in view if r.split == "test"]
    train = [r for r in view if r.split == "train"]
    largest = test[0].by_price()[-1]
    ds = [answer_decision(method, r, pol, None, memory_for(r, pol, train, near)) for r in test]
    base = [
        {
            "method": "largest_direct",
            "task_id": r.task_id,
            "passed": r.cells[largest].passed,
            "execute_cost_usd": r.cells[largest].run_usage.cost_usd,
        }
        for r in test
    ]
    ci = method_intervals(decisions_table(ds, largest).to_pylist() + base)[method]
    cost = sum(d.total_cost for d in ds)
    ref = sum(b["execute_cost_usd"] for b in base)
    return {
        "tasks": len(ds),
        "pass_at_1": sum(d.passed for d in ds) / len(ds),
        "largest_direct_pass_at_1": sum(b["passed"] for b in base) / len(base),
        "cost_usd": cost,
        "cost_vs_largest_direct": cost / ref if ref else None,
        **ci,
    }


def fit_training(rows: list, cost_lambda: float, near: Neighbours):
    return fit_recommended(
        [direct_view(r) for r in rows if r.split == "train"],
        cost_lambda,
        neighbours=near,
        memory_folds=load_config(CONFIG).eval.memory_folds,
    )


def transfer(source: list, target: list, cost_lambda: float, near: Neighbours) -> dict:
    """Fit on ``source``'s training split, run on ``target``'s held-out tasks unchanged (its
    memory, when the configuration reads one: ``target``'s training tasks)."""
    fit = fit_training(source, cost_lambda, near)
    return {
        "chosen": fit.chosen.describe(),
        **held_out("sale_transferred", target, fit.policy(), near),
    }


def embedded(rows: list, near: Neighbours) -> dict:
    """The embedded default (``sale_ray/recommended.yaml``, fitted on every shipped domain's
    training split) replayed on this domain's held-out tasks."""
    from sale_ray.auction.policy import Policy
    from sale_ray.config import embedded_default

    pol = Policy.from_config(embedded_default().auction)
    return held_out("embedded_default", rows, pol, near)


def overhead_curve(rows: list, cost_lambda: float, near: Neighbours) -> list[dict]:
    """Per bin: the winner's mean execution tokens and the recommended auction's overhead."""
    test = [direct_view(r) for r in rows if r.split == "test"]
    fit = fit_training(rows, cost_lambda, near)
    by_bin: dict = {}
    for r in test:
        d = fit.decide("sale", r)
        b = by_bin.setdefault(r.bin, {"bid": 0, "execute": 0, "tasks": 0})
        b["bid"] += d.tokens["bid"]
        b["execute"] += d.tokens["execute"]
        b["tasks"] += 1
    return [
        {
            "bin": k,
            "tasks": v["tasks"],
            "execution_tokens": v["execute"] / v["tasks"],
            "overhead": v["bid"] / v["execute"] if v["execute"] else None,
        }
        for k, v in sorted(by_bin.items(), key=lambda kv: (kv[0] is None, kv[0]))
    ]


def plan_vs_direct() -> dict | None:
    """Execute by the plan, or directly? Per agent measured both ways on the same held-out
    tasks (the plan-conditioned run of issue 6 and the direct run beside it), per bin."""
    plan_f, direct_f = (
        RESULTS / "eval_summary_humaneval_plan.json",
        RESULTS / ("eval_summary_direct_humaneval.json"),
    )
    if not (plan_f.exists() and direct_f.exists()):
        return None
    plan, direct = json.loads(plan_f.read_text()), json.loads(direct_f.read_text())
    if plan["_run"].get("test_ids") != direct["_run"].get("test_ids"):
        return None
    out = {"tasks": len(plan["_run"]["test_ids"]), "agents": {}}
    for agent, pm, dm in (
        ("largest", "largest", "largest_direct"),
        ("smallest", "smallest", "smallest_direct"),
    ):
        bins = {}
        for b, pv in plan[pm]["per_bin"].items():
            dv = direct[dm]["per_bin"].get(b, {})
            bins[b] = {
                "tasks": pv["tasks"],
                "plan_pass_at_1": pv["pass_at_1"],
                "direct_pass_at_1": dv.get("pass_at_1"),
                "plan_cost_usd": pv["cost_usd"],
                "direct_cost_usd": dv.get("cost_usd"),
            }
        out["agents"][agent] = {
            "plan_pass_at_1": plan[pm]["pass_at_1"],
            "direct_pass_at_1": direct[dm]["pass_at_1"],
            "plan_tokens": sum(plan[pm]["tokens_by_phase"].values()),
            "direct_tokens": sum(direct[dm]["tokens_by_phase"].values()),
            "per_bin": bins,
        }
    return out


def published_points() -> dict[str, tuple[float, float]]:
    """SALE as published on the same pool (the plan-conditioned runs): execution tokens per
    task and auction overhead over the held-out tasks, one point per domain."""
    out = {}
    for domain in DOMAINS:
        f = RESULTS / f"eval_summary_{domain}_plan.json"
        if not f.exists():
            continue
        m = json.loads(f.read_text()).get("sale_published")
        if m and m.get("tasks"):
            x = m["tokens_by_phase"]["execute"] / m["tasks"]
            out[f"sale_published (plans + jury + memory), {domain}"] = (x, m["auction_overhead"])
    return out


def plot(curves: dict, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for domain, pts in curves.items():
        pts = sorted(
            (p for p in pts if p["overhead"] is not None), key=lambda p: p["execution_tokens"]
        )
        xs = [p["execution_tokens"] for p in pts]
        ys = [p["overhead"] for p in pts]
        ax.plot(xs, ys, "o:", label=f"sale (bid: answer), {domain}, per bin")
        for p in pts:
            ax.annotate(
                f"bin {p['bin']} ({p['tasks']})", (p["execution_tokens"], p["overhead"]), fontsize=7
            )
    ys_all = [p["overhead"] or 0 for pts in curves.values() for p in pts]
    for label, (x, y) in published_points().items():
        ax.plot([x], [y], "s", label=label)
        ax.annotate(f"{y:.1f}x", (x, y), fontsize=7)
        ys_all.append(y)
    ax.axhline(0.25, color="grey", ls="--", lw=1, label="long-bin target: 25 %")
    ax.set_xlabel("winner's execution tokens per task (mean over the bin)")
    ax.set_ylabel("auction overhead (auction / execution tokens)")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_ylim(0, max(ys_all + [1.0]) * 3)
    ax.set_title("Where the auction's tokens go, held-out tasks")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print the document")
    args = ap.parse_args()
    out: dict = {"domains": {}, "transfer": {}, "overhead": {}}
    rows_by: dict = {}
    near = Neighbours(embedder=load_config(CONFIG).eval.embedder)  # every domain's rows
    for d in DOMAINS:
        if not matrix_path(d).exists():
            continue
        s, rows = domain_summary(d)
        rows_by[d] = rows
        (RESULTS / f"eval_summary_{d}.json").write_text(json.dumps(s, indent=2, default=str))
        methods = {m: v for m, v in s.items() if not m.startswith("_")}
        out["domains"][d] = {
            "tasks": s["_run"]["tasks"],
            "held_out": s["_run"]["test_tasks"],
            "methods": method_figures(methods),
            "targets": verdicts(s),
            "recommend": s["_recommend"],
        }
        out["overhead"][d] = overhead_curve(rows, s["_run"]["cost_lambda"], near)
        out["domains"][d]["embedded_default"] = embedded(rows, near)
        long = [p for p in out["overhead"][d] if task_length(d, p["bin"]) == "long"]
        bid = sum((p["overhead"] or 0) * p["execution_tokens"] * p["tasks"] for p in long)
        ex = sum(p["execution_tokens"] * p["tasks"] for p in long)
        out["domains"][d]["targets"]["long_bin_overhead"] = bid / ex if ex else None
        out["domains"][d]["targets"]["long_bin_overhead_at_most_25pc"] = (
            bid / ex <= 0.25 if ex else None
        )
    lam = load_config(CONFIG).eval.cost_lambda
    for a in rows_by:
        for b in rows_by:
            if a != b:
                out["transfer"][f"{a}->{b}"] = transfer(rows_by[a], rows_by[b], lam, near)
    out["plan_vs_direct"] = plan_vs_direct()
    png = plot(out["overhead"], RESULTS / "economics_overhead.png")
    out["plot"] = str(png.relative_to(ROOT)) if png else None
    (RESULTS / "economics.json").write_text(json.dumps(out, indent=2, default=str))
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        for d, v in out["domains"].items():
            s = v["methods"]["sale"]
            print(
                f"{d}: sale pass@1 {s['pass_at_1']:.3f} diff CI {s['pass_at_1_diff_ci']} "
                f"cost x{s['cost_vs_largest_direct']:.2f} ({v['held_out']} held-out)"
            )
        for k, v in out["transfer"].items():
            print(
                f"transfer {k}: pass@1 {v['pass_at_1']:.3f} cost x{v['cost_vs_largest_direct']:.2f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
