"""Hidden tests judged outside the solution's reach.

Two sandboxes per judgement, started side by side and joined by one socket pair:

* the **solution** sandbox holds only the solution module (``serve`` mode of ``inside.py``) and
  answers calls of its top-level functions;
* the **harness** sandbox holds only the tests (``judge`` mode): each solution function is a proxy
  over the socket, and the verdict goes to a pipe that exists only in this sandbox and here.

The solution cannot read the tests (another scratch directory, another mount namespace and, as
root, another uid), cannot see the harness's processes (another PID namespace) and cannot write
the verdict pipe (it never had it). Printing whatever it likes and calling ``os._exit(0)`` only
ends the solution process: the harness's next call fails and the task is scored failed.

What a caller sees is a bounded, sanitised summary (exception type and test location, never raw
output): see :func:`summary`.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading

from pydantic import BaseModel, ConfigDict, Field

from ..config import SandboxConfig
from .sandbox import SandboxResult, run_files

MAX_VERDICT_BYTES = 4096
_NAME = re.compile(r"[^A-Za-z0-9_.]")


class Verdict(BaseModel):
    """The harness's judgement of one solution (never built from the solution's own output)."""

    model_config = ConfigDict(frozen=True)

    passed: bool = Field(description="The tests ran to their end (or unittest exited 0).")
    error: str | None = Field(default=None, description="Exception type that failed the tests.")
    where: str | None = Field(default=None, description="'function, tests line N' of the failure.")
    why: str | None = Field(default=None, description="A fixed phrase for non-exception failures.")
    harness: SandboxResult = Field(description="How the harness (tests) sandbox ran.")
    solution: SandboxResult = Field(description="How the solution sandbox ran.")

    @property
    def isolation(self) -> list[str]:
        """Layers both sandboxes got (a private ``uid:N`` differs per run: reported as ``uid``)."""
        theirs = {_layer(x) for x in self.harness.isolation}
        return [x for x in map(_layer, self.solution.isolation) if x in theirs]


def _layer(name: str) -> str:
    return "uid" if name.startswith("uid:") else name


def judge(program: str, tests: str, cfg: SandboxConfig) -> Verdict:
    """Run ``tests`` against ``program`` in two sandboxes; the verdict comes from the tests' one."""
    sol_end, harness_end = socket.socketpair()
    verdict_r, verdict_w = os.pipe()
    box: dict = {}

    def solution() -> None:
        try:
            box["result"] = run_files(
                {"solution.py": program},
                ["serve", "solution.py", str(sol_end.fileno())],
                cfg,
                keep_fds=(sol_end.fileno(),),
            )
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e
        finally:
            sol_end.close()  # the harness then sees EOF if the solution never started

    thread = threading.Thread(target=solution, name="sale-ray-solution", daemon=True)
    thread.start()
    try:
        try:
            harness = run_files(
                {"tests.py": tests},
                ["judge", "tests.py", str(harness_end.fileno()), str(verdict_w)],
                cfg,
                keep_fds=(harness_end.fileno(), verdict_w),
            )
        finally:
            harness_end.close()  # the solution's server loop ends on EOF
            os.close(verdict_w)
        thread.join()
        if "error" in box:
            raise box["error"]
        os.set_blocking(verdict_r, False)
        try:
            raw = os.read(verdict_r, MAX_VERDICT_BYTES)
        except BlockingIOError:
            raw = b""
    finally:
        os.close(verdict_r)
    return _verdict(raw, harness, box["result"])


def _clean(text: object, limit: int = 60) -> str | None:
    """An identifier-ish token (exception names come from code we do not trust)."""
    if text is None:
        return None
    return _NAME.sub("", str(text))[:limit] or None


def _verdict(raw: bytes, harness: SandboxResult, solution: SandboxResult) -> Verdict:
    msg: dict = {}
    if len(raw) > 4:
        try:
            msg = json.loads(raw[4 : 4 + int.from_bytes(raw[:4], "big")])
        except ValueError:
            msg = {}
    if not isinstance(msg, dict):
        msg = {}
    passed = msg.get("passed") is True and harness.ok
    where = msg.get("where")
    loc = None
    if isinstance(where, str):
        m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]{0,60}|<module>), tests line (\d{1,7})", where)
        loc = m.group(0) if m else None
    why = msg.get("why") if isinstance(msg.get("why"), str) else None
    why = "".join(c for c in why if c.isprintable()) if why else None
    return Verdict(
        passed=passed,
        error=_clean(msg.get("error")),
        where=loc,
        why=why[:80] if why else None,
        harness=harness,
        solution=solution,
    )


_LIMITS = {
    "timeout": "timeout",
    "cpu": "CPU time limit",
    "memory": "memory limit",
    "output": "output limit",
    "file_size": "file size limit",
}


def summary(v: Verdict, limit: int = 300) -> str:
    """What callers may see of a failed judgement: the limit hit, the exception type and where
    in the tests — never stdout/stderr, which the solution (or tests) could fill with data."""
    if v.passed:
        return f"tests passed in {v.harness.duration_s:.2f}s"
    hit = v.harness.killed_reason or v.solution.killed_reason
    parts = []
    if hit:
        parts.append(_LIMITS.get(hit, _clean(hit) or "killed"))
    if v.error:
        parts.append(v.error + (f" in {v.where}" if v.where else ""))
    if v.why:
        parts.append(v.why)
    if v.solution.killed_reason and v.solution.killed_reason != hit:
        parts.append(f"solution: {_LIMITS.get(v.solution.killed_reason, 'killed')}")
    if not parts:
        parts.append(f"the tests did not report a verdict (exit {v.harness.exit_code})")
    return ": ".join(parts)[:limit]
