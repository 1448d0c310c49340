"""An auction's spend, metered call by call, so an auction that crashes still knows it.

The protocol adds up usage per phase when a phase ends; an exception in the middle of a phase
(a bug, a cancelled task) would lose what the calls before it cost. Every gated model call
(``agents/quota.py``) also reports here, to the meter of the auction it runs for — found through
a context variable, so calls in tasks the auction spawns (parallel bids, jurors, a refiner) count
too — and a crashed auction's record takes its spend from the meter.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from ..types import Usage

#: The method of an agent handle -> the phase its spend is booked under.
PHASE_OF = {"bid": "bid", "judge": "jury", "refine": "refine", "execute": "execute"}


class Meter:
    """Spend per phase of one auction, as the calls settle. ``unreported``: what calls that
    raised (failed, timed out, cancelled) were charged — they return no usage the protocol
    could add up, so the auctioneer adds it to the record: the log then holds every dollar
    the budgets were charged."""

    def __init__(self) -> None:
        self.by_phase: dict[str, Usage] = {}
        self.unreported: dict[str, Usage] = {}

    def add(self, phase: str, usage: Usage, *, reported: bool = True) -> None:
        self.by_phase[phase] = self.by_phase.get(phase, Usage()) + usage
        if not reported:
            self.unreported[phase] = self.unreported.get(phase, Usage()) + usage


_CURRENT: ContextVar[Meter | None] = ContextVar("sale_ray_auction_meter", default=None)


@contextmanager
def metering() -> Iterator[Meter]:
    """A fresh meter for the calls made inside this block (and the tasks it starts)."""
    meter = Meter()
    token = _CURRENT.set(meter)
    try:
        yield meter
    finally:
        _CURRENT.reset(token)


def charge(method: str, usage: Usage, *, reported: bool = True) -> None:
    """Book ``usage`` of one ``method`` call on the current auction's meter (if any);
    ``reported=False`` for a call that raised (its cost is nowhere else)."""
    meter = _CURRENT.get()
    if meter is not None:
        meter.add(PHASE_OF.get(method, method), usage, reported=reported)
