"""Wire types of the online endpoint: OpenAI-compatible chat bodies, tasks, and our extension.

Requests are strict (``extra="forbid"``): an OpenAI parameter we do not implement (``tools``,
``logprobs``, ``n > 1`` …) is refused with a 422 naming it, never silently ignored. Responses
follow OpenAI's shapes and add one field, ``sale``: which agent answered, why, and what it cost.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..types import AuctionRecord, Task, TaskKind

SALE_MODEL = "sale"  # the model name that runs an auction; any agent's name passes through


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- requests ---------------------------------------------------------------------------------
class TextPart(_Wire):
    """A content part; only text is accepted (no images or audio)."""

    type: Literal["text"]
    text: str


class ToolFunction(_Wire):
    name: str = Field(max_length=64)
    arguments: str = ""


class ToolCall(_Wire):
    """A tool call an earlier assistant turn made (history only: model ``sale`` makes none)."""

    id: str = Field(max_length=256)
    type: Literal["function"] = "function"
    function: ToolFunction


class ChatMessage(_Wire):
    """One message of the history: system / developer prompts, user and assistant turns (with
    the tool calls they made) and tool results."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = Field(default=None, max_length=256)

    @model_validator(mode="after")
    def _shape(self) -> ChatMessage:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content: required (null only for an assistant turn with tool_calls)")
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("tool_calls: only on an assistant message")
        if (self.role == "tool") != (self.tool_call_id is not None):
            raise ValueError("tool_call_id: required on a tool message, and only there")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)

    def plain(self) -> dict[str, Any]:
        """The message as an OpenAI-compatible model server takes it (text content)."""
        out: dict[str, Any] = {"role": self.role, "content": self.text()}
        if self.name is not None:
            out["name"] = self.name
        if self.tool_calls:
            out["tool_calls"] = [c.model_dump() for c in self.tool_calls]
            out["content"] = self.text() or None
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


class StreamOptions(_Wire):
    include_usage: bool = Field(default=False, description="Send a last chunk with usage.")


class SaleOptions(_Wire):
    """Extension (``extra_body={"sale": {...}}``): how model ``sale`` builds its task."""

    kind: TaskKind = Field(default="answer", description="'answer' (text) or 'code' (Python).")
    entry_point: str | None = Field(
        default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,99}$", description="Function (code)."
    )
    task_id: str | None = Field(default=None, description="Your id for the task (default: new).")


class ChatCompletionRequest(_Wire):
    """``POST /v1/chat/completions``. ``max_tokens`` / ``temperature`` apply to passthrough
    calls; an auction (model ``sale``) uses the pool's execution settings."""

    model: str = Field(min_length=1, max_length=128)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=32768)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=32768)
    temperature: float | None = Field(default=None, ge=0, le=2)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] | None = None
    user: str | None = Field(default=None, max_length=256)
    sale: SaleOptions | None = None

    def plain_messages(self) -> list[dict[str, Any]]:
        return [m.plain() for m in self.messages]


class TaskRequest(_Wire):
    """``POST /v1/tasks``: a :class:`~sale_ray.types.Task` whose ``id`` may be left out."""

    id: str | None = Field(default=None, description="Task id (default: a new one).")
    model: str = Field(
        default=SALE_MODEL, max_length=128, description="'sale' or a policy, 'sale:<name>'."
    )
    prompt: str
    kind: TaskKind = "code"
    entry_point: str | None = None
    tests: str | None = None
    expected: str | None = None
    bin: int | None = None
    metadata: dict[str, str] = Field(default_factory=dict)

    def to_task(self) -> Task:
        """Validated by :class:`Task` itself (its errors name the field); ``model`` is not
        part of the task."""
        data = self.model_dump(exclude={"model"})
        data["id"] = self.id or new_id("task")
        return Task.model_validate(data)


# --- responses --------------------------------------------------------------------------------
class AgentScore(_Wire):
    """One bid, as the auction saw it: ``score`` = C − V (lower wins); None when rejected."""

    agent: str
    score: float | None = None
    cost: float | None = None
    value: float | None = None
    jury: dict[str, float] = Field(default_factory=dict)
    refined: bool = False
    rejected: str | None = None


class SaleInfo(_Wire):
    """The ``sale`` extension field: who answered, why, and the bill."""

    auction_id: str | None = None
    task_id: str | None = None
    policy: str | None = Field(default=None, description="The model name that chose the policy.")
    winner: str | None = Field(default=None, description="Agent whose answer this is.")
    provisional_winner: str | None = None
    cost_usd: float = Field(default=0.0, description="Every model call of this request, in $.")
    scores: list[AgentScore] = Field(default_factory=list)
    reason: str = ""
    error: str | None = None


class PromptTokensDetails(_Wire):
    cached_tokens: int = 0  # served from the model servers' prefix caches


class WireUsage(_Wire):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails = PromptTokensDetails()


class AssistantMessage(_Wire):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(_Wire):
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None = "stop"
    logprobs: None = None


class ChatCompletion(_Wire):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: WireUsage
    sale: SaleInfo


class Delta(_Wire):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(_Wire):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(_Wire):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: WireUsage | None = None
    sale: SaleInfo | None = None


class TaskResult(_Wire):
    """``POST /v1/tasks``: the answer, its verdict, the explanation and the full record."""

    task_id: str
    auction_id: str
    winner: str | None
    answer: str | None
    passed: bool | None
    cost_usd: float
    error: str | None = None
    sale: SaleInfo
    record: AuctionRecord


class ModelCard(_Wire):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "sale-ray"
    description: str = ""
    price_out_per_mtok: float | None = Field(default=None, description="Agents only.")


class ModelList(_Wire):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"
