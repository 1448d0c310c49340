"""Routers to compare SALE with, behind one interface, in one registry.

Every router is fitted on the training rows of an evaluation matrix (:mod:`.matrix`) and then
routes a held-out row to a :class:`~.matrix.Decision`. All of them are pure functions of the
matrix, so they see exactly the same bids, verdicts and executions:

* ``largest`` / ``smallest`` — always the most / least expensive agent.
* ``random`` — a uniformly random agent, seeded per task (reproducible).
* ``cascade`` — FrugalGPT-style: cheapest first; accept the answer when a cheap verifier says
  yes, else pay for the next agent. The verifier never sees the hidden tests: for code it is the
  agent's own run of the examples shown in the prompt (recorded in its execution); for answer
  tasks, a per-agent plan-entropy threshold fitted on the training split.
* ``knn`` — a task-description router: embed the task text, take the k most similar training
  tasks, estimate each agent's pass rate and cost from them, pick the agent with the least
  expected loss ``(1 - p) + lambda * cost / ref`` (the same loss SALE's weights are fitted on;
  k by leave-one-out on the training split).
* ``sale_no_memory`` — SALE's provisional winner by ``C - V`` with weights fitted by
  :mod:`.weights` on the training split; ``sale_default`` — the same with the shipped weights.
  Every SALE router reads its decision from :func:`.weights.simulate`, the live auction's
  decision functions (:mod:`sale_ray.auction.policy`) replayed on the row.
* ``sale_published`` — SALE as published, with memory. Memory changes plans (refinement), so it
  needs live model calls: the evaluation runs it and hands its decisions in (``live``); without
  them it *is* ``sale_no_memory``, and every decision says so in its note.
* ``sale`` — the configuration the product recommends (:mod:`.recommend`): ``bid: answer`` with
  the ladder, trust and threshold fitted on the training split's direct calls — what the embedded
  default runs.
* ``oracle`` — the cheapest agent that passes (the cheapest agent when none does): the limit of
  any router on this pool.

Every router above reads plan-conditioned cells: a single agent "plans, then executes", paying
its plan. The **direct** baselines are what a user means by "just call the model": the same
logic over the row's direct calls (each agent once with the task alone, :mod:`.direct`), fitted
on the training split's direct outcomes — ``largest_direct``, ``smallest_direct``,
``cascade_direct`` (verifier: the direct answer's own run of the prompt's examples; on answer
tasks, a fitted threshold on the answer's entropy), ``knn_direct`` and ``oracle_direct``.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..auction.policy import Outcome
from ..config import EvalConfig, Weights
from .matrix import Decision, TaskRow, single_agent, spend
from .neighbours import Neighbours
from .recommend import fit_recommended
from .row import direct_view
from .weights import agent_loss, reference_cost, simulate

NO_MEMORY_NOTE = "memory not available: sale_published == sale_no_memory"


class Router(Protocol):
    """Fitted once on training rows, then routes one held-out row at a time."""

    name: str

    def fit(self, train: Sequence[TaskRow]) -> None: ...

    def route(self, row: TaskRow) -> Decision: ...


@dataclass
class RouterContext:
    """What routers may use beyond the training rows."""

    eval: EvalConfig = field(default_factory=EvalConfig)
    weights: Weights | None = None  # fitted SALE weights (None: the shipped defaults)
    default_weights: Weights = field(default_factory=Weights)
    live: Mapping[str, Decision] | None = None  # task_id -> SALE-with-memory decision


class _Fixed:
    def __init__(self, name: str, ctx: RouterContext) -> None:
        self.name, self.ctx = name, ctx

    def fit(self, train: Sequence[TaskRow]) -> None:
        return None


class Largest(_Fixed):
    def route(self, row: TaskRow) -> Decision:
        return single_agent(self.name, row, row.by_price()[-1])


class Smallest(_Fixed):
    def route(self, row: TaskRow) -> Decision:
        return single_agent(self.name, row, row.by_price()[0])


class RandomRouter(_Fixed):
    def route(self, row: TaskRow) -> Decision:
        rng = random.Random(zlib.crc32(f"{self.ctx.eval.seed}:{row.task_id}".encode()))
        return single_agent(self.name, row, rng.choice(row.by_price()))


class Oracle(_Fixed):
    def route(self, row: TaskRow) -> Decision:
        ok = row.passing()
        agent = ok[0] if ok else row.by_price()[0]
        return single_agent(self.name, row, agent, "" if ok else "no agent passes")


class Cascade(_Fixed):
    """Cheapest first; escalate while the cheap verifier rejects the answer."""

    def fit(self, train: Sequence[TaskRow]) -> None:
        # Entropy thresholds for answer tasks: accept when the plan entropy is at most tau,
        # tau chosen per agent to best predict its own success on the training split.
        self.tau: dict[str, float] = {}
        agents = {a for r in train for a in r.cells}
        for a in agents:
            pts = [
                (r.cells[a].bid.entropy, r.cells[a].passed)
                for r in train
                if a in r.cells and r.kind != "code" and r.cells[a].bid.entropy is not None
            ]
            if not pts:
                continue
            best = (-1.0, math.inf)
            for tau in sorted({h for h, _ in pts}) + [math.inf]:
                acc = float(np.mean([(h <= tau) == ok for h, ok in pts]))
                if acc > best[0]:
                    best = (acc, tau)
            self.tau[a] = best[1]

    def accepts(self, row: TaskRow, agent: str) -> bool:
        cell = row.cells[agent]
        if row.kind == "code":
            return cell.self_check is True
        if cell.execution is None or cell.execution.error or not cell.execution.answer.strip():
            return False
        h = cell.bid.entropy
        return h is None or h <= getattr(self, "tau", {}).get(agent, math.inf)

    def route(self, row: TaskRow) -> Decision:
        order = row.by_price()
        tried = []
        for a in order:
            tried.append(a)
            if a == order[-1] or self.accepts(row, a):
                break
        final = tried[-1]
        tokens, cost = spend({"execute": [row.cells[a].run_usage for a in tried]})
        return Decision(
            method=self.name,
            task_id=row.task_id,
            bin=row.bin,
            order=row.order,
            agent=final,
            executed=tried,
            passed=row.cells[final].passed,
            tokens=tokens,
            cost_usd=cost,
        )


class KNNRouter(_Fixed):
    """Nearest training tasks by embedded description -> expected loss per agent."""

    K_GRID = (3, 5, 8, 12, 16)

    def fit(self, train: Sequence[TaskRow]) -> None:
        from ..memory.embed import make_embedder

        cfg = self.ctx.eval
        self.train = list(train)
        self.lam = cfg.cost_lambda
        self.ref = reference_cost(self.train, run=True)
        try:
            self.embedder = make_embedder(cfg.embedder)
            self.emb = self.embedder.encode([r.prompt for r in self.train])
            self.embedder_name = cfg.embedder
        except Exception:  # noqa: BLE001 - model files missing: the lexical fallback still routes
            self.embedder = make_embedder("hashing")
            self.emb = self.embedder.encode([r.prompt for r in self.train])
            self.embedder_name = "hashing (fallback)"
        self.agents = self.train[0].by_price() if self.train else []  # argmin ties: cheaper
        self.loss = np.array(
            [
                [agent_loss(r, a, self.lam, self.ref, run=True) for a in self.agents]
                for r in self.train
            ]
        )
        if cfg.knn_k > 0 or len(self.train) < 3:
            self.k = max(1, min(cfg.knn_k or 8, len(self.train)))
            return
        sims = self.emb @ self.emb.T
        np.fill_diagonal(sims, -np.inf)  # leave one out
        best = (math.inf, 8)
        for k in self.K_GRID:
            if k >= len(self.train):
                break
            picks = [self._pick(sims[i], k) for i in range(len(self.train))]
            mean = float(np.mean([self.loss[i, p] for i, p in enumerate(picks)]))
            if mean < best[0] - 1e-12:
                best = (mean, k)
        self.k = best[1]

    def _pick(self, sims: np.ndarray, k: int) -> int:
        idx = np.argsort(-sims)[:k]
        w = np.maximum(sims[idx], 0.0) + 1e-6
        expected = (w[:, None] * self.loss[idx]).sum(0) / w.sum()
        return int(np.argmin(expected))

    def route(self, row: TaskRow) -> Decision:
        if not self.train:
            return single_agent(self.name, row, row.by_price()[-1], "no training data")
        q = self.embedder.encode([row.prompt])[0]
        agent = self.agents[self._pick(self.emb @ q, self.k)]
        return single_agent(self.name, row, agent, f"k={self.k} {self.embedder_name}")


def sale_decision(
    method: str, row: TaskRow, out: Outcome, *, asked: Sequence[str] | None = None
) -> Decision:
    """The :class:`Decision` of a replayed auction (:func:`.weights.simulate`), priced from the
    row: the bidders' plans, the verdicts of the jurors asked (``asked``: those of a nonzero
    weight; default: every juror that sat), each execution; the reserve's plan is paid in the
    execution phase when it runs (it plans and executes in one go), in the bid phase when its
    plan was rejected. From the matrix, every verdict also saw the reserve's plan: for a
    policy with a reserve the jury cost is slightly overstated."""
    cells = row.cells
    bids = [cells[a].bid.usage for a in out.bidders]
    reserve_ran = out.reserve_planned and out.reserve in out.executed
    if out.reserve_planned and not reserve_ran:
        bids.append(cells[out.reserve].bid.usage)  # type: ignore[index]
    jurors = [j for j in out.jurors if asked is None or j in asked]
    jury = [cells[j].verdict.usage for j in jurors if cells[j].verdict is not None]
    ex = []
    for a in out.executed:
        if reserve_ran and a == out.reserve:
            ex.append(cells[a].run_usage)
        elif cells[a].execution is not None:
            ex.append(cells[a].execution.usage)  # type: ignore[union-attr]
    tokens, cost = spend({"bid": bids, "jury": jury, "execute": ex})
    final = out.winner
    return Decision(
        method=method,
        task_id=row.task_id,
        bin=row.bin,
        order=row.order,
        agent=final,
        executed=list(out.executed),
        provisional=out.provisional,
        passed=bool(final) and cells[final].passed,
        tokens=tokens,
        cost_usd=cost,
        note="" if final else "no valid bids",
    )


class SaleRouter(_Fixed):
    """SALE's auction on the matrix: every bid and the jury are paid, the winner executes."""

    def __init__(self, name: str, ctx: RouterContext, *, fitted: bool = True) -> None:
        super().__init__(name, ctx)
        self.fitted = fitted

    @property
    def weights(self) -> Weights:
        if self.fitted and self.ctx.weights is not None:
            return self.ctx.weights
        return self.ctx.default_weights

    def route(self, row: TaskRow) -> Decision:
        return sale_decision(self.name, row, simulate(row, self.weights))


