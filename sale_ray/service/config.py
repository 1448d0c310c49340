"""The ``service:`` section: which service a door attaches to, and where its state lives.

Pure pydantic (no Ray). Paths may be local folders or ``s3://`` URIs (``storage.endpoint_url``
applies). ``{name}`` in a path is replaced by the service's name. A relative local path is
made absolute when the config is loaded: the actors that write there run in another directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Attach = Literal["auto", "always", "never"]
SERVICE_NAME = r"^[a-z0-9][a-z0-9_.\-]{0,47}$"


class ServiceConfig(BaseModel):
    """How doors find the shared service, and where its durable state is kept."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        default="default",
        pattern=SERVICE_NAME,
        description="The service's name in the `sale-ray` Ray namespace (`sale-ray up --name`).",
    )
    attach: Attach = Field(
        default="auto",
        description="'auto': a door attaches to the running service of this name, else starts "
        "a private one for itself (stopped when it ends); 'always': attaching is required (an "
        "error when none is up); 'never': always a private one.",
    )
    log_uri: str | None = Field(
        default="runs/service/{name}/log",
        description="The service's durable auction log (Parquet parts, like a batch --out): "
        "every auction of every door lands here with its spend. None: no service log (a "
        "private service of a batch run writes its --out instead).",
    )
    ledger_uri: str | None = Field(
        default="runs/service/{name}/ledger.json",
        description="The durable budget ledger (JSON): what each agent and the service's "
        "run budget have spent, reloaded when the service starts again. A private service of "
        "a batch run keeps it in its --out, so a resumed job continues its budget.",
    )
    flush_s: float = Field(
        default=1.0,
        gt=0,
        le=600,
        description="Seconds between writes of the ledger and the log: the most spend a crash "
        "of the auctioneer process can leave unrecorded.",
    )
    agent_max_restarts: int = Field(
        default=-1,
        ge=-1,
        description="How often Ray restarts a dead agent actor (-1: always). Calls in flight "
        "when it died fail and are recorded; they are never retried (that would spend twice).",
    )
    auctioneer_max_restarts: int = Field(
        default=-1,
        ge=-1,
        description="How often Ray restarts a dead auctioneer actor (-1: always). A restarted "
        "auctioneer reloads the ledger; auctions in flight when it died are lost to their "
        "callers (a batch rerun or a client retry with the same id runs them again).",
    )
    detached: bool = Field(
        default=True,
        description="`sale-ray up` starts the service detached (it outlives the command, until "
        "`sale-ray down`). Private services are never detached.",
    )

    @field_validator("log_uri", "ledger_uri")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        if v is None or "://" in v:
            return v
        return str(Path(v).expanduser().absolute())
