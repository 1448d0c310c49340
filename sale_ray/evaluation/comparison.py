"""How a method compares with the references: its cost against the largest agent (called
directly, and planning first), how much of the oracle's gain and saving it captures, and the
issue's targets (met or missed, and by how much).

Pure functions of the per-method statistics :func:`.analytics.method_stats` computes;
``summary.json`` (:mod:`.run`), the report (:mod:`.report_render`) and the
``sale-ray eval`` table (:mod:`.cli`) all read them from here.
"""

from __future__ import annotations

from typing import Any


def ratio(a: float, b: float) -> float | None:
    """``a / b``, or None when ``b`` is 0."""
    return a / b if b else None


def reference_methods(stats: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """(the "largest" every ratio is against, its oracle): the largest agent called directly
    and the direct oracle when they were measured, else the plan-conditioned ones (older runs)."""
    if "largest_direct" in stats:
        return "largest_direct", "oracle_direct" if "oracle_direct" in stats else "oracle"
    return "largest", "oracle"


def cost_ratios(stats: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Per method: ``cost_vs_largest_direct`` (the baseline a user means) and
    ``cost_vs_largest_plan`` (the largest agent planning, then executing), where measured."""
    out: dict[str, dict[str, float | None]] = {}
    for m, s in stats.items():
        out[m] = {
            f"cost_vs_{ref}": ratio(s["cost_usd"], stats[name]["cost_usd"])
            for ref, name in (("largest_direct", "largest_direct"), ("largest_plan", "largest"))
            if name in stats
        }
    return out


def compare_to_oracle(
    stats: dict[str, dict[str, Any]], method: str = "sale", reference: str | None = None
) -> dict[str, Any]:
    """How far ``method`` goes from the reference towards the oracle, and the issue's targets.

    The reference is :func:`reference_methods`' (``largest_direct`` with ``oracle_direct`` when
    measured); ``cost_vs_largest`` and the captures are against it, named in ``reference`` and
    ``oracle``; ``cost_vs_largest_plan`` keeps the plan-conditioned largest's ratio beside it.
    """
    ref, orc_name = reference_methods(stats)
    if reference is not None:
        ref = reference
    lg, orc, m = stats.get(ref), stats.get(orc_name), stats.get(method)
    if not (lg and orc and m):
        return {}
    saving = lg["cost_usd"] - orc["cost_usd"]
    gain = orc["pass_at_1"] - lg["pass_at_1"]
    out: dict[str, Any] = {
        "method": method,
        "reference": ref,
        "oracle": orc_name,
        "cost_vs_largest": ratio(m["cost_usd"], lg["cost_usd"]),
        "oracle_cost_vs_largest": ratio(orc["cost_usd"], lg["cost_usd"]),
        "oracle_saving_captured": ratio(lg["cost_usd"] - m["cost_usd"], saving),
        "oracle_gain_captured": ratio(m["pass_at_1"] - lg["pass_at_1"], gain),
        "pass_at_1_minus_largest": m["pass_at_1"] - lg["pass_at_1"],
    }
    if ref != "largest" and "largest" in stats:
        out["cost_vs_largest_plan"] = ratio(m["cost_usd"], stats["largest"]["cost_usd"])
    frontier = {}
    for other in ("knn", "cascade", "knn_direct", "cascade_direct"):
        o = stats.get(other)
        if o:  # at or beyond: not dominated (no better pass@1 at lower-or-equal cost)
            dominated = (
                o["pass_at_1"] >= m["pass_at_1"]
                and o["cost_usd"] <= m["cost_usd"]
                and (o["pass_at_1"], -o["cost_usd"]) != (m["pass_at_1"], -m["cost_usd"])
            )
            frontier[other] = not dominated
    out["targets"] = {
        "pass_at_1_ge_largest": m["pass_at_1"] >= lg["pass_at_1"],
        "cost_le_0.60_largest": (out["cost_vs_largest"] or 0) <= 0.60,
        "largest_share_le_0.40": m["largest_share"] <= 0.40,
        "not_dominated_by": frontier,
    }
    return out


def target_lines(stats: dict[str, dict[str, Any]], method: str = "sale") -> list[str]:
    """The issue's targets for ``method``, each met or missed and by how much, and where the
    money went (phase shares, worst bins)."""
    c = compare_to_oracle(stats, method)
    if not c:
        return []
    ref = c["reference"]
    m, lg = stats[method], stats[ref]
    d_pass = m["pass_at_1"] - lg["pass_at_1"]
    ratio = c["cost_vs_largest"] or 0.0
    share = m["largest_share"]
    out = [
        f"pass@1 {m['pass_at_1']:.3f} vs {ref} {lg['pass_at_1']:.3f} ({d_pass:+.3f}; "
        f"target >= 0): {'met' if d_pass >= 0 else 'missed'}",
        f"cost {ratio:.2f} x {ref} (target <= 0.60): "
        + ("met" if ratio <= 0.60 else f"missed by {ratio - 0.60:.2f} x {ref}"),
        f"largest share {share:.1%} (target <= 40 %): "
        + ("met" if share <= 0.40 else f"missed by {share - 0.40:.1%}"),
    ]
    for other, ok in c["targets"]["not_dominated_by"].items():
        o = stats[other]
        out.append(
            f"vs {other} ({o['pass_at_1']:.3f} at ${o['cost_usd']:.6f}): "
            + ("not dominated" if ok else "dominated (better or equal pass@1 for less)")
        )
    total = sum(m["cost_usd_by_phase"].values()) or 1.0
    out.append(
        "spend by phase: "
        + ", ".join(f"{p} {v / total:.0%}" for p, v in m["cost_usd_by_phase"].items() if v)
    )
    gain, save = c["oracle_gain_captured"], c["oracle_saving_captured"]
    out.append(
        f"of the {c['oracle']}'s pass@1 gain over {ref} it captures "
        f"{'n/a' if gain is None else f'{gain:.0%}'}; of its saving "
        f"{'n/a' if save is None else f'{save:.0%}'}"
    )
    worst = sorted(
        m["per_bin"].items(),
        key=lambda kv: kv[1]["pass_at_1"] - lg["per_bin"].get(kv[0], {}).get("pass_at_1", 0.0),
    )[:2]
    out.append(
        f"bins where it trails {ref} most: "
        + ", ".join(
            f"bin {b} ({v['pass_at_1']:.2f} vs {lg['per_bin'].get(b, {}).get('pass_at_1', 0):.2f})"
            for b, v in worst
        )
    )
    return out


__all__ = ["compare_to_oracle", "cost_ratios", "ratio", "reference_methods", "target_lines"]