class SaleLean(SaleRouter):
    """An experiment beyond the paper, to spend less on the auction (SALE.md, economics).

    The largest agent does not bid: it is the reserve, winning only when no cheaper bid scores
    at or below a fitted constant ``r`` (so its plan is paid only when it executes). Only the
    cheaper agents judge (``sale_lean``), or nobody does (``sale_lean_nojury``); a juror whose
    fitted weight is 0 is not asked. ``sale_lean_verify`` adds the cheapest strong signal
    measured here: a cheaper winner whose run of the prompt's own examples fails hands the task
    to the reserve. Weights and ``r`` come from the same MILP (reserve variant, with the
    escalation in the loss).
    From the matrix, the jury's tokens and scores are those of verdicts that also saw the
    largest agent's plan, so the jury cost is slightly overstated for this variant.
    """

    def __init__(
        self, name: str, ctx: RouterContext, *, jury: bool = True, verify: bool = False
    ) -> None:
        super().__init__(name, ctx)
        self.jury, self.verify = jury, verify

    def fit(self, train: Sequence[TaskRow]) -> None:
        from .weights import fit_with

        agents = train[0].by_price() if train else []
        reserve = agents[-1] if agents else None
        jurors = agents[:-1] if self.jury else []
        feats = ("cost", "entropy", "jury") if self.jury else ("cost", "entropy")
        self.policy = fit_with(
            train, self.ctx.eval, jurors=jurors, reserve=reserve, features=feats, verify=self.verify
        ).policy

    def route(self, row: TaskRow) -> Decision:
        out = simulate(row, self.policy)
        d = sale_decision(self.name, row, out, asked=self.policy.asked().jurors)
        return d.model_copy(update={"note": "reserve" if d.agent == out.reserve else d.note})


