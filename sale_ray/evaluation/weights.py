"""Fit the auction weights ``(w_c, w_h, w_jury[j])`` with a mixed-integer program (HiGHS).

The paper fits its weights once on a training split with a min–max MIP (big-M = 1e4) and does not
publish the program. Ours, solved by :func:`scipy.optimize.milp`:

Data (training tasks t, valid bids i in A_t, jurors j): the cost feature ``c_ti = price_i *
plan_tokens_ti / c_scale`` (``c_scale`` = the largest such product, for conditioning; the fitted
``w_c`` is divided by it again), the plan entropy ``h_ti`` (missing: 0.5, as in scoring), juror
j's score ``g_tij`` (a juror that abstained: the mean of the jurors who scored the plan — exact
whenever the present jurors' weights are equal, which is how :func:`scoring.bid_value` rescales),
and the loss of letting i execute, ``l_ti = (1 - passed_ti) + lambda * exec_cost_ti / ref``
(``ref`` = the largest agent's mean execution cost; every bid and the jury are paid whoever
wins, so only the execution cost depends on the weights).

Variables: ``w_c in [0, B]`` (price never rewards), ``w_h in [-B, B]`` (the data decide whether
doubt helps or hurts), ``w_j in [0, B]`` (a juror's praise never hurts), ``z_ti in {0, 1}``
(i wins t), and ``eta`` (the worst case).

Winner constraints, for every task with two or more valid bids::

    sum_i z_ti = 1
    s_ti - s_tk <= M (1 - z_ti) - eps * [k ranks before i on a tie]     for all k != i
    s_ti = w_c c_ti - w_h h_ti - sum_j w_j g_tij                       (= C - V)

so z marks exactly the bid :func:`scoring.pick_winner` picks (lowest ``C - V``, ties to the
cheaper agent). ``M = 1e4`` as in the paper; |s| <= B (1 + 1 + 5 J) stays far below it.

Objective (``objective=``):

* ``"bins"`` (default): ``alpha * eta + (1 - alpha) * mean_t L_t`` with ``eta >= mean_{t in b}
  L_t`` for every complexity bin b, ``L_t = sum_i l_ti z_ti``. The worst case is taken over bins,
  not tasks, because with pass/fail outcomes the task-level worst case is degenerate: any task
  that no agent solves pins ``max_t L_t`` at 1 + its cheapest cost, whatever the weights, and the
  program stops caring about all other tasks. Bins keep the min–max spirit (no complexity level
  is sacrificed for the average) and the mean breaks ties.
* ``"tasks"``: the paper's literal min–max over tasks (``eta >= L_t``), with ``1e-3 * mean`` as
  a tie-break so it is not arbitrary among equal worst cases. Kept to measure the degeneracy.
* ``"mean"``: average loss only.

The weights found are then replayed with the live auction's own decisions (:func:`simulate`,
i.e. :func:`sale_ray.auction.policy.replay`) on the training rows; the reported training figures
are those, not the program's (they differ by solver tolerance against the big-M, and where the
program's model is simpler than the live rule: it escalates only to the reserve).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..auction import policy as decide  # "policy" names a parameter here
from ..auction import scoring
from ..auction.policy import Policy  # re-exported: callers build policies from here too
from ..config import EvalConfig, SaleConfig, Weights, write_config_file
from .matrix import TaskRow

Objective = Literal["bins", "tasks", "mean"]
FEATURES = ("cost", "entropy", "jury")
EPS = 1e-3  # strict-win margin, in score units (scores are O(1..100))


def reference_cost(rows: Sequence[TaskRow], *, run: bool = False) -> float:
    """Mean cost of the largest (most expensive) agent on ``rows``: execution only, or, with
    ``run``, its plan plus execution (what a single-agent router pays). Normalises losses."""
    vals = []
    for r in rows:
        c = r.cells[r.by_price()[-1]]
        u = c.run_usage if run else (c.execution.usage if c.execution else None)
        if u is not None:
            vals.append(u.cost_usd)
    ref = float(np.mean(vals)) if vals else 0.0
    return ref if ref > 0 else 1.0


def agent_loss(row: TaskRow, agent: str, lam: float, ref: float, *, run: bool = False) -> float:
    """``(1 - passed) + lam * cost / ref`` of letting ``agent`` execute ``row``."""
    c = row.cells[agent]
    u = c.run_usage if run else (c.execution.usage if c.execution else None)
    return (0.0 if c.passed else 1.0) + lam * ((u.cost_usd if u else 0.0) / ref)


def policy_loss(row: TaskRow, agent: str, lam: float, ref: float, policy: Policy) -> float:
    """The loss of ``policy`` picking ``agent`` (the program's model, fixed per candidate): the
    reserve pays its plan too; with ``verify`` a cheaper winner whose own example check fails
    hands the task to the reserve (both paid) unless the reserve's plan was rejected."""
    res = policy.reserve
    if agent == res or res is None:
        return agent_loss(row, agent, lam, ref, run=agent == res)
    c, big = row.cells[agent], row.cells[res]
    if not decide.escalates(policy, row.kind, c.execution) or not big.bid.valid:
        return agent_loss(row, agent, lam, ref)
    spent = (c.execution.usage.cost_usd if c.execution else 0.0) + big.run_usage.cost_usd
    return (0.0 if big.passed else 1.0) + lam * spent / ref


def outcome_loss(row: TaskRow, out: decide.Outcome, lam: float, ref: float) -> float:
    """The loss of a replayed decision: its final answer, and every execution it paid (the
    reserve's plan too: every bid is paid whoever wins, the reserve's only when it plans)."""
    if out.winner is None:
        return 1.0
    reserve_ran = out.reserve_planned and out.reserve in out.executed
    if not out.escalated:
        return agent_loss(row, out.winner, lam, ref, run=reserve_ran)
    spent = 0.0
    for a in out.executed:
        c = row.cells[a]
        if reserve_ran and a == out.reserve:
            spent += c.run_usage.cost_usd
        elif c.execution is not None:
            spent += c.execution.usage.cost_usd
    return (0.0 if row.cells[out.winner].passed else 1.0) + lam * spent / ref


@dataclass
class FitResult:
    """Fitted weights, the solver's verdict and the training figures under real scoring."""

    weights: Weights
    policy: Policy
    status: str
    objective: float | None
    seconds: float
    train: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)


