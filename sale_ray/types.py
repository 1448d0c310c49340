"""Plain domain data: tasks, bids, jury verdicts, executions and the auction record.

These pydantic models are the wire format (HTTP bodies, Ray messages) and, through
:func:`record_row` / :data:`AUCTION_SCHEMA`, the Parquet row of ``auctions.parquet``.
The Arrow schema lives here and nowhere else.
"""

from __future__ import annotations

import re
from typing import Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

TASK_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/\-]{0,199}$")
MAX_PROMPT_CHARS = 100_000
MAX_TESTS_CHARS = 200_000

TaskKind = Literal["code", "answer"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


TaskLength = Literal["short", "long"]


class Task(_Frozen):
    """One unit of work to auction.

    ``kind="code"``: the answer is Python source; ``tests`` is a standalone Python script appended
    after the solution — the task passes when that program exits with status 0.
    ``kind="answer"``: the answer is text, compared with ``expected`` (normalised exact match).
    """

    id: str = Field(
        description="Unique, stable id (letters, digits, _ . : / -; at most 200 chars)."
    )
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="What to solve.")
    kind: TaskKind = Field(
        default="code", description="'code' (Python + tests) or 'answer' (text)."
    )
    entry_point: str | None = Field(
        default=None, description="Function the tests call (code tasks)."
    )
    tests: str | None = Field(
        default=None, max_length=MAX_TESTS_CHARS, description="Hidden test script (code tasks)."
    )
    expected: str | None = Field(default=None, description="Expected answer (answer tasks).")
    bin: int | None = Field(default=None, ge=0, le=4, description="Complexity bin 0 (easy) .. 4.")
    length: TaskLength | None = Field(
        default=None,
        description="'short' or 'long': how long the largest agent's execution with the agent "
        "loop runs on tasks like this (shipped datasets: measured per bin, docs/agent_loop.md).",
    )
    metadata: dict[str, str] = Field(default_factory=dict, description="Free-form labels.")

    @field_validator("id")
    @classmethod
    def _check_id(cls, v: str) -> str:
        if not TASK_ID_PATTERN.match(v):
            raise ValueError("must be 1-200 chars of letters, digits, '_', '.', ':', '/', '-'")
        return v

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v


class Usage(_Frozen):
    """Tokens, dollars and seconds spent by one model call (or a sum of them)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_s: float = 0.0
    calls: int = 0
    cached_calls: int = Field(
        default=0, description="How many of the calls the response cache answered."
    )
    cached_prompt_tokens: int = Field(
        default=0,
        description="Of prompt_tokens, those the model server's prefix cache served (priced at "
        "the agent's price_cached_in_per_mtok).",
    )

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def cached(self) -> bool:
        """Every call was answered by the response cache (False when no call was made)."""
        return self.calls > 0 and self.cached_calls == self.calls

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cost_usd=self.cost_usd + other.cost_usd,
            latency_s=self.latency_s + other.latency_s,
            calls=self.calls + other.calls,
            cached_calls=self.cached_calls + other.cached_calls,
            cached_prompt_tokens=self.cached_prompt_tokens + other.cached_prompt_tokens,
        )


class Bid(_Frozen):
    """One agent's strategic plan for a task (or why it has none)."""

    agent: str
    plan: str = ""
    plan_tokens: int = 0
    entropy: float | None = Field(default=None, description="Mean per-token entropy, in [0, 1].")
    usage: Usage = Usage()
    rejected: str | None = Field(default=None, description="Why this bid is out; None if valid.")
    refined: bool = False
    screened: list[str] = Field(
        default_factory=list,
        description="Rules of agents/screen.py the plan broke: sentences jurors did not see.",
    )

    @property
    def valid(self) -> bool:
        return self.rejected is None


class JuryVerdict(_Frozen):
    """One juror's scores (0-5) for every plan of an auction, keyed by bidding agent."""

    juror: str
    scores: dict[str, float] = Field(default_factory=dict)
    usage: Usage = Usage()
    error: str | None = None