class SaleWithMemory(SaleRouter):
    """Replays the live SALE-with-memory decisions; without them, SALE without memory."""

    def route(self, row: TaskRow) -> Decision:
        live = self.ctx.live
        if live is not None and row.task_id in live:
            return live[row.task_id].model_copy(update={"method": self.name})
        d = super().route(row)
        return d.model_copy(update={"note": (d.note + "; " if d.note else "") + NO_MEMORY_NOTE})


class SaleRecommended(_Fixed):
    """The recommended configuration (:mod:`.recommend`) on the rows' direct calls: the fitter
    chooses ladder, threshold and memory size on the training split, the held-out rows are
    replayed with the live decision functions (their memory: the training tasks)."""

    def fit(self, train: Sequence[TaskRow]) -> None:
        view = [direct_view(r) for r in train]
        near = Neighbours(view, self.ctx.eval.embedder)
        ev = self.ctx.eval
        self.fitted = fit_recommended(
            view, ev.cost_lambda, neighbours=near, memory_folds=ev.memory_folds
        )

    def route(self, row: TaskRow) -> Decision:
        return self.fitted.decide(self.name, direct_view(row))


class Direct:
    """A router's own logic over direct calls: fitted on, and routing, :func:`direct_view`
    rows (each agent's one call with the task alone; no plan, no bid, no jury)."""

    def __init__(self, name: str, ctx: RouterContext, inner: type[_Fixed]) -> None:
        self.name, self.inner = name, inner(name, ctx)

    def fit(self, train: Sequence[TaskRow]) -> None:
        self.inner.fit([direct_view(r) for r in train])

    def route(self, row: TaskRow) -> Decision:
        return self.inner.route(direct_view(row))


