"""One cgroup per sandbox run: memory and process count of all its processes together.

RLIMIT_AS bounds each process, RLIMIT_NPROC counts per uid; neither stops a run that forks eight
children of 500 MB each. Where the kernel lets the caller create cgroups, every run gets its own,
with ``memory`` and ``pids`` limits, before any of its code starts (the launcher moves itself in,
so everything it forks is counted). Two layouts are handled:

* **cgroup v2** (one unified hierarchy, ``/sys/fs/cgroup/cgroup.controllers`` exists): a child of
  the caller's own cgroup, when that one delegates ``memory`` and ``pids`` in its
  ``cgroup.subtree_control`` (root, or a systemd unit with ``Delegate=yes``);
* **cgroup v1** (or a hybrid): a child in the ``memory`` and the ``pids`` hierarchies, under the
  caller's own group in each (usually root only).

Anything else — no permission, a controller missing — gives no group, and the run reports no
``cgroup`` layer (``sandbox.require: [cgroup]`` then refuses). Groups are removed after the run.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
PREFIX = "sale-ray-"


def _own_paths() -> dict[str, str]:
    """Controller (or ``""`` for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    out: dict[str, str] = {}
    try:
        text = Path("/proc/self/cgroup").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        _, ctrls, path = line.split(":", 2)
        for c in ctrls.split(",") if ctrls else [""]:
            out[c] = path
    return out


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _v2(own: dict[str, str], token: str, memory: int, pids: int) -> list[Path]:
    parent = ROOT / own.get("", "/").lstrip("/")
    ctl = (parent / "cgroup.subtree_control").read_text().split()
    if not {"memory", "pids"} <= set(ctl):
        return []
    group = parent / token
    group.mkdir()
    try:
        _write(group / "memory.max", str(memory))
        if (group / "memory.swap.max").exists():
            _write(group / "memory.swap.max", "0")
        _write(group / "pids.max", str(pids))
    except OSError:
        group.rmdir()
        raise
    return [group]


def _v1(own: dict[str, str], token: str, memory: int, pids: int) -> list[Path]:
    made: list[Path] = []
    try:
        for ctrl, limits in (
            (
                "memory",
                [("memory.limit_in_bytes", memory), ("memory.memsw.limit_in_bytes", memory)],
            ),
            ("pids", [("pids.max", pids)]),
        ):
            if ctrl not in own or not (ROOT / ctrl).is_dir():
                raise OSError(f"no {ctrl} hierarchy")
            group = ROOT / ctrl / own[ctrl].lstrip("/") / token
            group.mkdir()
            made.append(group)
            for name, value in limits:
                if (group / name).exists():  # memsw only with swap accounting
                    _write(group / name, str(value))
    except OSError:
        remove(made)
        raise
    return made


def create(memory_mb: int, max_pids: int) -> list[Path]:
    """A fresh group (one dir per hierarchy) with the limits set, or ``[]`` where not allowed."""
    token = PREFIX + uuid.uuid4().hex[:12]
    own = _own_paths()
    memory = memory_mb * 1024 * 1024
    for layout in (_v2, _v1) if (ROOT / "cgroup.controllers").exists() else (_v1,):
        try:
            made = layout(own, token, memory, max_pids)
        except OSError:
            continue
        if made:
            return made
    return []


def oom_killed(groups: list[Path]) -> bool:
    """Whether the kernel killed a process of the run for exceeding its memory limit."""
    for g in groups:
        for name in ("memory.events", "memory.oom_control"):  # v2, v1
            try:
                lines = (g / name).read_text().splitlines()
            except OSError:
                continue
            counts = dict(line.split()[:2] for line in lines if len(line.split()) >= 2)
            if int(counts.get("oom_kill", "0")) > 0:
                return True
    return False


def remove(groups: list[Path], timeout_s: float = 5.0) -> None:
    """Remove the groups; a group empties only once the kernel has reaped its last process."""
    deadline = time.monotonic() + timeout_s
    for g in groups:
        while True:
            try:
                os.rmdir(g)
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    break  # left behind: empty soon, harmless, and named sale-ray-*
                time.sleep(0.02)
