"""What a running service keeps besides its auctions: the ledger, the log and the policies.

:class:`ServiceState` lives inside the auctioneer actor next to the
:class:`~sale_ray.auctioneer.Auctioneer` it serves. It

* reloads the budget ledger when the actor starts (so a restart, or a resumed batch job,
  continues every budget instead of starting at $0) and rewrites it every ``flush_s`` while
  money moves;
* appends every record the auctioneer settles — from any door — to the service's durable
  Parquet log (:class:`~sale_ray.sink.ResultSink` parts), and finds old ones there again;
* builds the named policies (``sale:lean``, ...) the online door exposes, so one pool and one
  set of limits serve them all;
* exports each record as OpenTelemetry spans when ``tracing`` is on.

No Ray here: the actor (``runtime.AuctioneerService``) owns the event loop it runs on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from ..config import SaleConfig
from ..types import AuctionRecord
from .ledger import Ledger, LedgerState

log = logging.getLogger(__name__)


class ServiceState:
    """The ledger, log and policies of one auctioneer (see the module docstring)."""

    def __init__(
        self,
        core: Any,
        config: SaleConfig,
        prices: Mapping[str, tuple[float, float]],
        *,
        name: str | None = None,
        ledger_uri: str | None = None,
        log_uri: str | None = None,
        flush_s: float = 1.0,
        endpoint_url: str | None = None,
        region: str | None = None,
    ) -> None:
        self.core, self.config, self.name = core, config, name
        self.prices = dict(prices)
        self.flush_s = flush_s
        st = config.storage  # the run's own endpoint (a batch --s3-endpoint) comes first
        s3 = {"endpoint_url": endpoint_url or st.endpoint_url, "region": region or st.region}
        self.ledger = Ledger(ledger_uri, **s3) if ledger_uri else None
        self.log_uri = log_uri
        self._s3 = s3
        self._sink: Any = None
        self._written: dict[str, Any] | None = None  # the ledger as last written
        self._task: asyncio.Task | None = None
        self.counts = {"ledger_writes": 0, "log_rows": 0, "flush_errors": 0}
        self.policy_descriptions: dict[str, str] = {}
        self._build_policies()
        if self.ledger is not None:
            st0 = self.ledger.load()
            core.restore_spent(st0.run_usd, st0.agents, st0.tenants)
            self._written = core.spent()
        core.on_record = self._on_record
        if config.tracing.enabled:  # a config that cannot export fails the start, not a record
            from .. import tracing

            tracing.configure(config.tracing)

    # -- policies ------------------------------------------------------------------------------
    def _build_policies(self) -> None:
        from ..serve import policies

        built = policies.install(self.core, self.config, {n: p[1] for n, p in self.prices.items()})
        self.policy_descriptions = {m: p.description for m, p in built.items()}

    # -- records -------------------------------------------------------------------------------
    def _on_record(self, rec: AuctionRecord, tenant: str) -> None:
        if self.log_uri is not None:
            self.sink().add([rec])  # a part is written by add() itself past flush_rows
        if self.config.tracing.enabled:
            from .. import tracing

            tracing.export_record(rec, tenant=tenant)

    def sink(self) -> Any:
        if self._sink is None:
            from ..sink import ResultSink

            assert self.log_uri is not None
            self._sink = ResultSink(self.log_uri, flush_s=self.flush_s, **self._s3)
        return self._sink

    def find_logged(self, auction_id: str) -> dict[str, Any] | None:
        """The log row of ``auction_id`` (the newest part first), or None."""
        if self.log_uri is None:
            return None
        import pyarrow.compute as pc

        sink = self.sink()
        for path in reversed(sink._files()):
            t = sink._load(path)
            if t is None:
                continue
            hit = t.filter(pc.equal(t.column("auction_id"), auction_id))
            if hit.num_rows:
                return hit.slice(0, 1).to_pylist()[0]
        return None

    # -- durability ----------------------------------------------------------------------------
    def ensure_running(self) -> None:
        """Start the periodic flush on the caller's event loop (the actor's), once."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            try:
                await self.flush()
            except Exception as e:  # storage down: keep serving, try again next tick
                self.counts["flush_errors"] += 1
                log.warning("service flush failed (%s: %s)", type(e).__name__, str(e)[:200])

    async def flush(self) -> None:
        """Write the ledger (if money moved) and the log's buffered rows."""
        spent = self.core.spent()
        if self.ledger is not None and spent != self._written:
            state = LedgerState(
                run_usd=spent["run"], agents=spent["agents"], tenants=spent["tenants"]
            )
            await asyncio.to_thread(self.ledger.write, state)
            self._written = spent
            self.counts["ledger_writes"] += 1
        if self._sink is not None and self._sink._buf:
            n = len(self._sink._buf)
            self._sink.flush()
            self.counts["log_rows"] += n

    # -- reads ---------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Name, agents with prices, policies, where state lives, and the config itself."""
        return {
            "name": self.name,
            "agents": list(self.prices),
            "prices": self.prices,
            "policies": self.policy_descriptions,
            "ledger_uri": self.ledger.uri if self.ledger else None,
            "log_uri": self.log_uri,
            "config": self.config.model_dump(mode="json"),
            "described_at": time.time(),
        }

    def stats(self) -> dict[str, Any]:
        rows = self._sink.rows_written if self._sink is not None else 0
        return {**self.counts, "log_rows_written": rows}
