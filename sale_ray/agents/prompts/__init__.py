"""Prompt templates (package data, ``string.Template`` syntax: ``$name``).

Templates are versioned with the package: ``PROMPT_VERSION`` goes into every auction log so that
results from different prompt sets are never mixed silently.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from string import Template

PROMPT_VERSION = "1"


@cache
def _template(name: str) -> Template:
    text = resources.files(__package__).joinpath(f"{name}.txt").read_text(encoding="utf-8")
    return Template(text.strip())


def render(name: str, **values: object) -> str:
    """Fill template ``name`` (a file ``<name>.txt`` here); a missing value is an error."""
    return _template(name).substitute({k: str(v) for k, v in values.items()})
