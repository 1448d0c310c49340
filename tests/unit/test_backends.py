"""Backends are a registry: the config accepts exactly its names, the runtime and the verifier
look them up instead of special-casing one."""

import typing

from sale_ray.agents.agent import Agent
from sale_ray.agents.backends import BACKENDS, agent_class, own_evaluator
from sale_ray.agents.scripted import ScriptedAgent, scripted_evaluate
from sale_ray.config import AgentSpec


def test_the_config_accepts_exactly_the_registered_backends():
    allowed = typing.get_args(AgentSpec.model_fields["backend"].annotation)
    assert set(allowed) == set(BACKENDS)


def test_each_backend_names_the_class_its_actors_run():
    assert agent_class("local") is Agent and agent_class("openai") is Agent
    assert agent_class("scripted") is ScriptedAgent


def test_a_pool_uses_its_own_verifier_only_when_every_agent_brings_the_same_one():
    assert own_evaluator(["scripted", "scripted"]) is scripted_evaluate
    assert own_evaluator(["scripted", "openai"]) is None  # mixed: the sandbox checks
    assert own_evaluator(["local"]) is None
