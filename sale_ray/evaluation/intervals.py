"""Bootstrap 95 % intervals for the evaluation's figures, paired by task.

Every method routes the same held-out tasks, so the comparison with the reference
(``largest_direct``) resamples *tasks*, not methods: one resample draws task ids with
replacement and recomputes both methods on them. That gives the paired interval of the pass@1
difference and of the cost ratio, far tighter than two independent intervals would be. Seeded:
the same decisions always give the same intervals.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

RESAMPLES = 2000
LEVEL = 0.95


def _percentiles(xs: list[float]) -> list[float]:
    xs = sorted(xs)
    lo = int((1 - LEVEL) / 2 * len(xs))
    hi = min(len(xs) - 1, int((1 + LEVEL) / 2 * len(xs)))
    return [round(xs[lo], 4), round(xs[hi], 4)]


def method_intervals(
    rows: Iterable[Mapping[str, Any]],
    reference: str = "largest_direct",
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Per method: ``pass_at_1_ci``; where ``reference`` routed the same tasks, also
    ``pass_at_1_diff_ci`` (method − reference) and ``cost_ratio_ci`` (method / reference, whole
    cost of the resampled tasks). ``rows``: decisions-table dicts (method, task_id, passed and
    ``*_cost_usd``)."""
    by: dict[str, dict[str, tuple[float, float]]] = defaultdict(dict)
    for r in rows:
        cost = sum(float(v or 0.0) for k, v in r.items() if k.endswith("_cost_usd"))
        by[r["method"]][r["task_id"]] = (1.0 if r["passed"] else 0.0, cost)
    ref = by.get(reference, {})
    out: dict[str, dict[str, Any]] = {}
    for m, cells in by.items():
        ids = sorted(cells)
        rng = random.Random(f"{seed}:{m}")
        paired = bool(ref) and set(ids) <= set(ref)
        passes, diffs, ratios = [], [], []
        for _ in range(resamples):
            draw = rng.choices(ids, k=len(ids))
            p = sum(cells[t][0] for t in draw) / len(draw)
            passes.append(p)
            if paired:
                diffs.append(p - sum(ref[t][0] for t in draw) / len(draw))
                denominator = sum(ref[t][1] for t in draw)
                if denominator > 0:
                    ratios.append(sum(cells[t][1] for t in draw) / denominator)
        out[m] = {"pass_at_1_ci": _percentiles(passes)}
        if paired:
            out[m]["pass_at_1_diff_ci"] = _percentiles(diffs)
            out[m]["cost_ratio_ci"] = _percentiles(ratios) if ratios else None
    return out


__all__ = ["LEVEL", "RESAMPLES", "method_intervals"]
