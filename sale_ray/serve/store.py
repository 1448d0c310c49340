"""A bounded in-memory store of recent auction records, for ``GET /v1/auctions/{id}``.

Each gateway replica keeps its own last ``serve.max_records`` records (oldest evicted first),
so memory stays bounded whatever the traffic. It is a window for explaining recent answers, not
the durable log: with several replicas a lookup may land on one that never saw the auction
(404), and a restart forgets everything. Durable history is the Parquet auction log.
"""

from __future__ import annotations

from collections import OrderedDict

from ..types import AuctionRecord


class RecordStore:
    """Last-in, first-kept map ``auction_id -> AuctionRecord`` with a fixed capacity."""

    def __init__(self, max_records: int) -> None:
        if max_records < 1:
            raise ValueError("max_records must be >= 1")
        self.max_records = max_records
        self._records: OrderedDict[str, AuctionRecord] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def put(self, record: AuctionRecord) -> None:
        self._records[record.auction_id] = record
        self._records.move_to_end(record.auction_id)
        while len(self._records) > self.max_records:
            self._records.popitem(last=False)

    def get(self, auction_id: str) -> AuctionRecord | None:
        return self._records.get(auction_id)