def _features(
    row: TaskRow, agent: str, jurors: Sequence[str], judged: bool = True
) -> tuple[float, float, list[float]]:
    """(cost, entropy, jury scores) of ``agent``'s bid; ``judged=False``: the live jury would
    not sit (one valid bidder), so no score counts."""
    c = row.cells[agent]
    h = 0.5 if c.bid.entropy is None else c.bid.entropy
    verdicts = row.verdicts if judged else []
    got = {j: x for j, x in scoring.jury_scores_for(agent, verdicts).items() if j in jurors}
    fill = sum(got.values()) / len(got) if got else 0.0
    return c.price_out * c.bid.plan_tokens, h, [got.get(j, fill) for j in jurors]


def _valid(row: TaskRow, reserve: str | None = None) -> list[str]:
    """Candidates in tie order (cheapest first): valid bids, and the reserve agent last (when
    its plan was not rejected: live, a reserve without a plan cannot win)."""
    out = [a for a in row.by_price() if row.cells[a].bid.valid and a != reserve]
    return out + [reserve] if reserve in row.cells and row.cells[reserve].bid.valid else out


def fit_weights(
    rows: Sequence[TaskRow],
    *,
    cost_lambda: float = 0.1,
    objective: Objective = "bins",
    alpha: float = 0.5,
    bound: float = 10.0,
    big_m: float = 1e4,
    time_limit_s: float = 120.0,
    features: Sequence[str] = FEATURES,
    jurors: Sequence[str] | None = None,
    reserve: str | None = None,
    verify: bool = False,
) -> FitResult:
    """Solve the program above on training ``rows``; ``features`` drops terms (ablations).

    ``jurors`` restricts the jury (default: every agent). ``reserve`` names an agent that does
    not bid (the lean variant's largest agent): its score is a fitted constant ``r`` — it wins
    exactly when no bid scores at or below ``r`` — and its loss counts its plan as well."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import lil_matrix

    t0 = time.perf_counter()
    rows = list(rows)
    subset = jurors is not None
    jurors = sorted(jurors if jurors is not None else {a for r in rows for a in r.cells})
    ref = reference_cost(rows)

    def valid(r: TaskRow) -> list[str]:
        return _valid(r, reserve)

    shape = Policy(Weights(), None, reserve, 0.0, verify)

    def loss_of(r: TaskRow, a: str) -> float:
        return policy_loss(r, a, cost_lambda, ref, shape)

    c_scale = (
        max(
            [
                r.cells[a].price_out * r.cells[a].bid.plan_tokens
                for r in rows
                for a in valid(r)
                if a != reserve
            ]
            + [0]
        )
        or 1.0
    )
    nw = 2 + len(jurors)
    rpos = nw  # the reserve's constant score r
    multi = [r for r in rows if len(valid(r)) > 1]
    zindex: list[tuple[int, str]] = [(ti, a) for ti, r in enumerate(multi) for a in valid(r)]
    zpos = {k: nw + 1 + n for n, k in enumerate(zindex)}
    eta = nw + 1 + len(zindex)
    nvar = eta + 1
    n_tasks = max(len(rows), 1)

    # constant losses of tasks the weights cannot change (0 or 1 valid bid)
    const: dict[int, float] = {}
    for i, r in enumerate(rows):
        v = valid(r)
        if len(v) == 1:
            const[i] = loss_of(r, v[0])
        elif not v:
            const[i] = 1.0
    multi_pos = [i for i, r in enumerate(rows) if len(valid(r)) > 1]

    cons_rows: list[tuple[dict[int, float], float, float]] = []  # (coeffs, lb, ub)
    for ti, r in enumerate(multi):
        v = valid(r)
        zero = (0.0, 0.0, [0.0] * len(jurors))
        judged = decide.worth_judging(sum(a != reserve for a in v))  # as the live jury
        feats = {a: zero if a == reserve else _features(r, a, jurors, judged) for a in v}
        cons_rows.append(({zpos[(ti, a)]: 1.0 for a in v}, 1.0, 1.0))
        for ii, a in enumerate(v):
            ca, ha, ga = feats[a]
            for kk, b in enumerate(v):
                if a == b:
                    continue
                cb, hb, gb = feats[b]
                co: dict[int, float] = {0: (ca - cb) / c_scale, 1: -(ha - hb)}
                for j, (x, y) in enumerate(zip(ga, gb, strict=True)):
                    co[2 + j] = -(x - y)
                if reserve in (a, b):  # s_reserve = r
                    co[rpos] = 1.0 if a == reserve else -1.0
                co[zpos[(ti, a)]] = big_m
                ub = big_m - (EPS if kk < ii else 0.0)  # b is cheaper: a must win strictly
                cons_rows.append((co, -np.inf, ub))

    loss = {(ti, a): loss_of(r, a) for ti, r in enumerate(multi) for a in valid(r)}
    cvec = np.zeros(nvar)
    mean_w = {"bins": 1 - alpha, "tasks": 1e-3, "mean": 1.0}[objective]
    for k, pos in zpos.items():
        cvec[pos] = mean_w * loss[k] / n_tasks
    eta_lb = -np.inf
    if objective == "bins":
        cvec[eta] = alpha
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(rows):
            groups.setdefault(r.bin if r.bin is not None else -1, []).append(i)
        for members in groups.values():
            co = {eta: 1.0}
            ms = set(members)
            for ti, i in enumerate(multi_pos):
                if i in ms:
                    for a in valid(multi[ti]):
                        co[zpos[(ti, a)]] = -loss[(ti, a)] / len(members)
            rhs = sum(const.get(i, 0.0) for i in members) / len(members)
            cons_rows.append((co, rhs, np.inf))
    elif objective == "tasks":
        cvec[eta] = 1.0
        eta_lb = max(const.values(), default=-np.inf)
        for ti in range(len(multi)):
            co = {eta: 1.0}
            for a in valid(multi[ti]):
                co[zpos[(ti, a)]] = -loss[(ti, a)]
            cons_rows.append((co, 0.0, np.inf))

    lo, hi = np.full(nvar, -np.inf), np.full(nvar, np.inf)
    lo[0], hi[0] = 0.0, bound
    lo[1], hi[1] = -bound, bound
    lo[2:nw], hi[2:nw] = 0.0, bound
    r_bound = bound * (2 + 5 * len(jurors)) + 1.0  # covers every reachable score
    lo[rpos], hi[rpos] = (-r_bound, r_bound) if reserve else (0.0, 0.0)
    lo[nw + 1 : eta], hi[nw + 1 : eta] = 0.0, 1.0
    if objective == "mean":
        lo[eta] = hi[eta] = 0.0
    else:
        lo[eta] = eta_lb
    for name, idx in (("cost", [0]), ("entropy", [1]), ("jury", list(range(2, nw)))):
        if name not in features:
            lo[idx] = hi[idx] = 0.0
    integrality = np.zeros(nvar)
    integrality[nw + 1 : eta] = 1

    constraints = []
    if cons_rows:
        a_mat = lil_matrix((len(cons_rows), nvar))
        for n, (co, _, _) in enumerate(cons_rows):
            for j, val in co.items():
                a_mat[n, j] = val
        constraints.append(
            LinearConstraint(a_mat.tocsr(), [c[1] for c in cons_rows], [c[2] for c in cons_rows])
        )
    res = milp(
        cvec,
        constraints=constraints,
        integrality=integrality,
        bounds=Bounds(lo, hi),
        options={"time_limit": time_limit_s, "disp": False},
    )
    if res.x is None:
        weights = Weights(w_c=0.0, w_h=0.0, w_jury={j: 0.0 for j in jurors}, w_jury_default=0.0)
    else:
        x = res.x
        wj = {j: float(x[2 + n]) for n, j in enumerate(jurors)}
        weights = Weights(
            w_c=float(x[0]) / c_scale,
            w_h=float(x[1]),
            w_jury=wj,
            w_jury_default=float(np.mean(list(wj.values()))) if wj else 0.0,
        )
    policy = Policy(
        weights,
        tuple(jurors) if subset else None,
        reserve,
        float(res.x[rpos]) if res.x is not None and reserve else 0.0,
        verify,
    )
    agree = None
    if res.x is not None and multi:
        milp_pick = {
            ti: max(valid(r), key=lambda a, ti=ti: res.x[zpos[(ti, a)]])
            for ti, r in enumerate(multi)
        }
        real = [sale_choice(r, policy) for r in multi]
        agree = float(np.mean([milp_pick[ti] == real[ti] for ti in range(len(multi))]))
    train = train_figures(rows, policy, cost_lambda)
    train["milp_agreement"] = agree
    return FitResult(
        weights=weights,
        policy=policy,
        status=str(res.message),
        objective=float(res.fun) if res.fun is not None else None,
        seconds=time.perf_counter() - t0,
        train=train,
        settings={
            "cost_lambda": cost_lambda,
            "objective": objective,
            "alpha": alpha,
            "bound": bound,
            "big_m": big_m,
            "eps": EPS,
            "features": list(features),
            "tasks": len(rows),
            "jurors": jurors,
            "c_scale": c_scale,
            "ref_cost": ref,
            "reserve": reserve,
            "reserve_score": policy.reserve_score,
        },
    )


def fit_with(rows: Sequence[TaskRow], e: EvalConfig, **overrides: Any) -> FitResult:
    """:func:`fit_weights` with the settings of an ``eval:`` config section (plus overrides)."""
    kw: dict[str, Any] = {
        "cost_lambda": e.cost_lambda,
        "objective": e.objective,
        "alpha": e.minmax_alpha,
        "bound": e.weight_bound,
        "big_m": e.big_m,
        "time_limit_s": e.fit_time_limit_s,
    }
    return fit_weights(rows, **(kw | overrides))


def simulate(row: TaskRow, policy: Weights | Policy) -> decide.Outcome:
    """What ``policy`` decides on ``row``: :func:`auction.policy.replay` on its recorded cells (the
    live auction's decision functions; no refinement, which needs new plans)."""
    pol = policy if isinstance(policy, Policy) else Policy(policy)
    cells = row.cells
    return decide.replay(
        pol,
        row.kind,
        {a: c.bid for a, c in cells.items()},
        row.verdicts,
        row.prices,
        {a: c.execution for a, c in cells.items()},
    )


def sale_choice(row: TaskRow, policy: Weights | Policy) -> str | None:
    """SALE's provisional winner on ``row`` (:func:`simulate`): a :class:`Policy` may restrict
    the jury and name a reserve agent that wins when no bid scores at or below its constant."""
    return simulate(row, policy).provisional


def train_figures(
    rows: Sequence[TaskRow], policy: Weights | Policy, cost_lambda: float
) -> dict[str, Any]:
    """pass@1, mean loss and winner shares of SALE under ``policy`` on ``rows`` (the final
    winner's answer: after an escalation, the agent that took over)."""
    if not rows:
        return {"tasks": 0}
    ref = reference_cost(rows)
    outs = [simulate(r, policy) for r in rows]
    losses = [outcome_loss(r, o, cost_lambda, ref) for r, o in zip(rows, outs, strict=True)]
    passed = [bool(o.winner) and r.cells[o.winner].passed for r, o in zip(rows, outs, strict=True)]
    share: dict[str, float] = {}
    for o in outs:
        if o.winner:
            share[o.winner] = share.get(o.winner, 0.0) + 1 / len(rows)
    return {
        "tasks": len(rows),
        "pass_at_1": float(np.mean(passed)),
        "mean_loss": float(np.mean(losses)),
        "winner_share": share,
    }


def write_weights(
    result: FitResult,
    path: str | Path,
    base: SaleConfig | None = None,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write the weights as a config file the auction reads (``--config``).

    With ``base`` the whole config is written with its weights replaced; without, a minimal
    file holding only ``auction.weights`` (every other setting keeps its default).
    """
    pol = result.policy
    auction: dict[str, Any] = {"weights": result.weights.model_dump()}
    if pol.reserve is not None:  # a lean policy: the live auction's knobs of the same rule
        auction |= {"reserve_agent": pol.reserve, "reserve_score": pol.reserve_score}
    if pol.jurors is not None:  # a juror whose fitted weight is 0 earns nothing: not asked
        auction["jurors"] = list(pol.asked().jurors or ())
    if pol.verify:
        auction["escalate_on_failed_check"] = True
    if not pol.jury:
        auction["jury"] = False
    if base is not None:
        data = base.model_copy(
            update={
                "auction": base.auction.model_copy(update=auction | {"weights": result.weights})
            }
        ).model_dump(mode="json")
    else:
        data = {"auction": auction}
    head = [
        "# Auction weights fitted by sale_ray.evaluation.weights (MILP, HiGHS).",
        f"# status: {result.status}; objective: {result.objective}",
        f"# settings: {result.settings | (provenance or {})}",
        f"# training: {result.train}",
    ]
    return write_config_file(path, data, head)
