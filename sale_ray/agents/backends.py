"""The agent backends, registered by name: what ``pool.agents[].backend`` may say.

Each backend names the class its agent actors run and, optionally, a verifier of its own (a
pool made only of agents that bring one is checked by it instead of the sandbox: scripted
agents' canned answers are checked by their script). The runtime, the config and the verifier
look backends up here; none of them special-cases one. Classes are named by import path so
that reading the registry imports no backend.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Backend:
    """One backend: its agent class and (optionally) its own verifier, as ``module:name``."""

    agent: str
    evaluator: str | None = None
    description: str = ""


BACKENDS: dict[str, Backend] = {
    "local": Backend(
        "sale_ray.agents.agent:Agent",
        description="a llama.cpp server this agent starts on 127.0.0.1 (the catalog's models)",
    ),
    "openai": Backend(
        "sale_ray.agents.agent:Agent",
        description="any OpenAI-compatible endpoint (vLLM, Ray Serve LLM, a hosted API)",
    ),
    "scripted": Backend(
        "sale_ray.agents.scripted:ScriptedAgent",
        evaluator="sale_ray.agents.scripted:scripted_evaluate",
        description="canned answers with simulated latency (load and fault tests only)",
    ),
}


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def agent_class(backend: str) -> type:
    """The class the agent actors of ``backend`` run."""
    return _load(BACKENDS[backend].agent)


def own_evaluator(backends: list[str]) -> Any:
    """The verifier a pool of these backends brings, or None (then the sandbox checks): one
    only when every agent's backend brings the same one."""
    found = {BACKENDS[b].evaluator for b in backends}
    if len(found) == 1 and (path := found.pop()) is not None:
        return _load(path)
    return None
