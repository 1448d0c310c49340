"""Where untrusted code is started from: a Ray actor that holds no secrets, not the caller.

The processes that call a verifier — agent actors (they hold an API key), the auctioneer, a Serve
replica — would otherwise be the parent of every sandbox. With Ray up, :func:`contained` sends the
call to one named actor instead (``sale-ray-sandbox``, namespace ``sale_ray``; a zero-CPU,
threaded worker that Ray starts itself). Its worker process is a child of the raylet, never of
an agent, and Ray starts it with every secret-looking variable of the creator's environment set
to the empty string (``runtime_env.env_vars``), so even its ``/proc/<pid>/environ`` holds no key.
The sandbox below it still starts a fresh interpreter with an empty environment (sandbox.py).

Without Ray (a script, a unit test) the call runs in a thread of the caller, as before; the
record's ``isolation`` says which: ``broker`` is there only when the actor ran it.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from typing import Any

from ..config import SandboxConfig
from ..errors import SandboxError
from ..types import Evaluation
from .code import check_solution, run_self_check
from .isolation import SandboxRefused
from .workbench import run_tool_code

ACTOR_NAME = "sale-ray-sandbox"
NAMESPACE = "sale_ray"
#: The verifier entry points the broker runs; nothing else can be called through it.
CALLS = {
    "check_solution": check_solution,
    "run_self_check": run_self_check,
    "run_tool_code": run_tool_code,
}
_SECRET = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH|COOKIE|SESSION", re.IGNORECASE)


def secret_names(environ: dict[str, str] | None = None) -> list[str]:
    """Names of variables in ``environ`` that look like they hold a secret (Ray's own excepted:
    its workers need them to join the cluster)."""
    env = os.environ if environ is None else environ
    return sorted(n for n in env if _SECRET.search(n) and not n.startswith("RAY_"))


class _Broker:
    """The actor: runs one of :data:`CALLS` per request, several at once (threads)."""

    def run(self, name: str, *args: Any) -> tuple[str, Any]:
        try:
            out = CALLS[name](*args)
        except SandboxRefused as e:  # rebuilt on the caller's side (its __init__ takes two lists)
            return "refused", (e.missing, e.got)
        except SandboxError as e:
            return "error", str(e)
        if isinstance(out, Evaluation) and out.isolation:
            out = out.model_copy(update={"isolation": [*out.isolation, "broker"]})
        return "ok", out

    def environ_secrets(self) -> dict[str, str]:
        """This worker's secret-looking variables (tests assert they are empty)."""
        return {n: os.environ[n] for n in secret_names()}

    def pid(self) -> int:
        return os.getpid()


_handle: Any = None
_lock = threading.Lock()


def _broker(cfg: SandboxConfig) -> Any:
    global _handle
    import ray

    with _lock:
        if _handle is None:
            _handle = (
                ray.remote(_Broker)
                .options(
                    name=ACTOR_NAME,
                    namespace=NAMESPACE,
                    get_if_exists=True,
                    num_cpus=0,
                    max_concurrency=cfg.broker_concurrency,
                    runtime_env={"env_vars": dict.fromkeys(secret_names(), "")},
                )
                .remote()
            )
        return _handle


def _forget() -> None:
    global _handle
    with _lock:
        _handle = None


def broker_handle(cfg: SandboxConfig | None = None) -> Any:
    """The broker actor's handle (created on first use); for tests and diagnostics."""
    return _broker(cfg or SandboxConfig())


async def contained(name: str, *args: Any, cfg: SandboxConfig) -> Any:
    """``CALLS[name](*args)``, run by the broker actor when Ray is up and ``cfg.broker`` is on,
    else in a thread here. A broker that died (its creator went away) is recreated once."""
    import ray

    if not (cfg.broker and ray.is_initialized()):
        return await asyncio.to_thread(CALLS[name], *args)
    for attempt in range(2):
        try:
            status, value = await _broker(cfg).run.remote(name, *args)
            break
        except ray.exceptions.RayTaskError:
            raise  # the call itself failed inside a live broker: not a reason to replace it
        except (ray.exceptions.RayActorError, ValueError) as e:
            # ValueError: the named actor vanished between lookup and call
            _forget()
            if attempt:
                raise SandboxError(f"the sandbox broker actor is unavailable: {e}") from None
    if status == "refused":
        raise SandboxRefused(*value)
    if status == "error":
        raise SandboxError(value)
    return value
