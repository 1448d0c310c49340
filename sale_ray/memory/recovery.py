"""Recovery of dead shards: serialised per shard, and never silently empty.

Mixed into :class:`~.sharded.ShardedMemory` (which owns the pool, the snapshot store and the
ids written since the last snapshot). Callers that find the same shard dead at the same time
trigger one restart: each reads the shard's generation before its call, and one that gets the
per-shard lock after another caller restarted the shard only retries. A restore that fails (a
corrupt snapshot) marks the shard unhealthy with a :class:`LossReport`; every later call to it
raises :class:`~.pool.ShardUnhealthy` until an operator recovers it again or accepts the loss.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from pydantic import BaseModel, Field

from . import snapshot as snap
from .pool import ShardUnhealthy

log = logging.getLogger("sale_ray.memory.sharded")


class LossReport(BaseModel):
    """What a shard restart could not bring back."""

    shard: int
    restored_from: str | None = Field(description="snapshot_id restored, None = started empty")
    restored_records: int
    lost_auction_ids: list[str]
    lost_untracked: int = Field(default=0, description="Lost ids beyond the tracking cap.")
    lost_snapshot_records: int = Field(
        default=0,
        description="Records of the snapshot that could not be restored (restore failed).",
    )
    error: str | None = Field(
        default=None, description="Why the restore failed; None = it succeeded."
    )
    at: float


class Recovery:
    """Shard recovery for :class:`~.sharded.ShardedMemory` (see the module doc)."""

    pool: Any
    store: Any
    losses: list[LossReport]
    _since: list[set[str]]
    _untracked: list[int]

    def _init_recovery(self, size: int) -> None:
        self.unhealthy: dict[int, LossReport] = {}
        self._generation = [0] * size  # restarts per shard: tells callers who recovered
        self._recovering = [threading.Lock() for _ in range(size)]

    def _check_healthy(self, shards: Any) -> None:
        for i in shards:
            if i in self.unhealthy:
                raise ShardUnhealthy(i, self.unhealthy[i])

    def recover_once(self, i: int, seen_generation: int) -> LossReport | None:
        """Recover shard ``i`` unless another caller already did since ``seen_generation``
        (read before the failed call). One restart however many callers found it dead."""
        with self._recovering[i]:
            if i in self.unhealthy:
                raise ShardUnhealthy(i, self.unhealthy[i])
            if self._generation[i] != seen_generation:
                return None  # replaced while we waited: just retry on the new one
            return self.recover(i)

    def _call_all(self, method: str, *args: Any) -> list[Any]:
        return self._call_each(method, {i: args for i in range(self.pool.size)})

    def recover(self, i: int) -> LossReport:
        """Replace dead shard ``i`` with a fresh one restored from the latest snapshot; report
        which ids written since that snapshot it no longer holds. If the restore fails, the
        shard is marked unhealthy (:class:`~.pool.ShardUnhealthy` on every call) with a report
        of everything it may have lost. Concurrent callers should use :meth:`recover_once`."""
        self.pool.restart(i)
        self._generation[i] += 1
        manifest = None
        try:
            manifest = snap.read_manifest(self.store) if self.store is not None else None
            restored = 0
            if manifest is not None and self._direct(manifest):
                restored = self.pool.result(
                    i, self.pool.submit(i, "restore", self.store, manifest, i)
                )
            elif manifest is not None:
                part = self._rows_by_shard(manifest).get(i)
                if part is not None:
                    restored = self.pool.result(i, self.pool.submit(i, "load_table", part))
        except Exception as e:  # noqa: BLE001 - any failure: the shard is not whole
            return self._mark_unhealthy(i, manifest, e)
        self.unhealthy.pop(i, None)
        lost = self.pool.result(i, self.pool.submit(i, "missing", sorted(self._since[i])))
        report = LossReport(
            shard=i,
            restored_from=manifest.snapshot_id if manifest is not None else None,
            restored_records=restored,
            lost_auction_ids=lost,
            lost_untracked=self._untracked[i],
            at=time.time(),
        )
        self._since[i] = set(self._since[i]) - set(lost)
        self._untracked[i] = 0
        self.losses.append(report)
        log.warning(
            "memory shard %d restarted from snapshot %s: %d records restored, %d auctions lost "
            "(%s%s)",
            i,
            report.restored_from,
            restored,
            len(lost) + report.lost_untracked,
            ", ".join(lost[:5]),
            "..." if len(lost) > 5 else "",
        )
        return report

    def _mark_unhealthy(self, i: int, manifest: snap.Manifest | None, err: Exception) -> LossReport:
        snapshot_rows = sum(f.rows for f in manifest.files if f.shard == i) if manifest else 0
        report = LossReport(
            shard=i,
            restored_from=None,
            restored_records=0,
            lost_auction_ids=sorted(self._since[i]),
            lost_untracked=self._untracked[i],
            lost_snapshot_records=snapshot_rows,
            error=f"{type(err).__name__}: {err}",
            at=time.time(),
        )
        self.unhealthy[i] = report
        self.losses.append(report)
        log.error(
            "memory shard %d could not be restored (%s): marked unhealthy; %d snapshot records "
            "and %d tracked auctions are not being served",
            i,
            report.error,
            snapshot_rows,
            len(report.lost_auction_ids) + report.lost_untracked,
        )
        raise ShardUnhealthy(i, report)

    def accept_loss(self, i: int) -> LossReport:
        """Serve unhealthy shard ``i`` again, empty: an explicit decision that what its report
        lists is gone (the report stays in :attr:`losses`)."""
        report = self.unhealthy.pop(i)
        self.pool.restart(i)
        self._generation[i] += 1
        self._since[i], self._untracked[i] = set(), 0
        return report