def _direct(inner: type[_Fixed]) -> RouterFactory:
    return lambda name, ctx: Direct(name, ctx, inner)


RouterFactory = Callable[[str, RouterContext], Router]

ROUTERS: dict[str, RouterFactory] = {
    "largest": Largest,
    "smallest": Smallest,
    "random": RandomRouter,
    "cascade": Cascade,
    "knn": KNNRouter,
    "sale_no_memory": SaleRouter,
    "sale_default": lambda n, c: SaleRouter(n, c, fitted=False),
    "sale_published": SaleWithMemory,
    "sale": SaleRecommended,
    "sale_lean": SaleLean,
    "sale_lean_nojury": lambda n, c: SaleLean(n, c, jury=False),
    "sale_lean_verify": lambda n, c: SaleLean(n, c, verify=True),
    "oracle": Oracle,
    "largest_direct": _direct(Largest),
    "smallest_direct": _direct(Smallest),
    "cascade_direct": _direct(Cascade),
    "knn_direct": _direct(KNNRouter),
    "oracle_direct": _direct(Oracle),
}
"""Method name -> factory(name, context). The evaluation runs them all by default."""

DIRECT_METHODS = (
    "largest_direct",
    "smallest_direct",
    "cascade_direct",
    "knn_direct",
    "oracle_direct",
    "sale",
)
"""The methods read from direct cells; every other one needs plan-conditioned cells."""

REQUIRED_METHODS = (
    "largest",
    "smallest",
    "random",
    "cascade",
    "knn",
    "sale_no_memory",
    "sale_published",
    "oracle",
    *DIRECT_METHODS,
)


def make_router(name: str, ctx: RouterContext) -> Router:
    """The router registered as ``name``; an unknown name lists the known ones."""
    from ..errors import ConfigError

    try:
        return ROUTERS[name](name, ctx)
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; choose from {sorted(ROUTERS)}") from None
