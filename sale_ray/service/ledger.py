"""The durable budget ledger: what a service's budgets have spent, kept across restarts.

Budgets live in the auctioneer (:class:`~sale_ray.agents.quota.Budget`, one per agent and one
for the run). Without a ledger a restarted service — or a resumed batch job — would start every
budget again at $0 and could spend it twice. The ledger is one small JSON document, rewritten
whole (atomically: a temp name, then a rename; on S3 a single PUT) every ``service.flush_s``
while money moves, and read back when a service starts.

A ledger that exists but cannot be read is an error, never "$0 spent": resetting a budget by
accident is the one failure a budget must not have.
"""

from __future__ import annotations

import json
import time
import uuid

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import InfraError


class LedgerState(BaseModel):
    """Spend so far, in $: the run budget's, each agent's and each tenant's."""

    model_config = ConfigDict(extra="forbid")

    version: int = Field(default=1, description="Format version.")
    run_usd: float = Field(default=0.0, ge=0, description="Spent against the run budget.")
    agents: dict[str, float] = Field(default_factory=dict, description="Spent per agent.")
    tenants: dict[str, float] = Field(default_factory=dict, description="Spent per tenant.")
    updated_at: float = Field(default=0.0, description="Unix time of the last write.")


class Ledger:
    """One ledger document at ``uri`` (a local path or ``s3://bucket/key``)."""

    def __init__(
        self, uri: str, *, endpoint_url: str | None = None, region: str = "us-east-1"
    ) -> None:
        self.uri = uri
        self._s3 = {"endpoint_url": endpoint_url, "region": region}
        self._fs = None
        self._path = ""

    def _open(self):
        if self._fs is None:  # created lazily: building a Ledger touches no storage
            from ..sink import filesystem

            self._fs, self._path = filesystem(self.uri, **self._s3)
        return self._fs, self._path

    def load(self) -> LedgerState:
        """The state written last, or an empty one when there is no ledger yet."""
        import pyarrow.fs as pafs

        fs, path = self._open()
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            return LedgerState()
        with fs.open_input_stream(path) as f:
            raw = f.read()
        try:
            return LedgerState.model_validate(json.loads(raw))
        except (ValueError, ValidationError) as e:
            raise InfraError(
                f"budget ledger {self.uri} is unreadable ({str(e)[:200]}); it is not ignored, "
                "because that would reset every budget to $0: repair or remove it"
            ) from None

    def write(self, state: LedgerState) -> None:
        """Replace the ledger with ``state`` (readers see the old or the new one, whole)."""
        fs, path = self._open()
        body = state.model_copy(update={"updated_at": time.time()}).model_dump_json().encode()
        parent = path.rsplit("/", 1)[0]
        if self.uri.startswith("s3://"):  # one PUT is atomic on S3
            with fs.open_output_stream(path) as f:
                f.write(body)
            return
        fs.create_dir(parent, recursive=True)
        tmp = f"{parent}/.ledger-{uuid.uuid4().hex[:8]}.tmp"
        with fs.open_output_stream(tmp) as f:
            f.write(body)
        fs.move(tmp, path)