class ScoredBid(_Frozen):
    """A bid with its auction arithmetic: cost C, value V and the ranking key C - V."""

    bid: Bid
    jury: dict[str, float] = Field(default_factory=dict, description="juror -> score 0-5")
    cost: float | None = None
    value: float | None = None
    score: float | None = Field(default=None, description="C - V; lower wins. None if rejected.")
    passed: bool | None = Field(
        default=None,
        description="`bid: answer` with outcome memory: the task's verifier on this answer, "
        "winner or not (what memory records of each agent). None: not judged.",
    )


class Turn(_Frozen):
    """One step of an execution's transcript: a model reply or what a tool gave back."""

    role: Literal["assistant", "tool", "user"]
    content: str = Field(description="The text, cut to `execution.max_transcript_chars`.")
    tool: str | None = Field(default=None, description="The tool that ran (role `tool`).")
    prompt_tokens: int = 0
    completion_tokens: int = 0


#: Why a loop ended: the model submitted, a run settled it (``execution.auto_submit``), a
#: budget ran out or the model failed (then the best answer so far is returned).
StopReason = Literal[
    "submitted", "auto_submitted", "max_turns", "max_tokens_total", "deadline", "model_error"
]


class Execution(_Frozen):
    """What the winner produced when it ran the task."""

    agent: str
    answer: str = ""
    turns: int = 0
    self_checks_passed: list[bool] = Field(default_factory=list)
    usage: Usage = Usage()
    error: str | None = None
    entropy: float | None = Field(
        default=None, description="Mean per-token entropy of the answer, where it was measured."
    )
    transcript: list[Turn] = Field(
        default_factory=list, description="The agent loop's turns (empty without the loop)."
    )
    stop: StopReason | None = Field(
        default=None, description="Why the agent loop ended (None without the loop)."
    )


class Evaluation(_Frozen):
    """The verifier's judgement of an execution (None = the task had no verifier)."""

    passed: bool | None = None
    detail: str = ""
    isolation: list[str] = Field(
        default_factory=list,
        description="Sandbox layers the judged code ran under (docs/sandbox.md); empty: no sandbox.",
    )


Phase = Literal["bid", "jury", "refine", "execute", "evaluate"]


#: Whose fault and what a rerun does: ``retriable`` (money ran out, an actor died, the auction
#: crashed — resume runs it again) or ``final`` (it ran and this is its result).
Failure = Literal["retriable", "final"]


class AuctionRecord(_Frozen):
    """Everything one auction did, enough to explain its decision afterwards."""

    auction_id: str
    task_id: str
    kind: TaskKind
    bin: int | None = None
    bids: list[ScoredBid] = Field(default_factory=list)
    verdicts: list[JuryVerdict] = Field(default_factory=list)
    provisional_winner: str | None = None
    winner: str | None = None
    execution: Execution | None = None
    speculation: Execution | None = Field(
        default=None,
        description="A speculative execution that lost (auction.speculate): paid, its answer "
        "unused; its spend is in phase_usage['execute'].",
    )
    evaluation: Evaluation = Evaluation()
    phase_usage: dict[str, Usage] = Field(default_factory=dict)
    phase_seconds: dict[str, float] = Field(default_factory=dict)
    error: str | None = None
    failure: Failure | None = Field(
        default=None,
        description="None: the auction ran. 'retriable': it did not finish for a reason a "
        "rerun may not meet (resume retries it); 'final': it failed and stays failed.",
    )
    notes: list[str] = Field(
        default_factory=list, description="What went wrong without failing the task."
    )
    started_at: float = 0.0
    tenant: str | None = Field(
        default=None, description="The tenant whose request this was (its spend is theirs)."
    )

    @property
    def passed(self) -> bool | None:
        return self.evaluation.passed

    @property
    def cost_usd(self) -> float:
        return sum(u.cost_usd for u in self.phase_usage.values())


# --- Parquet row ------------------------------------------------------------------------------
PHASES: tuple[str, ...] = ("bid", "jury", "refine", "execute", "evaluate")

