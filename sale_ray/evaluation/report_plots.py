"""The report's PNG plots (matplotlib, the ``report`` extra): pass@1 vs cost with the oracle,
reliance on the largest agent, per-bin figures, winner share over time (the task stream),
tokens per phase and spend ($) per phase."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .matrix import COST_PHASES


def write_plots(
    stats: dict[str, dict[str, Any]],
    stream: dict[str, list[dict[str, Any]]],
    summary: dict[str, Any] | None,
    out: Path,
    order: Callable[[Sequence[str]], list[str]],
    sale_methods: Sequence[str],
) -> dict[str, Path]:
    """PNG files by name; empty when matplotlib is not installed (extra ``report``).

    ``stream``: per method, the task stream in parts (:func:`.analytics.stream_shares`);
    ``order`` sorts method names as the report lists them; ``sale_methods`` are the auctions."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    methods = order(list(stats))
    files: dict[str, Path] = {}

    fig, ax = plt.subplots(figsize=(7, 5))
    span = max((stats[m]["cost_usd"] for m in methods), default=0.0) or 1.0
    placed: list[tuple[float, float]] = []
    first_oracle = next((m for m in methods if m.startswith("oracle")), None)
    for m in methods:
        s = stats[m]
        x, y = s["cost_usd"], s["pass_at_1"]
        oracle = m.startswith("oracle")  # the best agent per task, known in hindsight
        ax.scatter(
            x,
            y,
            s=180 if oracle else 60,
            marker="*" if oracle else "o",
            c="gold" if oracle else None,
            edgecolors="black" if oracle else None,
            zorder=3,
            label="oracle (best agent per task, in hindsight)" if m == first_oracle else None,
        )
        # methods often tie on pass@1 at nearby costs: put a crowded label below its point
        crowded = any(abs(y - py) < 0.03 and abs(x - px) < 0.12 * span for px, py in placed)
        ax.annotate(m, (x, y), textcoords="offset points", xytext=(5, -12 if crowded else 4))
        placed.append((x, y))
    for name, pts in ((summary or {}).get("_frontier") or {}).items():
        pts = sorted(pts, key=lambda p: p["cost_usd"])
        ax.plot(
            [p["cost_usd"] for p in pts],
            [p["pass_at_1"] for p in pts],
            "--",
            alpha=0.6,
            label=f"{name} (cost weight sweep)",
        )
    if (summary or {}).get("_frontier") or any(m.startswith("oracle") for m in methods):
        ax.legend(fontsize=8)
    ax.set_xlabel("total cost on held-out tasks ($)")
    ax.set_ylabel("pass@1")
    ax.set_title("pass@1 vs cost, with the oracle (up and left is better)")
    files["frontier"] = _save(fig, out / "cost_vs_pass.png")

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(methods, [stats[m]["largest_share"] for m in methods])
    ax.axhline(0.4, ls="--", c="gray")
    ax.set_ylabel("largest-agent share")
    plt.setp(ax.get_xticklabels(), rotation=35, ha="right")
    files["largest"] = _save(fig, out / "largest_share.png")

    bins = sorted({k for s in stats.values() for k in s["per_bin"]})
    if bins:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        width = 0.8 / max(len(methods), 1)
        for i, m in enumerate(methods):
            xs = [j + i * width for j in range(len(bins))]
            pb = stats[m]["per_bin"]
            axes[0].bar(xs, [pb.get(x, {}).get("pass_at_1", 0) for x in bins], width, label=m)
            axes[1].bar(xs, [pb.get(x, {}).get("cost_usd", 0) for x in bins], width, label=m)
        for ax, lab in zip(axes, ("pass@1", "cost $"), strict=True):
            ax.set_xticks([j + 0.4 for j in range(len(bins))], [f"bin {x}" for x in bins])
            ax.set_ylabel(lab)
        axes[0].legend(fontsize=7)
        files["bins"] = _save(fig, out / "per_bin.png")

    sale = [m for m in methods if m in sale_methods]
    if sale:
        files["stream"] = _winner_share_plot(plt, stream, sale, out / "winner_share_stream.png")

        fig, ax = plt.subplots(figsize=(7, 3.5))
        bottom = [0.0] * len(sale)
        for p in COST_PHASES:
            vals = [stats[m]["tokens_by_phase"][p] for m in sale]
            ax.bar(sale, vals, bottom=bottom, label=p)
            bottom = [x + y for x, y in zip(bottom, vals, strict=True)]
        ax.set_ylabel("tokens (held-out split)")
        ax.set_title("tokens per phase")
        plt.setp(ax.get_xticklabels(), rotation=25, ha="right")
        ax.legend()
        files["phases"] = _save(fig, out / "phase_tokens.png")

    fig, ax = plt.subplots(figsize=(8, 3.8))
    bottom = [0.0] * len(methods)
    for p in COST_PHASES:
        vals = [stats[m]["cost_usd_by_phase"][p] for m in methods]
        if any(vals):
            ax.bar(methods, vals, bottom=bottom, label=p)
            bottom = [x + y for x, y in zip(bottom, vals, strict=True)]
    ax.set_ylabel("$ (held-out split)")
    ax.set_title("spend per phase")
    plt.setp(ax.get_xticklabels(), rotation=35, ha="right")
    ax.legend(fontsize=8)
    files["spend"] = _save(fig, out / "phase_spend.png")
    return files


def _winner_share_plot(
    plt: Any, stream: dict[str, list[dict[str, Any]]], sale: Sequence[str], path: Path
) -> Path:
    """Small multiples, one per auction method: who won each part of the task stream (stacked
    shares; an agent keeps its colour across panels)."""
    agents = sorted({a for m in sale for p in stream.get(m, []) for a in p["won"]})
    colour = {a: f"C{i % 10}" for i, a in enumerate(agents)}
    cols = min(3, len(sale))
    rows = -(-len(sale) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.6 * cols, 2.6 * rows + 0.6), sharex=True, sharey=True, squeeze=False
    )
    for ax, m in zip(axes.flat, sale, strict=False):
        parts = stream.get(m, [])
        xs = [(p["part"] + 0.5) / len(parts) for p in parts] if parts else []
        ys = [[p["won"].get(a, 0) / p["tasks"] for p in parts] for a in agents]
        if len(xs) == 1:  # one part: a bar, as a single point has no area
            bottom = 0.0
            for a, y in zip(agents, ys, strict=True):
                ax.bar([0.5], y, width=1.0, bottom=bottom, color=colour[a])
                bottom += y[0]
        elif xs:
            ax.stackplot(xs, ys, colors=[colour[a] for a in agents], alpha=0.85)
        ax.set_title(m, fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    for ax in axes.flat[len(sale) :]:
        ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour[a]) for a in agents]
    fig.legend(handles, agents, loc="lower center", ncol=len(agents) or 1, fontsize=8)
    fig.supxlabel("position in the task stream (0 = first task, 1 = last)", fontsize=9, y=0.06)
    fig.supylabel("winner share", fontsize=9)
    fig.suptitle("winner share over time", fontsize=11)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
