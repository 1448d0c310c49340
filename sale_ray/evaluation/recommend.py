"""The recommended configuration: the fitter chooses the mechanism, not only the weights.

On the training split's direct calls it fits ``bid: answer`` (:mod:`sale_ray.auction.policy`):

* **outcome memory as V** — per agent, the share of its training answers that passed the hidden
  tests, by what the answer's own check said (``passed`` / ``failed`` / ``unchecked``), shrunk
  towards the agent's overall pass rate (``PRIOR_WEIGHT`` pseudo-answers) so a state seen twice
  does not read as certainty; an unseen state is the agent's overall rate;
* **a check that fits the task** — code: the answer's run of the prompt's examples; answers: a
  per-agent mean-token-entropy threshold (the one that best predicts its training outcomes);
* **which mechanism** — every ladder (each subset of the cheaper agents, the dearest always
  last) × every acceptance threshold that changes a decision, scored by the training loss
  ``mean (1 - passed) + cost_lambda * cost / mean cost of the dearest agent called directly`` (the
  loss SALE's weights are fitted on), ties to the shorter ladder and then the higher threshold.

The result is a plain ``auction:`` section (:func:`recommended_auction`) that ``sale-ray run
--config``, the service and ``model: sale`` online read; ``sale-ray eval`` writes it as
``recommended.yaml`` and reports it as the method ``sale``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..auction import policy
from ..config import AnswerTrust, AuctionConfig, write_config_file
from ..types import Execution, Task
from .matrix import Decision, TaskRow, spend

PRIOR_WEIGHT = 2.0  # pseudo-answers at the agent's overall rate behind every per-state figure


def has_examples(row: TaskRow) -> bool:
    """Whether the task's prompt shows examples an answer's own check can run (code only), as
    the live auction decides it (``prompt_examples``; the row keeps no entry point, and on
    HumanEval's 164 prompts that changes no answer). A recorded check on a prompt without
    examples only says whether the code runs."""
    from ..evaluators.code import prompt_examples

    if row.kind != "code":
        return False
    return prompt_examples(Task(id=row.task_id, prompt=row.prompt, kind="code")) is not None


def _answers(row: TaskRow) -> dict[str, Execution]:
    """Each agent's recorded answer in ``row`` (a :func:`.row.direct_view` row)."""
    return {a: row.cells[a].execution or Execution(agent=a, error="no answer") for a in row.cells}


def _entropy_limit(points: Sequence[tuple[float, bool]]) -> float | None:
    """The entropy threshold that best predicts success (accept at or below it); None when no
    threshold beats accepting everything."""
    if not points:
        return None
    base = float(np.mean([ok for _, ok in points]))
    best: tuple[float, float | None] = (base, None)
    for tau in sorted({h for h, _ in points}):
        acc = float(np.mean([(h <= tau) == ok for h, ok in points]))
        if acc > best[0] + 1e-12:
            best = (acc, tau)
    return best[1]


def _agent_trust(a: str, rows: Sequence[TaskRow], examples: bool | None) -> AnswerTrust:
    """One agent's figures from ``rows`` (see :func:`fit_trust`)."""
    limit = _entropy_limit(
        [
            (r.cells[a].execution.entropy, r.cells[a].passed)
            for r in rows
            if r.kind != "code"
            and r.cells[a].execution is not None
            and r.cells[a].execution.entropy is not None
        ]
    )
    probe = policy.Policy(
        weights=AuctionConfig().weights, answer_trust={a: AnswerTrust(entropy_max=limit)}
    )
    counts: dict[str, list[bool]] = {s: [] for s in policy.CHECK_STATES}
    for r in rows:
        shown = has_examples(r) if examples is None else examples
        state = policy.check_state(probe, r.kind, _answers(r)[a], shown)
        counts[state].append(r.cells[a].passed)
    overall = float(np.mean([r.cells[a].passed for r in rows])) if rows else 0.5
    figures = {
        s: (sum(v) + PRIOR_WEIGHT * overall) / (len(v) + PRIOR_WEIGHT) for s, v in counts.items()
    }
    return AnswerTrust(**{s: round(f, 4) for s, f in figures.items()}, entropy_max=limit)


def fit_trust(train: Sequence[TaskRow], examples: bool | None = None) -> dict[str, AnswerTrust]:
    """Per agent, P(passed) of its answers by check state, from the training rows' outcomes;
    when the rows mix task kinds, figures per kind as well (``AnswerTrust.kinds``): a check
    means something else on code than on answers, and an agent may be good at only one.
    ``examples``: as in :func:`answer_decision`."""
    agents = sorted({a for r in train for a in r.cells})
    kinds = sorted({r.kind for r in train})
    out: dict[str, AnswerTrust] = {}
    for a in agents:
        rows = [r for r in train if a in r.cells]
        base = _agent_trust(a, rows, examples)
        if len(kinds) > 1:
            per = {k: _agent_trust(a, [r for r in rows if r.kind == k], examples) for k in kinds}
            base = base.model_copy(update={"kinds": per})
        out[a] = base
    return out


def answer_decision(
    method: str, row: TaskRow, pol: policy.Policy, examples: bool | None = None
) -> Decision:
    """``bid: answer`` replayed on a direct-view row, priced: every answer asked but the
    winner's is a lost bid, the winner's answer is the execution. ``examples`` overrides
    whether the recorded check read the prompt's examples (default: :func:`has_examples`)."""
    shown = has_examples(row) if examples is None else examples
    out = policy.replay_answers(pol, row.kind, shown, row.prices, _answers(row))
    cells = row.cells
    lost = [cells[a].run_usage for a in out.executed if a != out.winner]
    won = [cells[out.winner].run_usage] if out.winner else []
    tokens, cost = spend({"bid": lost, "execute": won})
    return Decision(
        method=method,
        task_id=row.task_id,
        bin=row.bin,
        order=row.order,
        agent=out.winner,
        executed=list(out.executed),
        provisional=out.winner,
        passed=bool(out.winner) and cells[out.winner].passed,
        tokens=tokens,
        cost_usd=cost,
        note=out.reasons[0] if out.reasons else "",
    )


@dataclass(frozen=True)
class Candidate:
    """One mechanism the fitter tried, with its training figures."""

    ladder: tuple[str, ...]
    accept_value: float
    loss: float
    pass_at_1: float
    cost_usd: float

    def describe(self) -> str:
        return f"ladder {' -> '.join(self.ladder)}, accept at {self.accept_value:.4g}"


@dataclass
class Fit:
    """What the fitter chose, and everything it weighed."""

    trust: dict[str, AnswerTrust]
    chosen: Candidate
    candidates: list[Candidate] = field(default_factory=list)

    def policy(self) -> policy.Policy:
        return policy.Policy(
            weights=AuctionConfig().weights,
            bid="answer",
            answer_agents=self.chosen.ladder,
            answer_trust=self.trust,
            accept_value=self.chosen.accept_value,
        )

    def summary(self) -> dict[str, Any]:
        return {
            "mechanism": "bid: answer",
            "chosen": self.chosen.describe(),
            "trust": {a: t.model_dump() for a, t in self.trust.items()},
            "candidates": [
                {
                    "ladder": list(c.ladder),
                    "accept_value": c.accept_value,
                    "train_loss": round(c.loss, 6),
                    "train_pass_at_1": round(c.pass_at_1, 4),
                    "train_cost_usd": c.cost_usd,
                }
                for c in sorted(self.candidates, key=lambda c: c.loss)
            ],
        }


def blind(trust: Mapping[str, AnswerTrust]) -> dict[str, AnswerTrust]:
    """``trust`` with the check ignored: every answer worth its agent's unchecked figure."""

    def one(t: AnswerTrust) -> AnswerTrust:
        u = t.unchecked
        return AnswerTrust(
            passed=u, failed=u, unchecked=u, kinds={k: one(v) for k, v in t.kinds.items()}
        )

    return {a: one(t) for a, t in trust.items()}


def _figures(t: AnswerTrust) -> set[float]:
    out = {getattr(t, s) for s in policy.CHECK_STATES}
    for k in t.kinds.values():
        out |= _figures(k)
    return out


def fit_recommended(
    train: Sequence[TaskRow],
    cost_lambda: float,
    *,
    use_check: bool = True,
    ladders: Sequence[tuple[str, ...]] | None = None,
    examples: bool | None = None,
) -> Fit:
    """Choose ladder and threshold on the training rows (direct views); see the module doc.

    For ablations: ``use_check=False`` fits without the answers' own checks (memory alone),
    ``ladders`` restricts the ladders tried; ``examples`` as in :func:`answer_decision` (a
    replay of another check)."""
    if not train:
        raise ValueError("no training rows to fit the recommended configuration on")
    trust = fit_trust(train, examples)
    if not use_check:
        trust = blind(trust)
    order = train[0].by_price()
    dearest, cheaper = order[-1], order[:-1]
    ref = float(np.mean([r.cells[dearest].run_usage.cost_usd for r in train])) or 1.0
    values = sorted(set().union(*(_figures(t) for t in trust.values())))
    thresholds = sorted({*values, 1.0})
    candidates = []
    every = [
        (*c, dearest) for n in range(len(cheaper) + 1) for c in itertools.combinations(cheaper, n)
    ]
    for ladder, tau in itertools.product(ladders or every, thresholds):
        pol = Fit(trust, Candidate(ladder, tau, 0, 0, 0)).policy()
        ds = [answer_decision("fit", r, pol, examples) for r in train]
        passed = float(np.mean([d.passed for d in ds]))
        cost = float(np.mean([d.total_cost for d in ds]))
        loss = (1 - passed) + cost_lambda * cost / ref
        candidates.append(Candidate(ladder, tau, loss, passed, cost))
    # ties: the shorter ladder, then the stricter threshold (trust less on equal evidence)
    chosen = min(candidates, key=lambda c: (round(c.loss, 12), len(c.ladder), -c.accept_value))
    return Fit(trust, chosen, candidates)


ABLATIONS = {
    "every_agent": "every agent on the ladder (no agent skipped by its training record)",
    "no_check": "the answers' own checks ignored: outcome memory alone values an answer",
    "unfitted_trust": "default trust figures (no outcome memory): passed 0.9, failed 0.05, "
    "unchecked 0.5, every agent, accept at 0.8",
}


def ablate(rows: Sequence[TaskRow], cost_lambda: float) -> dict[str, Any]:
    """The recommended fit and, per mechanism taken away (refitted without it), its held-out
    pass@1 and cost: the ``_recommend`` section of ``summary.json`` (direct-view rows)."""
    train = [r for r in rows if r.split == "train"]
    test = [r for r in rows if r.split == "test"]
    fit = fit_recommended(train, cost_lambda)
    everyone = (tuple(train[0].by_price()),)
    fits = {
        "recommended": fit,
        "every_agent": fit_recommended(train, cost_lambda, ladders=everyone),
        "no_check": fit_recommended(train, cost_lambda, use_check=False),
    }
    default = {a: AnswerTrust() for a in train[0].cells}
    unfitted = Fit(default, Candidate(everyone[0], AuctionConfig().accept_value, 0, 0, 0))
    out: dict[str, Any] = {"fit": fit.summary(), "ablations": {}}
    for name, f in {**fits, "unfitted_trust": unfitted}.items():
        ds = [answer_decision(name, r, f.policy()) for r in test]
        out["ablations"][name] = {
            "what": ABLATIONS.get(name, "the recommended configuration"),
            "chosen": f.chosen.describe(),
            "pass_at_1": sum(d.passed for d in ds) / max(len(ds), 1),
            "cost_usd": sum(d.total_cost for d in ds),
            "asked_per_task": sum(len(d.executed) for d in ds) / max(len(ds), 1),
        }
    return out


def write_recommended(fit: Fit, base: Any, path: Any, provenance: Mapping[str, Any]) -> Any:
    """The recommended configuration as a whole config file (``base`` with its auction
    section replaced): ``sale-ray run --config`` and the service read it."""
    data = base.model_dump(mode="json")
    data["auction"] = recommended_auction(fit, base.auction)
    head = [
        "# The recommended configuration, fitted by sale_ray.evaluation.recommend.",
        f"# chosen: bid: answer, {fit.chosen.describe()} (training loss {fit.chosen.loss:.4f})",
        f"# provenance: {dict(provenance)}",
    ]
    return write_config_file(path, data, head)


def recommended_auction(fit: Fit, base: AuctionConfig | Mapping[str, Any] | None = None) -> dict:
    """The ``auction:`` section of the recommended configuration (``base``'s other settings
    kept): what ``recommended.yaml`` holds."""
    cfg = AuctionConfig.model_validate(base or {}).model_dump(mode="json")
    cfg.update(
        bid="answer",
        answer_agents=list(fit.chosen.ladder),
        answer_trust={a: t.model_dump(mode="json") for a, t in fit.trust.items()},
        accept_value=fit.chosen.accept_value,
    )
    return cfg


__all__ = [
    "ABLATIONS",
    "Candidate",
    "Fit",
    "ablate",
    "answer_decision",
    "blind",
    "fit_recommended",
    "fit_trust",
    "has_examples",
    "recommended_auction",
    "write_recommended",
]
