"""Memory entries for tests: one cheap loser ('small') and one winner ('big') per auction."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from sale_ray.memory.entry import MemoryBid, MemoryEntry


def make_entries(
    ids: Iterable[int], text: Callable[[int], str] = lambda i: f"task {i}"
) -> list[MemoryEntry]:
    """Entry ``a{i}`` for task ``t{i}``: 'big' beat 'small', and passed on even ``i``."""
    return [
        MemoryEntry(
            auction_id=f"a{i}",
            task_id=f"t{i}",
            task_text=text(i),
            created_at=float(i),
            winner="big",
            passed=i % 2 == 0,
            bids=[
                MemoryBid(agent="small", plan=f"s{i}"),
                MemoryBid(agent="big", plan=f"b{i}", won=True),
            ],
        )
        for i in ids
    ]
