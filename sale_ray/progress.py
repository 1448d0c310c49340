"""The batch run's progress bar: done / total, pass@1 so far, money spent and an ETA.

A bar needs a total to show ``done/total`` and an ETA. The total is what *this* run will
auction: the distinct task ids of the input (its first ``limit`` rows) that are not already in
the output, so a resumed run counts what remains, not what was done before. The ids come from
an in-memory list, or from a task file that is cheap to read twice
(:func:`sale_ray.batch.task_ids`); where they are unknown the bar is a plain counter.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import IO, Any

from .types import AuctionRecord


def pending_total(
    ids: Iterable[Any] | None, done: set[str], *, limit: int | None = None
) -> int | None:
    """How many tasks a run will auction: the distinct ``ids`` among the input's first
    ``limit`` rows that are not already ``done``. None when the ids are unknown (``ids`` is
    None) or cannot be read (the run's own reader then reports which row is bad)."""
    if ids is None:
        return None
    seen: set[Any] = set()
    try:
        for n, i in enumerate(ids):
            if limit is not None and n >= limit:
                break
            seen.add(i)
    except Exception:  # not found, not JSON, ...: not ours to report
        return None
    return len(seen - done)


def postfix(passed: int, verified: int, spent_usd: float, not_run: int) -> str:
    """The text after the bar: pass@1 over the verified results so far (absent until one is
    verified), dollars spent, and tasks not run (budget / admission refusals)."""
    parts = [f"pass@1 {passed / verified:.3f}"] if verified else []
    parts.append(f"spent ${spent_usd:.6f}")
    if not_run:
        parts.append(f"not-run {not_run}")
    return " ".join(parts)


class BatchProgress:
    """A tqdm bar over a batch run's results; ``total=None`` makes it a plain counter."""

    def __init__(self, total: int | None, *, enabled: bool = True, file: IO[str] | None = None):
        from tqdm import tqdm

        self.passed = self.verified = self.not_run = 0
        self.spent_usd = 0.0
        self._bar = tqdm(
            desc="auctions",
            unit="task",
            total=total,
            disable=not enabled,
            file=file if file is not None else sys.stderr,
        )

    def add(self, records: Sequence[AuctionRecord], not_run: int) -> None:
        """Count results just written and the running number of tasks not run."""
        for r in records:
            self.spent_usd += r.cost_usd
            if r.passed is not None:
                self.verified += 1
                self.passed += bool(r.passed)
        self.not_run = not_run
        self._bar.set_postfix_str(
            postfix(self.passed, self.verified, self.spent_usd, self.not_run), refresh=False
        )
        self._bar.update(len(records))

    def close(self) -> None:
        self._bar.close()
