"""The auction's arithmetic, pure: entropy, cost, value, C - V, winners.

Entropy normalisation (documented because the paper does not publish it): for each generated
token we take the model's ``top_logprobs`` (k alternatives, k = ``auction.top_logprobs``),
renormalise them into a distribution over those k tokens, compute its Shannon entropy and divide
by ``log(k)``; a plan's entropy is the mean over its tokens, in [0, 1]. 0 = the model was sure of
every token, 1 = it was torn evenly between its top k every time. Renormalising over the top k
makes the figure comparable between models that return different amounts of tail mass.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from ..config import Weights
from ..types import Bid, JuryVerdict, ScoredBid


def token_entropy(top_logprobs: Sequence[float]) -> float:
    """Normalised entropy (0..1) of one token's top-k alternatives (natural-log logprobs)."""
    k = len(top_logprobs)
    if k <= 1:
        return 0.0
    m = max(top_logprobs)
    ps = [math.exp(lp - m) for lp in top_logprobs]  # shift by max: no underflow
    z = sum(ps)
    h = -sum((p / z) * math.log(p / z) for p in ps if p > 0)
    return min(1.0, max(0.0, h / math.log(k)))


def mean_entropy(tokens: Iterable[Sequence[float]]) -> float | None:
    """Mean normalised entropy over a plan's tokens; ``None`` when there are no logprobs."""
    hs = [token_entropy(t) for t in tokens if t]
    return sum(hs) / len(hs) if hs else None


def bid_cost(price_per_mtok: float, plan_tokens: int, weights: Weights) -> float:
    """SALE's cost term ``C = w_c * price * plan_tokens`` (price in $ per million tokens)."""
    return weights.w_c * price_per_mtok * plan_tokens


def bid_value(
    entropy: float | None, jury: Mapping[str, float], jurors: Sequence[str], weights: Weights
) -> float:
    """SALE's value term ``V = w_h * H + sum_j w_j * gamma_j``.

    A juror who abstained (timed out, returned garbage) is replaced by the weighted mean of the
    jurors who did score, so a missing juror neither rewards nor punishes a plan. A missing
    entropy (backend without logprobs) counts as 0.5, the middle of the scale.
    """
    h = 0.5 if entropy is None else entropy
    value = weights.w_h * h
    total_w = sum(weights.juror_weight(j) for j in jurors)
    present = [j for j in jurors if j in jury]
    present_w = sum(weights.juror_weight(j) for j in present)
    if present and present_w != 0:
        weighted = sum(weights.juror_weight(j) * jury[j] for j in present)
        value += weighted * (total_w / present_w)
    return value


def jury_scores_for(agent: str, verdicts: Iterable[JuryVerdict]) -> dict[str, float]:
    """juror -> score that every juror gave to ``agent``'s plan."""
    return {v.juror: v.scores[agent] for v in verdicts if v.error is None and agent in v.scores}


def score_bids(
    bids: Sequence[Bid],
    verdicts: Sequence[JuryVerdict],
    prices: Mapping[str, float],
    weights: Weights,
    jurors: Sequence[str] | None = None,
) -> list[ScoredBid]:
    """Attach C, V and C - V to every valid bid (rejected bids keep ``score=None``).

    ``jurors`` is the whole jury (default: whoever returned a verdict); pass the main jury when
    scoring refined bids so they are measured on the same scale as the originals.
    """
    jurors = [v.juror for v in verdicts] if jurors is None else list(jurors)
    out = []
    for b in bids:
        if not b.valid:
            out.append(ScoredBid(bid=b))
            continue
        jury = jury_scores_for(b.agent, verdicts)
        c = bid_cost(prices[b.agent], b.plan_tokens, weights)
        v = bid_value(b.entropy, jury, jurors, weights)
        out.append(ScoredBid(bid=b, jury=jury, cost=c, value=v, score=c - v))
    return out


def rank(scored: Sequence[ScoredBid], prices: Mapping[str, float]) -> list[ScoredBid]:
    """Valid bids best first: lowest C - V; ties go to the cheaper agent, then by name."""
    valid = [s for s in scored if s.score is not None]
    return sorted(valid, key=lambda s: (s.score, prices[s.bid.agent], s.bid.agent))


def pick_winner(scored: Sequence[ScoredBid], prices: Mapping[str, float]) -> ScoredBid | None:
    """The provisional winner: the valid bid with the lowest C - V (None if nobody bid)."""
    ranked = rank(scored, prices)
    return ranked[0] if ranked else None


def refinement_eligible(winner: str, prices: Mapping[str, float]) -> list[str]:
    """Agents strictly cheaper than the provisional winner (SALE step 6), cheapest first."""
    p = prices[winner]
    return sorted((a for a, q in prices.items() if q < p), key=lambda a: (prices[a], a))


def final_winner(
    provisional: ScoredBid, refined: Sequence[ScoredBid], prices: Mapping[str, float]
) -> ScoredBid:
    """SALE step 7: the best refined bid if its C - V beats the provisional winner's."""
    best = pick_winner(refined, prices)
    if best is not None and provisional.score is not None and best.score < provisional.score:
        return best
    return provisional


def expected_digit(top: Mapping[str, float], lo: int = 0, hi: int = 5) -> float | None:
    """Expected value of a digit token from its top logprobs (token -> logprob).

    Only the digit tokens ``lo..hi`` are kept and renormalised, so a juror's score is read as a
    distribution (e.g. 60 % "4", 40 % "3" -> 3.6) rather than one sampled digit.
    """
    probs: dict[int, float] = {}
    for tok, lp in top.items():
        t = tok.strip()
        if len(t) == 1 and t.isdigit() and lo <= int(t) <= hi:
            probs[int(t)] = probs.get(int(t), 0.0) + math.exp(lp)
    z = sum(probs.values())
    if z <= 0:
        return None
    return sum(d * p for d, p in probs.items()) / z
