"""With Ray up, untrusted code is started by a broker actor: never a child of the process that
holds an API key, and no secret in the broker's own environment (evaluators/broker.py)."""

from __future__ import annotations

import asyncio
import os

import pytest
import ray

from sale_ray.config import SandboxConfig
from sale_ray.evaluators.broker import ACTOR_NAME, NAMESPACE, contained
from sale_ray.types import Task

FAKE_KEY = "sk-proj-" + "Q7x" * 16  # what a provider key looks like; only this test has it
ADD = Task(id="add", prompt="Write add(a, b).", entry_point="add", tests="assert add(2, 3) == 5\n")


def _ancestors(pid: int) -> list[int]:
    out = []
    while pid > 1:
        with open(f"/proc/{pid}/stat") as f:
            pid = int(f.read().rsplit(")", 1)[1].split()[1])  # field 4: ppid
        out.append(pid)
    return out


@ray.remote
class KeyHolder:
    """Stands in for an agent actor: the provider key is in its environment."""

    def pid(self) -> int:
        return os.getpid()

    async def check(self, answer: str):
        return await contained("check_solution", ADD, answer, SandboxConfig(), cfg=SandboxConfig())

    async def broker_facts(self) -> tuple[int, dict[str, str]]:
        from sale_ray.evaluators.broker import broker_handle

        b = broker_handle()
        return await b.pid.remote(), await b.environ_secrets.remote()


@pytest.fixture
def holder(ray_cluster):
    try:  # a broker another test created would not have been made by this key holder
        ray.kill(ray.get_actor(ACTOR_NAME, namespace=NAMESPACE))
    except ValueError:
        pass
    h = KeyHolder.options(runtime_env={"env_vars": {"FAKE_PROVIDER_API_KEY": FAKE_KEY}}).remote()
    yield h
    ray.kill(h)


def test_the_code_is_judged_by_the_broker_not_under_the_key_holder(holder):
    passed = ray.get(holder.check.remote("def add(a, b):\n    return a + b\n"), timeout=120)
    failed = ray.get(holder.check.remote("def add(a, b):\n    return 0\n"), timeout=120)
    assert passed.passed is True and failed.passed is False
    assert "broker" in passed.isolation and "broker" in failed.isolation

    holder_pid = ray.get(holder.pid.remote())
    broker_pid, secrets = ray.get(holder.broker_facts.remote(), timeout=60)
    assert holder_pid not in _ancestors(broker_pid)  # not a child, grandchild, … of the holder
    assert secrets.get("FAKE_PROVIDER_API_KEY") == ""  # blanked, and nothing else kept
    assert all(v == "" for v in secrets.values())


def test_without_ray_the_call_runs_here_and_says_so(monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    ev = asyncio.run(
        contained(
            "check_solution", ADD, "def add(a, b):\n    return a + b\n", SandboxConfig(),
            cfg=SandboxConfig(),
        )
    )  # fmt: skip
    assert ev.passed is True and "broker" not in ev.isolation
