"""Which signals predict that an answer passes: AUCs over the evaluation matrix (SALE.md:
measure them) — bid signals and the example self-check of plan-conditioned executions, and the
self-check and entropy of direct calls."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Area under the ROC curve of ``scores`` predicting ``labels`` (ties count half).

    None when either class is missing. 0.5 is chance; below 0.5 the signal points the wrong way.
    """
    pts = [
        (float(s), bool(y))
        for s, y in zip(scores, labels, strict=True)
        if s is not None and not math.isnan(float(s))
    ]
    pos = [s for s, y in pts if y]
    neg = [s for s, y in pts if not y]
    if not pos or not neg:
        return None
    from scipy.stats import rankdata

    ranks = rankdata([s for s, _ in pts])
    r_pos = sum(r for r, (_, y) in zip(ranks, pts, strict=True) if y)
    return float((r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def signal_aucs(matrix: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Which signals predict that an agent's own execution passes (SALE.md: measure them).

    Per bidding agent, per bin and pooled: ``-entropy`` (low doubt), ``jury_mean`` (mean score
    its plan got), ``jury_self`` (its own score of its plan), ``-plan_tokens`` (short plans) and
    ``self_check`` (its run on the prompt's examples); per juror, the score it gave each agent's
    plan. Also each juror's parse-failure rate. Values are AUCs (n = cells scored).
    """
    cells = [r for r in matrix if r.get("passed") is not None]
    sig = {
        "neg_entropy": lambda r: None if r["entropy"] is None else -r["entropy"],
        "jury_mean": lambda r: r["jury_mean"],
        "jury_self": lambda r: r["jury_self"],
        "neg_plan_tokens": lambda r: -r["plan_tokens"],
        "self_check": lambda r: None if r["self_check"] is None else float(r["self_check"]),
    }

    def table(rs: list[dict[str, Any]]) -> dict[str, Any]:
        res: dict[str, Any] = {
            "n": len(rs),
            "pass_rate": float(np.mean([r["passed"] for r in rs])) if rs else None,
        }
        for name, f in sig.items():
            pts = [(f(r), r["passed"]) for r in rs if f(r) is not None]
            res[name] = auc([p[0] for p in pts], [p[1] for p in pts]) if pts else None
        return res

    out: dict[str, Any] = {
        "all": table(cells),
        "direct": direct_signal_aucs(matrix),
        "by_agent": {},
        "by_bin": {},
        "by_juror": {},
        "jury_parse_failure": {},
    }
    for a in sorted({r["agent"] for r in cells}):
        out["by_agent"][a] = table([r for r in cells if r["agent"] == a])
    for b in sorted({r["bin"] for r in cells}, key=lambda x: (x is None, x)):
        out["by_bin"][str(b)] = table([r for r in cells if r["bin"] == b])
    # juror -> bidder -> AUC of the score it gave that bidder's plan
    scores: dict[tuple[str, str], list[tuple[float, bool]]] = defaultdict(list)
    passed = {(r["task_id"], r["agent"]): r["passed"] for r in cells}
    for r in matrix:
        if not r.get("verdict_json"):
            continue
        v = json.loads(r["verdict_json"])
        for bidder, s in (v.get("scores") or {}).items():
            if v.get("error") is None and (r["task_id"], bidder) in passed:
                scores[(r["agent"], bidder)].append((s, passed[(r["task_id"], bidder)]))
    for juror in sorted({r["agent"] for r in matrix}):
        out["by_juror"][juror] = {
            b: auc([p[0] for p in pts], [p[1] for p in pts])
            for (j, b), pts in sorted(scores.items())
            if j == juror
        }
        asked = [r for r in matrix if r["agent"] == juror and r.get("verdict_json")]
        failed = [r for r in asked if r.get("jury_error")]
        out["jury_parse_failure"][juror] = len(failed) / len(asked) if asked else None
    return out


def direct_signal_aucs(matrix: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """What predicts that a direct answer passes: its own run of the prompt's examples
    (``self_check``, the direct cascade's verifier on code) and its negated mean entropy
    (``neg_entropy``, on answer tasks); pooled and per agent. Empty without direct cells."""
    cells = [r for r in matrix if r.get("direct_passed") is not None]

    def table(rs: list[dict[str, Any]]) -> dict[str, Any]:
        res: dict[str, Any] = {
            "n": len(rs),
            "pass_rate": float(np.mean([r["direct_passed"] for r in rs])) if rs else None,
        }
        for name, col, sign in (
            ("self_check", "direct_self_check", 1.0),
            ("neg_entropy", "direct_entropy", -1.0),
        ):
            pts = [(sign * float(r[col]), r["direct_passed"]) for r in rs if r.get(col) is not None]
            res[name] = auc([p[0] for p in pts], [p[1] for p in pts]) if pts else None
        return res

    if not cells:
        return {}
    return {
        "all": table(cells),
        "by_agent": {
            a: table([r for r in cells if r["agent"] == a])
            for a in sorted({r["agent"] for r in cells})
        },
    }
