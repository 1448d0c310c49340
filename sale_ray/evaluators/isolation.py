"""Which isolation layers a sandbox run got, which ones it must have, and what to do when one is
missing: refuse (``sandbox.require``) or warn (``sandbox.warn``).

Layer names as they appear in ``SandboxResult.isolation`` and ``Evaluation.isolation``:

* ``userns``   — (non-root callers) a user namespace whose uid/gid map sends the code's uid 65534
  to the caller's: it gets the capabilities to build the mounts below and loses them at exec.
* ``mountns``  — a mount namespace with a new root: the host's tree is detached; only the system
  directories, a few ``/etc`` files and the interpreter appear, read-only. ``~``, the project,
  the virtualenv, host ``/tmp`` do not exist for the code.
* ``mount-ro`` — the new root itself and ``/dev`` are read-only (only scratch, /tmp, /dev/shm
  are writable, and they vanish with the run).
* ``tmpfs``    — private, size-capped ``/tmp`` (``sandbox.tmp_mb``) and ``/dev/shm`` (``shm_mb``).
* ``proc``     — ``/proc`` shows only the sandbox's own processes (or there is no /proc at all).
* ``pidns``    — a PID namespace whose init is ours: everything left inside dies with it.
* ``netns``    — a network namespace without interfaces: no TCP/UDP, loopback included, and no
  abstract AF_UNIX sockets of the host.
* ``uid:N``    — (root callers) the code runs as a private unprivileged uid. Requirable as ``uid``.
* ``uid-sweep``, ``rlimits``, ``process-group``, ``audit-hook``, ``scratch-cwd``, ``empty-env``.
* ``cgroup``   — the run's own cgroup (v2, or v1 memory + pids): ``sandbox.run_memory_mb`` for all
  its processes together, and ``max_processes`` (+4 for the launcher, init, bootstrap) (cgroup.py).
"""

from __future__ import annotations

import logging
import threading

from ..config import SandboxConfig
from ..errors import SandboxError

log = logging.getLogger(__name__)

_NAMESPACES = (
    "needs unprivileged user namespaces (sysctl user.max_user_namespaces > 0, "
    "kernel.unprivileged_userns_clone = 1, and on Ubuntu "
    "kernel.apparmor_restrict_unprivileged_userns = 0) or root with CAP_SYS_ADMIN "
    "(e.g. a container started with --cap-add SYS_ADMIN and a seccomp profile that allows unshare)"
)
FIXES: dict[str, str] = {
    "netns": _NAMESPACES,
    "pidns": _NAMESPACES,
    "mountns": _NAMESPACES,
    "uid": "needs sale-ray to run as root, so the sandbox can drop to a private uid "
    "(as an ordinary user the code keeps that user's uid outside its namespaces)",
    "cgroup": "needs a cgroup sale-ray may create children in: cgroup v2 whose own group "
    "delegates the memory and pids controllers (root, or a systemd unit with Delegate=yes), or "
    "the cgroup v1 memory and pids hierarchies as root; otherwise set the limits on the container "
    "or unit that runs sale-ray and drop cgroup from sandbox.require",
}


class SandboxRefused(SandboxError):
    """A layer named in ``sandbox.require`` is missing here: the untrusted code did not run."""

    def __init__(self, missing: list[str], got: list[str]) -> None:
        self.missing = missing
        self.got = got
        parts = [f"'{m}' {FIXES.get(m, 'is unavailable')}" for m in missing]
        super().__init__(
            "refused to run untrusted code: sandbox layer "
            + "; ".join(parts)
            + f" (this machine gave: {', '.join(got) or 'none'}). "
            "Fix the machine, or remove the layer from sandbox.require to accept the downgrade."
        )


def provides(layers: list[str], name: str) -> bool:
    """Whether ``layers`` (as reported) satisfy the requirable layer ``name``."""
    if name == "uid":
        return any(x.startswith("uid:") for x in layers)
    return name in layers


def refusal(missing: list[str], got: list[str]) -> SandboxRefused:
    """The error for a run the launcher refused (``missing`` came from inside the sandbox)."""
    known = [m for m in missing if m in FIXES] or ["unknown"]
    return SandboxRefused(known, got)


_warned: set[tuple[str, ...]] = set()
_lock = threading.Lock()


def warn_degraded(layers: list[str], cfg: SandboxConfig) -> list[str]:
    """Log (once per process and set) the layers of ``cfg.warn`` a run did not get; return them."""
    missing = [w for w in cfg.warn if not provides(layers, w)]
    key = tuple(missing)
    with _lock:
        new = bool(missing) and key not in _warned
        _warned.add(key)
    if new:
        log.warning(
            "sandbox runs without %s: %s. Record field evaluation.isolation lists what each run "
            "got; set sandbox.require to refuse instead.",
            ", ".join(missing),
            "; ".join(f"{m} {FIXES[m]}" for m in missing if m in FIXES),
        )
    return missing