_TURN = pa.struct(
    [
        ("role", pa.string()),
        ("content", pa.string()),
        ("tool", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
    ]
)
_JURY = pa.list_(pa.struct([("juror", pa.string()), ("score", pa.float64())]))
_BID = pa.struct(
    [
        ("agent", pa.string()),
        ("plan", pa.string()),
        ("plan_tokens", pa.int64()),
        ("prompt_tokens", pa.int64()),
        ("entropy", pa.float64()),
        ("jury", _JURY),
        ("cost", pa.float64()),
        ("value", pa.float64()),
        ("score", pa.float64()),
        ("cost_usd", pa.float64()),
        ("latency_s", pa.float64()),
        ("rejected", pa.string()),
        ("refined", pa.bool_()),
        ("screened", pa.list_(pa.string())),  # agents/screen.py rules the plan broke
    ]
)

AUCTION_SCHEMA = pa.schema(
    [
        ("auction_id", pa.string()),
        ("task_id", pa.string()),
        ("kind", pa.string()),
        ("bin", pa.int64()),
        ("provisional_winner", pa.string()),
        ("winner", pa.string()),
        ("passed", pa.bool_()),
        ("cost_usd", pa.float64()),
        ("bids", pa.list_(_BID)),
        ("answer", pa.string()),
        ("execution_turns", pa.int64()),
        ("execution_error", pa.string()),
        ("execution_stop", pa.string()),  # Execution.stop: why the agent loop ended
        ("execution_transcript", pa.list_(_TURN)),
        ("evaluation_detail", pa.string()),
        ("evaluation_isolation", pa.list_(pa.string())),  # sandbox layers (docs/sandbox.md)
        ("error", pa.string()),
        ("failure", pa.string()),  # AuctionRecord.failure: retriable | final | null
        ("notes", pa.list_(pa.string())),
        ("started_at", pa.float64()),
        ("tenant", pa.string()),  # whose spend (the API key's tenant); null: not a tenant's
    ]
    + [(f"{p}_tokens", pa.int64()) for p in PHASES]
    + [(f"{p}_cost_usd", pa.float64()) for p in PHASES]
    + [(f"{p}_s", pa.float64()) for p in PHASES]
)


def record_row(rec: AuctionRecord) -> dict:
    """Flatten an :class:`AuctionRecord` into one row matching :data:`AUCTION_SCHEMA`."""
    ex = rec.execution
    row: dict = {
        "auction_id": rec.auction_id,
        "task_id": rec.task_id,
        "kind": rec.kind,
        "bin": rec.bin,
        "provisional_winner": rec.provisional_winner,
        "winner": rec.winner,
        "passed": rec.passed,
        "cost_usd": rec.cost_usd,
        "bids": [
            {
                "agent": sb.bid.agent,
                "plan": sb.bid.plan,
                "plan_tokens": sb.bid.plan_tokens,
                "prompt_tokens": sb.bid.usage.prompt_tokens,
                "entropy": sb.bid.entropy,
                "jury": [{"juror": j, "score": s} for j, s in sorted(sb.jury.items())],
                "cost": sb.cost,
                "value": sb.value,
                "score": sb.score,
                "cost_usd": sb.bid.usage.cost_usd,
                "latency_s": sb.bid.usage.latency_s,
                "rejected": sb.bid.rejected,
                "refined": sb.bid.refined,
                "screened": list(sb.bid.screened),
            }
            for sb in rec.bids
        ],
        "answer": ex.answer if ex else None,
        "execution_turns": ex.turns if ex else None,
        "execution_error": ex.error if ex else None,
        "execution_stop": ex.stop if ex else None,
        "execution_transcript": [t.model_dump() for t in ex.transcript] if ex else [],
        "evaluation_detail": rec.evaluation.detail,
        "evaluation_isolation": list(rec.evaluation.isolation),
        "error": rec.error,
        "failure": rec.failure,
        "notes": list(rec.notes),
        "started_at": rec.started_at,
        "tenant": rec.tenant,
    }
    for p in PHASES:
        u = rec.phase_usage.get(p, Usage())
        row[f"{p}_tokens"] = u.total_tokens
        row[f"{p}_cost_usd"] = u.cost_usd
        row[f"{p}_s"] = rec.phase_seconds.get(p, 0.0)
    return row


def records_table(records: list[AuctionRecord]) -> pa.Table:
    """Arrow table of auction records (one row per task) with the canonical schema."""
    return pa.Table.from_pylist([record_row(r) for r in records], schema=AUCTION_SCHEMA)
