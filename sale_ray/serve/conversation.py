"""A chat conversation as the task of an auction (model ``sale``): every bidder, every juror
and the winner read the whole history, not only its last user message.

One user message alone is the task as written (what a plain question always was). Anything
longer — a system prompt, earlier turns, tool calls and their results — is rendered as
delimited data: the history before the user's latest message, oldest first, then that message
(and whatever followed it: tool calls and their results) as the one to reply to::

    Reply to the user's latest message below, using everything said earlier in the
    conversation; system messages set the rules of the reply.
    Earlier in the conversation, oldest message first:
    <conversation>
    <message role="system">
    Be brief.
    </message>
    <message role="user">
    My name is Ada. Remember it.
    </message>
    <message role="assistant">
    OK, Ada.
    </message>
    </conversation>
    The user's latest message, the one to reply to:
    <message role="user">
    What is my name? Answer with one word.
    </message>

Why the latest message stands apart: measured with Qwen2.5-Coder-0.5B on four short
conversations (a name, a city, a number to add to, a system rule), one flat ``<conversation>``
block made it repeat the assistant's last turn ("OK, Ada.") in 4 of 4; this layout answered 3 of
4 (the system rule "answer in capitals" was ignored), and pulling system messages out into a
section of their own did worse (docs/serve.md).

Message text is cleaned like every untrusted text (:func:`sale_ray.agents.delimit.clean`), and
any ``<conversation>`` / ``<message>`` tag in it is removed too, so a message cannot end its
block and speak as another role. The bid, jury and refine prompts put the rendered text inside
their ``<task>`` block; the execution prompt shows it as the task. Tags, not ``USER:`` lines: a
line that starts with a role name is what the jury's screen (``agents/screen.py``) removes as a
forged prompt role.

The rendered text is measured with the estimate quotas use (characters / 3, on the expensive
side) against ``serve.max_conversation_tokens``; over it the request is refused (400,
``context_length_exceeded``, naming the limit and the size), never silently cut: which turns
may be dropped is the caller's decision.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..agents.delimit import clean
from ..agents.quota import estimate_tokens
from .errors import ContextTooLong, InvalidRequest
from .wire import ChatMessage

#: The tags of a rendered conversation; message text may contain none of them.
CONVERSATION_TAGS = ("conversation", "message")
_OWN_TAG = re.compile(r"<\s*/?\s*(?:" + "|".join(CONVERSATION_TAGS) + r")\b[^>]*>?", re.IGNORECASE)
PREAMBLE = (
    "Reply to the user's latest message below, using everything said earlier in the "
    "conversation; system messages set the rules of the reply."
)
EARLIER = "Earlier in the conversation, oldest message first:"
LATEST = "The user's latest message, the one to reply to:"


def _body(m: ChatMessage) -> str:
    """The message's text, with the tool calls an assistant turn made written out."""
    parts = [m.text()] if m.text() else []
    for call in m.tool_calls or ():
        parts.append(
            f"[called tool {call.function.name} (id {call.id}) with arguments "
            f"{call.function.arguments or '{}'}]"
        )
    return _OWN_TAG.sub("[tag removed]", clean("\n".join(parts)))


def _attrs(m: ChatMessage, tools: dict[str, str]) -> str:
    attrs = {"role": m.role}
    if m.name:
        attrs["name"] = m.name  # the wire pattern allows only [A-Za-z0-9_-]
    if m.tool_call_id is not None:
        tool = tools.get(m.tool_call_id)
        if tool is not None:
            attrs["tool"] = tool
    return "".join(f' {k}="{v}"' for k, v in attrs.items())


def _block(m: ChatMessage, tools: dict[str, str]) -> str:
    return f"<message{_attrs(m, tools)}>\n{_body(m)}\n</message>"


def render(messages: Sequence[ChatMessage]) -> str:
    """The task text of a conversation (see the module docstring)."""
    if len(messages) == 1 and messages[0].role == "user" and not messages[0].name:
        return messages[0].text()
    tools = {c.id: c.function.name for m in messages for c in m.tool_calls or ()}
    last = max((i for i, m in enumerate(messages) if m.role == "user"), default=0)
    before = [_block(m, tools) for m in messages[:last]]
    now = [_block(m, tools) for m in messages[last:]]
    out = [PREAMBLE]
    if before:
        out += [EARLIER, "<conversation>", *before, "</conversation>"]
    out += [LATEST, *now]
    return "\n".join(out)


def task_text(messages: Sequence[ChatMessage], max_tokens: int) -> str:
    """The rendered conversation, checked: it has a user message with text, and fits the
    token budget (:class:`ContextTooLong` otherwise, naming the limit and the size)."""
    if not any(m.role == "user" and m.text().strip() for m in messages):
        raise InvalidRequest(
            "messages: model 'sale' needs a non-empty user message", param="messages"
        )
    text = render(messages)
    size = estimate_tokens(text)
    if size > max_tokens:
        raise ContextTooLong(
            f"messages: the conversation is about {size} tokens (estimated as characters / 3), "
            f"over serve.max_conversation_tokens = {max_tokens}; shorten the history (or raise "
            "the limit if every agent's context holds it)",
            param="messages",
            code="context_length_exceeded",
        )
    return text
