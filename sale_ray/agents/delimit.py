"""Untrusted text in prompts, delimited as data.

Every text a prompt carries that we did not write — a task, a bidder's plan, a past task from
memory, a tool's output — goes between tags, with anything that could close or open one of our
tags removed, so the text cannot end the block it sits in and speak as the prompt. The system
prompts say that text between these tags is data, not instructions.
"""

from __future__ import annotations

import re

#: The tags our prompts use for untrusted text. A text may contain none of them.
TAGS = ("task", "plan", "plans", "past_task", "output")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ANY_TAG = re.compile(r"<\s*/?\s*(?:" + "|".join(TAGS) + r")\b[^>]*>?", re.IGNORECASE)


def clean(text: str, max_chars: int | None = None) -> str:
    """``text`` without control characters or any of :data:`TAGS`, cut to ``max_chars``."""
    out = _ANY_TAG.sub("[tag removed]", _CONTROL.sub("", text))
    if max_chars is not None and len(out) > max_chars:
        out = out[:max_chars] + " [cut]"
    return out


def as_data(tag: str, text: str, max_chars: int | None = None, **attrs: str) -> str:
    """``text`` cleaned and wrapped in ``<tag ...>`` … ``</tag>`` (attributes are ours)."""
    if tag not in TAGS:
        raise ValueError(f"{tag!r} is not one of the data tags {TAGS}")
    head = "".join(f' {k}="{v}"' for k, v in attrs.items())
    return f"<{tag}{head}>\n{clean(text, max_chars)}\n</{tag}>"
