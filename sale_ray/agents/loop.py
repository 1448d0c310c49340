"""The winner's bounded agent loop: write, run a tool, read its output, fix, submit.

One turn is one model reply. A reply either *calls a tool* (a fenced block labelled with a tool's
name, agents/tools.py), *submits* (``SUBMIT`` on its own line for code — the reply's block or the
best candidate so far — or ``ANSWER: …`` for answer tasks), or is *malformed* (neither, or an
unknown tool), which costs a turn and gets a one-line correction. Tool output goes back bounded
and wrapped as data. The loop ends on a submission, or when ``execution.auto_submit`` lets a run
settle it, or when a budget runs out — ``max_turns``, ``max_tokens_total`` (prompt and completion
of every turn), the wall-clock deadline — or the model fails, and then returns its best answer so
far and says what ended it (:attr:`Execution.stop`). Every turn is priced and kept in the transcript.

The loop is a pure function of a chat callable and the tools: scripted models test it without a
server (tests/unit/test_agent_loop.py), and :meth:`Agent.execute` runs it on a real one.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ..config import ExecutionConfig
from ..errors import ModelError
from ..evaluators.code import _FENCE, _PYTHON_TAGS  # the fences extract_code reads
from ..evaluators.isolation import SandboxRefused
from ..types import Execution, StopReason, Task, Turn, Usage
from . import prompts
from .delimit import as_data
from .llm import ChatResult
from .tools import Tool, ToolOutput, bound

#: ``chat(messages, max_tokens, timeout_s)`` -> the reply (the agent's concurrency and client).
Chat = Callable[[list[dict[str, str]], int, float], Awaitable[ChatResult]]

_CLOSED_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_SUBMIT = re.compile(r"^\s*\**SUBMIT\**\s*$", re.MULTILINE)
_ANSWER = re.compile(r"^\s*\**(?:final\s+)?answer\**\s*[:：]\s*(.+?)\s*$", re.IGNORECASE | re.M)
MIN_TURN_TOKENS = 64  # no turn starts with less of the token budget left


@dataclass
class _State:
    usage: Usage = field(default_factory=Usage)
    transcript: list[Turn] = field(default_factory=list)
    checks: list[bool] = field(default_factory=list)
    best: tuple[int, str] = (-1, "")  # (rank, answer): a later answer of equal rank wins
    turns: int = 0
    ran: dict[tuple, ToolOutput] = field(default_factory=dict)  # (tool, block) -> its output

    def offer(self, rank: int, answer: str) -> None:
        if answer.strip() and rank >= self.best[0]:
            self.best = (rank, answer)


@dataclass(frozen=True)
class _Action:
    kind: str  # "tool" | "submit" | "malformed"
    tool: str | None = None
    source: str = ""
    answer: str = ""
    problem: str = ""


def parse_reply(
    text: str, task: Task, tools: dict[str, Tool], closed_only: bool = False
) -> _Action:
    """What one reply asks for (see the module docstring). A fence labelled like Python (or
    unlabelled) calls ``python``; on a code task an unfenced reply that is a function counts
    as a ``python`` block, since small models often drop the fence. ``closed_only`` (a reply
    cut at its token cap): only blocks whose fence closed count, and no unfenced code."""
    fence = _CLOSED_FENCE if closed_only else _FENCE
    blocks = [(_label(tag), body) for tag, body in fence.findall(text)]
    if task.kind == "answer":
        found = _ANSWER.findall(text)
        if found and not blocks:
            return _Action("submit", answer=found[-1].strip().strip("`*").strip())
    elif _SUBMIT.search(text):
        py = [b for t, b in blocks if t == "python"]
        return _Action("submit", answer=py[-1] if py else "")
    if (
        not (blocks or closed_only)
        and task.kind == "code"
        and "python" in tools
        and _is_function(text, task)
    ):
        blocks = [("python", text)]
    for label, body in blocks:
        if label in tools:
            return _Action("tool", tool=label, source=body)
    if blocks:
        label = blocks[0][0]
        return _Action("malformed", problem=f"There is no tool called {label!r}.")
    return _Action("malformed", problem="Your reply called no tool and submitted nothing.")


def _label(tag: str) -> str:
    tag = tag.lower()
    return "python" if tag in _PYTHON_TAGS else tag


def _is_function(text: str, task: Task) -> bool:
    return (
        bool(task.entry_point)
        and re.search(rf"^\s*def\s+{re.escape(task.entry_point or '')}\s*\(", text, re.M)
        is not None
    )


def _instructions(task: Task, tools: dict[str, Tool], cfg: ExecutionConfig) -> str:
    if task.kind == "code":
        finish = "When the function is right, reply with SUBMIT on its own line."
        if cfg.auto_submit:
            finish = (
                "A block that runs cleanly and passes the task's examples is submitted for you."
            )
        text = prompts.render(
            "loop_code", entry_point=task.entry_point or "solution", finish=finish
        )
    else:
        finish = "Then reply with `ANSWER: <your final answer>` on one line."
        if cfg.auto_submit:
            finish = "If it prints exactly one line, that line is taken as your answer."
        text = prompts.render("loop_answer", finish=finish)
    if len(tools) > 1 or "python" not in tools:
        text += "\n\nTools (call one with a fenced block of its name):\n" + "\n".join(
            f"- {t.usage}" for t in tools.values()
        )
    return text


def _submit_hint(task: Task) -> str:
    return "SUBMIT on its own line." if task.kind == "code" else "`ANSWER: <your final answer>`."


def _next_step(task: Task, out: ToolOutput, tool: str) -> str:
    if tool != "python":
        return f"Continue: call a tool again, or reply {_submit_hint(task)}"
    if task.kind == "code":
        if out.ok:
            return "If the function is right, reply SUBMIT; otherwise reply with the fixed block."
        return (
            "Find the mistake and reply with only the corrected ```python block (keep any "
            "explanation to one sentence), or reply SUBMIT to keep it as is."
        )
    return "If that is the answer, reply `ANSWER: <the answer>`; otherwise fix the program."


def _settled(task: Task, out: ToolOutput, tool: str, cfg: ExecutionConfig) -> str | None:
    """The answer a run settles under ``auto_submit`` (None: the model decides)."""
    if not cfg.auto_submit or tool != "python" or not out.ok:
        return None
    if task.kind == "code":
        return "" if out.examples == "passed" else None  # "": the block itself is the answer
    lines = [ln.strip() for ln in out.text.splitlines() if ln.strip()]
    return lines[0] if len(lines) == 1 else None


async def run_loop(
    task: Task,
    plan: str | None,
    *,
    agent: str,
    chat: Chat,
    price: Callable[[ChatResult], Usage],
    system: dict[str, str],
    tools: dict[str, Tool],
    cfg: ExecutionConfig,
    deadline: float,
) -> Execution:
    """Execute ``task`` (guided by the winning bid's ``plan``; None: called directly) in at
    most ``cfg.max_turns`` turns. Never raises for what the model or a tool does: a model error
    ends the loop with the answer so far (``error`` is set only when there is none), a tool
    error is fed back as output."""
    instr = _instructions(task, tools, cfg)
    if plan is None:
        first = prompts.render("direct", task_block=prompts.task_block(task), instructions=instr)
    else:
        first = prompts.render(
            "execute", task_block=prompts.task_block(task), plan=plan, instructions=instr
        )
    messages = [system, {"role": "user", "content": first}]
    st = _State()
    keep = cfg.max_transcript_chars
    stop: StopReason | None = None
    error: str | None = None
    try:
        while st.turns < cfg.max_turns:
            left_s = deadline - time.monotonic()
            left_tokens = cfg.max_tokens_total - st.usage.total_tokens
            if left_s <= 0:
                stop = "deadline"
                break
            if left_tokens < MIN_TURN_TOKENS:
                stop = "max_tokens_total"
                break
            r = await chat(messages, min(cfg.max_tokens, left_tokens), left_s)
            u = price(r)
            st.usage, st.turns = st.usage + u, st.turns + 1
            st.transcript.append(
                Turn(
                    role="assistant",
                    content=r.text[:keep],
                    prompt_tokens=u.prompt_tokens,
                    completion_tokens=u.completion_tokens,
                )
            )
            messages.append({"role": "assistant", "content": r.text})
            act = parse_reply(r.text, task, tools, closed_only=r.truncated)
            if r.truncated and act.kind == "malformed":
                act = _Action(
                    "malformed",
                    problem=f"Your reply was cut at {r.completion_tokens} "
                    "tokens before a complete block; keep it shorter.",
                )
            if act.kind == "submit":
                st.offer(3, act.answer or st.best[1])
                stop = "submitted"
                break
            if act.kind == "malformed":
                note = prompts.render(
                    "loop_nudge",
                    problem=act.problem,
                    tools=", ".join(tools),
                    submit=_submit_hint(task),
                )
                _feed(st, messages, "user", note, None, keep)
                continue
            key = (act.tool, act.source.strip())
            if key in st.ran:  # deterministic tools: the same block gives the same result
                out = st.ran[key]
                out = out.model_copy(
                    update={
                        "text": "(the same block as before, not run again; "
                        "it gave the same result)\n" + out.text
                    }
                )
            else:
                out = await _call_tool(tools[act.tool or ""], task, act.source, cfg, deadline)
                st.ran[key] = out
            if task.kind == "code" and act.tool == "python":
                st.checks.append(out.ok)
                st.offer(2 if out.ok else 1, act.source)
            elif task.kind == "answer" and out.ok:
                lines = [ln.strip() for ln in out.text.splitlines() if ln.strip()]
                st.offer(1, lines[-1] if lines else "")
            settled = _settled(task, out, act.tool or "", cfg)
            shown = as_data("output", bound(out.text, cfg.max_tool_output_chars))
            note = prompts.render(
                "loop_output",
                tool=act.tool,
                output=shown,
                next=_next_step(task, out, act.tool or ""),
            )
            _feed(st, messages, "tool", note, act.tool, keep)
            if settled is not None:
                st.offer(3, settled or act.source)
                stop = "auto_submitted"
                break
        else:
            stop = "max_turns"
    except ModelError as e:
        # a model that fails mid-loop still leaves the best answer so far to be judged; the
        # failure is the record's error only when there is nothing to judge
        stop = "model_error"
        st.transcript.append(Turn(role="user", content=f"{type(e).__name__}: {e}"[:keep]))
        if not st.best[1]:
            error = f"{type(e).__name__}: {e}"
    answer = st.best[1]
    if stop in ("max_turns", "max_tokens_total", "deadline") and not answer:
        error = f"the loop ended ({stop}) without an answer"
    return Execution(
        agent=agent,
        answer=answer,
        turns=st.turns,
        self_checks_passed=st.checks,
        usage=st.usage,
        error=error,
        transcript=st.transcript,
        stop=stop,
    )


def _feed(st: _State, messages: list, role: str, text: str, tool: str | None, keep: int) -> None:
    """Tool output and corrections go to the model as user turns (chat templates of small
    models have no tool role); the transcript says which they were."""
    messages.append({"role": "user", "content": text})
    st.transcript.append(Turn(role=role, content=text[:keep], tool=tool))  # type: ignore[arg-type]


async def _call_tool(
    tool: Tool, task: Task, source: str, cfg: ExecutionConfig, deadline: float
) -> ToolOutput:
    """One tool call, bounded in time; what goes wrong in the tool is output, not an error."""
    limit = max(0.1, min(cfg.tool_timeout_s, deadline - time.monotonic()))
    try:
        return await asyncio.wait_for(tool.run(task, source), timeout=limit)
    except TimeoutError:
        return ToolOutput(
            text=f"the {tool.name} tool gave no result within {limit:.0f} s", ok=False
        )
    except SandboxRefused:
        raise  # the config forbids running code here: the user's error, not the model's
    except Exception as e:  # a tool's own failure (a broken tool, the broker gone) is its output
        return ToolOutput(text=f"the {tool.name} tool failed: {type(e).__name__}: {e}", ok=False)
