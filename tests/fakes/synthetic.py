"""Made-up evaluation matrices with the shape of real ones (tests, benchmarks/report_scale.py)."""

from __future__ import annotations

import random

from sale_ray.evaluation.direct import DirectCell
from sale_ray.evaluation.row import Cell, Split, TaskRow
from sale_ray.types import Bid, Evaluation, Execution, JuryVerdict, Usage


def _usage(prompt: int, completion: int, price: float, latency_s: float = 0.0) -> Usage:
    """One call's usage at one $/Mtok price for prompt and completion alike."""
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost_usd=(prompt + completion) * price / 1e6,
        latency_s=latency_s,
        calls=1,
    )


def synthetic_direct(
    rng: random.Random, name: str, price: float, base: float, bin_: int
) -> DirectCell:
    """A made-up direct cell: one shorter call; passes about as often as the plan-conditioned
    cell would; its self-check agrees with the outcome 85 % of the time."""
    ok = rng.random() < base * (1 - 0.1 * bin_)
    toks = rng.randint(80, 220) * (1 + bin_ // 2)
    ex = Execution(
        agent=name,
        answer="...",
        turns=1,
        self_checks_passed=[ok if rng.random() < 0.85 else not ok],
        entropy=min(1.0, max(0.0, rng.gauss(0.3 if ok else 0.5, 0.08))),
        usage=_usage(180, toks, price, 1.5),
    )
    return DirectCell(
        agent=name, price_in=price, price_out=price, execution=ex, evaluation=Evaluation(passed=ok)
    )


def synthetic_matrix(
    n_tasks: int = 60, seed: int = 0, train_fraction: float = 0.5
) -> list[TaskRow]:
    """A made-up matrix with the shape of the real one (three agents, five bins; bigger agents
    pass more, low entropy and high jury scores go with passing), with direct cells.

    The direct cells come from their own random stream, so the plan-conditioned cells and the
    splits are what they were before direct cells existed."""
    rng = random.Random(seed)
    drng = random.Random(seed + 1_000_003)
    pool = (("small", 0.027, 0.55), ("mid", 0.10, 0.8), ("large", 0.30, 0.92))
    rows = []
    for t in range(n_tasks):
        b = t % 5
        skill = {}
        for name, _, base in pool:
            skill[name] = rng.random() < base * (1 - 0.12 * b)
        cells = {}
        for name, price, _ in pool:
            ok = skill[name]
            h = min(1.0, max(0.0, rng.gauss(0.35 if ok else 0.5, 0.08)))
            toks = rng.randint(40, 96)
            bid = Bid(
                agent=name,
                plan=f"{name} plan {t}",
                plan_tokens=toks,
                entropy=h,
                usage=_usage(150, toks, price, 1.0),
            )
            scores = {
                o: min(5.0, max(0.0, rng.gauss(3.8 if skill[o] else 2.6, 0.7))) for o, _, _ in pool
            }
            verdict = JuryVerdict(
                juror=name,
                scores=scores,
                usage=_usage(400, 20, price),
            )
            et = rng.randint(100, 260) * (1 + b // 2)
            ex = Execution(
                agent=name,
                answer="...",
                turns=1,
                self_checks_passed=[ok if rng.random() < 0.85 else not ok],
                usage=_usage(300, et, price, 2.0),
            )
            cells[name] = Cell(
                agent=name,
                price_in=price,
                price_out=price,
                bid=bid,
                verdict=verdict,
                execution=ex,
                evaluation=Evaluation(passed=ok),
            )
        split: Split = "train" if rng.random() < train_fraction else "test"
        rows.append(
            TaskRow(
                task_id=f"syn/{t}",
                prompt=f"task {t} of bin {b}: " + "x " * (5 + b),
                bin=b,
                split=split,
                order=t,
                cells=cells,
                direct={name: synthetic_direct(drng, name, p, base, b) for name, p, base in pool},
            )
        )
    return rows
