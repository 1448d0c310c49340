"""The report's PNG plots (matplotlib, the ``report`` extra): cost vs pass@1, reliance on the
largest agent, per-bin figures, winner share over the stream, tokens per phase."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .analytics import COST_PHASES


def write_plots(
    stats: dict[str, dict[str, Any]],
    decisions: list[dict[str, Any]],
    summary: dict[str, Any] | None,
    out: Path,
    order: Callable[[Sequence[str]], list[str]],
    sale_methods: Sequence[str],
) -> dict[str, Path]:
    """PNG files by name; empty when matplotlib is not installed (extra ``report``).

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
    for m in methods:
        s = stats[m]
        x, y = s["cost_usd"], s["pass_at_1"]
        ax.scatter(x, y, s=60, marker="*" if m == "oracle" else "o")
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
    if (summary or {}).get("_frontier"):
        ax.legend(fontsize=8)
    ax.set_xlabel("total cost on held-out tasks ($)")
    ax.set_ylabel("pass@1")
    ax.set_title("cost vs pass@1 (up and left is better)")
    files["frontier"] = _save(fig, out / "cost_vs_pass.png")

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(methods, [stats[m]["largest_share"] for m in methods])
    ax.axhline(0.4, ls="--", c="gray")
    ax.set_ylabel("largest-agent share")
    ax.tick_params(axis="x", rotation=30)
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
        fig, ax = plt.subplots(figsize=(7, 3.5))
        for m in sale:
            ds = sorted((d for d in decisions if d["method"] == m), key=lambda d: d["order"])
            for a in sorted({d["agent"] for d in ds if d["agent"]}):
                hits = [d["agent"] == a for d in ds]
                cum = [sum(hits[: i + 1]) / (i + 1) for i in range(len(hits))]
                ax.plot(cum, label=f"{m}: {a}")
        ax.set_xlabel("held-out task (stream order)")
        ax.set_ylabel("cumulative winner share")
        ax.legend(fontsize=7)
        files["stream"] = _save(fig, out / "winner_share_stream.png")

        fig, ax = plt.subplots(figsize=(7, 3.5))
        bottom = [0.0] * len(sale)
        for p in COST_PHASES:
            vals = [stats[m]["tokens_by_phase"][p] for m in sale]
            ax.bar(sale, vals, bottom=bottom, label=p)
            bottom = [x + y for x, y in zip(bottom, vals, strict=True)]
        ax.set_ylabel("tokens (held-out split)")
        ax.legend()
        files["phases"] = _save(fig, out / "phase_tokens.png")
    return files


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
