"""The jury, pure: how plans are shown to a juror and how its answer is read.

One call per juror scores *all* plans of an auction (n calls, not the paper's n^2). Plans are
anonymous (labels A, B, C…, in an order shuffled per juror and auction, so a submitter cannot
know which label a plan will get), delimited by ``<plan>`` tags, cut to a length cap, and
stripped of anything that could close the delimiter, so a bid cannot write its own score.
The answer is constrained by a JSON schema at the server and parsed strictly here; where the
server returns logprobs, each score is read as an expected value over the digits 0-5.
"""

from __future__ import annotations

import json
import random
import string
import zlib
from collections.abc import Sequence
from typing import TypeVar

from ..agents.delimit import clean
from ..agents.llm import TokenLogprob
from ..errors import MalformedOutput
from .scoring import expected_digit

MAX_SCORE = 5


_T = TypeVar("_T")


def juror_order(plans: Sequence[_T], juror: str, auction_key: str) -> list[_T]:
    """``plans`` in the order ``juror`` sees them in this auction: a shuffle seeded by both.

    Deterministic (a replay shows each juror the same order) but not the pool's order, so
    which label a plan gets — and so "give plan B a 5" — cannot be aimed by a task or a bid.
    """
    out = list(plans)
    random.Random(zlib.crc32(f"{auction_key}\x1f{juror}".encode())).shuffle(out)
    return out


def labels_for(n: int) -> list[str]:
    """Plan labels A, B, … (at most 26 bidders per auction)."""
    if n > len(string.ascii_uppercase):
        raise ValueError("at most 26 plans per jury call")
    return list(string.ascii_uppercase[:n])


def sanitize_plan(plan: str, max_chars: int) -> str:
    """Make a plan safe to embed: no control chars, none of our data tags, at most
    ``max_chars`` (see :mod:`sale_ray.agents.delimit`)."""
    return clean(plan, max_chars)


def format_plans(plans: Sequence[str], max_chars: int) -> str:
    """The plans block of the jury prompt."""
    return "\n".join(
        f'<plan id="{lab}">\n{sanitize_plan(p, max_chars)}\n</plan>'
        for lab, p in zip(labels_for(len(plans)), plans, strict=True)
    )


def verdict_schema(labels: Sequence[str]) -> dict:
    """``response_format`` asking for ``{"A": 0-5, "B": 0-5, ...}`` and nothing else."""
    return {
        "type": "json_schema",
        "json_schema": {
            "name": "jury_scores",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {
                    lab: {"type": "integer", "enum": list(range(MAX_SCORE + 1))} for lab in labels
                },
                "required": list(labels),
                "additionalProperties": False,
            },
        },
    }


def parse_verdict(
    text: str, labels: Sequence[str], tokens: Sequence[TokenLogprob] = ()
) -> dict[str, float]:
    """Read a juror's answer strictly: exactly the labels, each an integer 0-5.

    Returns label -> score; the score is the expected digit under the juror's logprobs when they
    can be aligned with the answer, else the integer it wrote. Anything else raises
    :class:`MalformedOutput` (the juror abstains; the auction goes on).
    """
    body = text.strip()
    if body.startswith("```"):  # some servers wrap JSON in a fence even under a schema
        body = body.strip("`").removeprefix("json").strip()
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, RecursionError):
        raise MalformedOutput("jury answer is not JSON") from None
    if not isinstance(data, dict):
        raise MalformedOutput("jury answer is not a JSON object")
    if set(data) != set(labels):
        raise MalformedOutput(f"jury answer has keys {sorted(data)[:10]}, expected {list(labels)}")
    ints: dict[str, int] = {}
    for lab in labels:
        v = data[lab]
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_SCORE:
            raise MalformedOutput(f"jury score for {lab} is not an integer 0-{MAX_SCORE}")
        ints[lab] = v
    return _expected_scores(ints, list(data), tokens)


def _expected_scores(
    ints: dict[str, int], order: list[str], tokens: Sequence[TokenLogprob]
) -> dict[str, float]:
    """Replace each integer by its expected value when the digit tokens line up with it."""
    digits = [t for t in tokens if t.token.strip().isdigit() and len(t.token.strip()) == 1]
    if len(digits) != len(order) or any(
        int(t.token.strip()) != ints[lab] for t, lab in zip(digits, order, strict=True)
    ):
        return {k: float(v) for k, v in ints.items()}
    out = {}
    for t, lab in zip(digits, order, strict=True):
        e = expected_digit(t.top or {t.token: t.logprob})
        out[lab] = float(ints[lab]) if e is None else e
    return out
