"""Run untrusted Python (model-written code, callers' tests) in a throw-away, contained process.

``run_python`` starts ``launcher.py`` (a fresh interpreter, almost empty environment) in a new
session; it builds the namespaces, the new root and the limits, then execs the interpreter on
``inside.py`` with an empty environment. ``SandboxResult.isolation`` lists the layers a run
actually got (names and meaning: :mod:`~sale_ray.evaluators.isolation`); ``SandboxConfig.require``
makes a missing one a refusal instead of a logged downgrade. docs/sandbox.md says what each mode
(root / unprivileged / no user namespaces) isolates and which test proves it.

Cleanup does not trust the code: the whole process group is SIGKILLed at the wall-clock timeout,
on output overflow and after it exits; a PID namespace takes everything left inside with its
init; without one, a root run sweeps its private uid.
"""

from __future__ import annotations

import json
import os
import select
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ..config import SandboxConfig
from ..errors import SandboxError
from . import cgroup
from .isolation import refusal, warn_degraded

UID_BASE = 1_500_000_000  # far above any real account; + launcher pid (< 2**22) stays < 2**31
MAX_OPEN_FILES = 64
_GRACE_S = 0.5  # how long we keep draining pipes after the program itself has exited

_HERE = os.path.dirname(os.path.abspath(__file__))
# Both run as `-c` text: the launcher's caller may be a uid that cannot read our checkout, and
# the sandbox's file system does not contain our package at all.
with open(os.path.join(_HERE, "launcher.py"), encoding="utf-8") as _f:
    _LAUNCHER = _f.read()
with open(os.path.join(_HERE, "inside.py"), encoding="utf-8") as _f:
    _BOOTSTRAP = _f.read()

# Namespaces the launcher must not even try: the tests use it to play a machine that lacks one.
_SKIP_LAYERS: set[str] = set()

# What every run gets without needing privileges; the launcher reports the rest.
_STATIC_LAYERS = ["process-group", "audit-hook", "scratch-cwd", "empty-env"]


class SandboxResult(BaseModel):
    """What a sandboxed run did. ``exit_code`` follows subprocess: negative = killed by signal."""

    model_config = ConfigDict(frozen=True)

    exit_code: int = Field(description="Exit status; -N if signal N ended it.")
    stdout: str = ""
    stderr: str = ""
    truncated: bool = Field(default=False, description="Output passed max_output_bytes.")
    timed_out: bool = False
    killed_reason: str | None = Field(
        default=None,
        description="'timeout', 'cpu', 'memory', 'output', 'file_size', 'signal:NAME' or None.",
    )
    duration_s: float = 0.0
    isolation: list[str] = Field(default_factory=list, description="Layers this run got.")
    interpreter: str = ""

    @property
    def ok(self) -> bool:
        """Exited with status 0 in time."""
        return self.exit_code == 0 and not self.timed_out


def _interpreters() -> list[str]:
    """Interpreters to try, best first: ours, then same-minor system ones (a root sandbox's private
    uid may not reach ours when the mount namespace is missing, e.g. pyenv under 0700 /root)."""
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    cands = [os.path.realpath(sys.executable)]
    cands += [f"{d}/python{ver}" for d in ("/usr/local/bin", "/usr/bin")]
    # The launcher runs as the caller: the first one the caller may execute starts it.
    cands = list(dict.fromkeys(c for c in cands if os.path.isfile(c)))
    return sorted(cands, key=lambda c: not os.access(c, os.X_OK))


def _prefixes(pythons: list[str]) -> list[str]:
    """Installation prefixes outside the system directories, bound read-only into the new root
    so the interpreter and its standard library exist there (and nothing else of that tree)."""
    out = []
    for exe in pythons:
        if not os.access(exe, os.X_OK):  # the caller cannot reach it: neither can a bind
            continue
        prefix = os.path.dirname(os.path.dirname(exe))
        top = prefix.strip("/").split("/")[0]
        if top and top not in ("usr", "bin", "sbin", "lib", "lib64"):
            out.append(prefix)
    return out


def run_python(source: str, cfg: SandboxConfig | None = None, stdin: str = "") -> SandboxResult:
    """Run ``source`` as ``__main__`` in the sandbox and report what happened.

    Never raises because of what the code does (crash, loop, fork bomb, 10 GB allocation, ...);
    raises :class:`SandboxError` only if the sandbox itself cannot be set up, and
    :class:`~sale_ray.evaluators.isolation.SandboxRefused` when a layer in ``cfg.require`` is
    missing (then nothing of ``source`` ran).
    """
    return run_files({"main.py": source}, ["run", "main.py"], cfg or SandboxConfig(), stdin)


def run_files(
    files: dict[str, str],
    argv: list[str],
    cfg: SandboxConfig,
    stdin: str = "",
    keep_fds: tuple[int, ...] = (),
) -> SandboxResult:
    """Run the bootstrap (``inside.py``) with ``argv`` on a fresh scratch dir holding ``files``;
    ``keep_fds`` are handed to the program (the harness's channels)."""
    base = tempfile.mkdtemp(prefix="sale-ray-sbx-")
    scratch, root_dir = os.path.join(base, "work"), os.path.join(base, "root")
    try:
        os.chmod(base, 0o711)  # a root run without mount namespace must reach scratch
        os.mkdir(scratch, 0o700)
        os.mkdir(root_dir, 0o700)
        for name, text in files.items():
            with open(os.path.join(scratch, name), "w", encoding="utf-8") as f:
                f.write(text)
        # +4: the launcher, the namespace's init and the bootstrap are in the run's group too
        groups = (
            []
            if "cgroup" in _SKIP_LAYERS
            else cgroup.create(cfg.run_memory_mb, cfg.max_processes + 4)
        )
        try:
            result = _run_in(scratch, root_dir, list(files), argv, cfg, stdin, keep_fds, groups)
        finally:
            cgroup.remove(groups)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    warn_degraded(result.isolation, cfg)
    return result


def _run_in(
    scratch: str,
    root_dir: str,
    names: list[str],
    argv: list[str],
    cfg: SandboxConfig,
    stdin: str,
    keep_fds: tuple[int, ...],
    groups: list[Path],
) -> SandboxResult:
    pythons = _interpreters()
    spec = {
        "scratch": scratch,
        "root_dir": root_dir,
        "owned": [os.path.join(scratch, n) for n in names],
        "uid_base": UID_BASE,
        "cpu_s": cfg.cpu_s,
        "memory_mb": cfg.memory_mb,
        "max_processes": cfg.max_processes,
        "max_file_mb": cfg.max_file_mb,
        "max_open_files": MAX_OPEN_FILES,
        "tmp_mb": cfg.tmp_mb,
        "shm_mb": cfg.shm_mb,
        "require": list(cfg.require),
        "pythons": pythons,
        "prefixes": _prefixes(pythons),
        "bootstrap": _BOOTSTRAP,
        "argv": argv,
        "keep_fds": list(keep_fds),
        "skip": sorted(_SKIP_LAYERS),
        "cgroups": [str(g / "cgroup.procs") for g in groups],
    }
    info_r, info_w = os.pipe()
    spec["info_fd"] = info_w
    stdin_file = None
    if stdin:
        # A file, not a pipe: writing a pipe the program never reads would block us.
        stdin_path = os.path.join(scratch, ".stdin")
        with open(stdin_path, "w", encoding="utf-8") as f:
            f.write(stdin)
        stdin_file = open(stdin_path, "rb")  # closed right after Popen
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            [pythons[0], "-I", "-S", "-B", "-c", _LAUNCHER, json.dumps(spec)],
            stdin=stdin_file or subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(info_w, *keep_fds),
            cwd=scratch,
            # The launcher is a fresh interpreter, not a fork of ours: it holds no secret of
            # this process (keys in memory or environment), and neither does the code.
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
            start_new_session=True,
        )
    except OSError as e:
        os.close(info_r)
        raise SandboxError(f"could not start the sandbox launcher: {e}") from e
    finally:
        os.close(info_w)
        if stdin_file:
            stdin_file.close()
    out: dict = {}
    try:
        out = _collect(proc, info_r, cfg, started)
    finally:
        _cleanup(proc, out, pythons[0])
        os.close(info_r)
        out["oom"] = cgroup.oom_killed(groups)
    return _result(proc, out, time.monotonic() - started)


def _cleanup(proc: subprocess.Popen, out: dict, python: str) -> None:
    """Make sure nothing of the run is left when we return."""
    _kill_group(proc.pid)
    info = _parse_info(out.get("info", b""))
    if info["init"] and not out.get("launcher_done"):
        # We killed the run: the namespace's init may still be tearing the namespace down.
        _wait_exited(info["init"])
    # Reap only after the sweep: an unreaped launcher pins its pid, hence the run's uid.
    try:
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    except ChildProcessError:  # SIGCHLD ignored by the host process: already auto-reaped
        pass
    if os.geteuid() == 0 and "pidns" not in info["layers"]:
        _sweep_uid(UID_BASE + proc.pid, python)
    proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe:
            pipe.close()


def _wait_exited(pid: int, timeout_s: float = 5.0) -> None:
    """Block until ``pid`` has exited (bounded). A PID-namespace init exits only after the kernel
    has killed and reaped everything else inside, so afterwards none of it is left."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:  # already reaped (or no pidfd support): nothing to wait for
        return
    try:
        select.select([fd], [], [], timeout_s)  # a pidfd turns readable when the process exits
    finally:
        os.close(fd)


def _collect(proc: subprocess.Popen, info_r: int, cfg: SandboxConfig, started: float) -> dict:
    """Read stdout/stderr/info until all close or a limit hits; kill the group on a limit."""
    assert proc.stdout is not None and proc.stderr is not None
    bufs = {"stdout": bytearray(), "stderr": bytearray(), "info": bytearray()}
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout.fileno(), selectors.EVENT_READ, "stdout")
    sel.register(proc.stderr.fileno(), selectors.EVENT_READ, "stderr")
    sel.register(info_r, selectors.EVENT_READ, "info")
    deadline = started + cfg.timeout_s
    reason: str | None = None
    truncated = False
    launcher_done = False
    try:
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                if not launcher_done:
                    reason = "timeout"
                break
            for key, _ in sel.select(timeout=min(left, 0.25)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fd)
                    if key.data == "info":  # the launcher holds it until it exits
                        launcher_done = True
                        deadline = min(deadline, time.monotonic() + _GRACE_S)
                    continue
                if key.data != "info":
                    room = cfg.max_output_bytes - len(bufs["stdout"]) - len(bufs["stderr"])
                    if len(chunk) > room:
                        chunk, truncated = chunk[: max(room, 0)], True
                bufs[key.data] += chunk
            if truncated:
                reason = reason or "output"
                break
    finally:
        sel.close()
    if reason and not launcher_done:
        _kill_group(proc.pid)
        # Whatever the launcher said before the kill (layers, exec) is still in the pipe.
        try:
            os.set_blocking(info_r, False)
            while chunk := os.read(info_r, 65536):
                bufs["info"] += chunk
        except BlockingIOError:
            pass
    return {**bufs, "reason": reason, "truncated": truncated, "launcher_done": launcher_done}


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _sweep_uid(uid: int, python: str) -> None:
    """Kill every process of the run's private uid (fallback when there is no PID namespace).

    ``kill(-1)`` from that uid reaches exactly its processes; a helper interpreter does it so we
    never change our own credentials.
    """
    code = (
        "import os,signal,sys,time\n"
        f"os.setgid({uid}); os.setuid({uid})\n"
        # A few rounds catch children forked while the first round ran. (Zombies still count as
        # targets, so "until ESRCH" could spin until their new parent reaps them.)
        "for _ in range(5):\n"
        "    try: os.kill(-1, signal.SIGKILL)\n"
        "    except ProcessLookupError: break\n"
        "    time.sleep(0.02)\n"
    )
    subprocess.run([python, "-I", "-S", "-c", code], env={}, timeout=10, check=False)


def _parse_info(raw: bytes | bytearray) -> dict:
    parsed: dict = {
        "layers": [],
        "exec": None,
        "error": None,
        "status": None,
        "init": None,
        "refuse": None,
    }
    for line in bytes(raw).decode("utf-8", "replace").splitlines():
        word, _, rest = line.partition(" ")
        if word == "layer":
            parsed["layers"].append(rest)
        elif word == "drop":  # a layer the launcher had to give up after announcing it
            gone = rest.split(" ")[0]
            parsed["layers"] = [x for x in parsed["layers"] if x != gone]
        elif word == "exec":
            parsed["exec"] = rest
        elif word in ("error", "refuse"):
            parsed[word] = rest
        elif word in ("status", "init") and rest.lstrip("-").isdigit():
            parsed[word] = int(rest)
    return parsed


def _result(proc: subprocess.Popen, out: dict, duration: float) -> SandboxResult:
    info = _parse_info(out["info"])
    stderr = bytes(out["stderr"]).decode("utf-8", "replace")
    if info["refuse"]:
        raise refusal(info["refuse"].split(","), _STATIC_LAYERS + info["layers"])
    started = info["exec"] is not None or out["reason"] == "timeout"  # slow start = slow run
    if info["error"] or not started:
        why = info["error"] or (stderr.strip()[-500:] or f"launcher exit {proc.returncode}")
        raise SandboxError(f"the sandbox could not start the program: {why}")
    reason: str | None = out["reason"]
    if info["status"] is not None:
        exit_code = os.waitstatus_to_exitcode(info["status"])
    else:  # we killed it before it finished
        exit_code = -signal.SIGKILL
    if reason is None and exit_code != 0:
        reason = "memory" if out.get("oom") else _diagnose(exit_code, stderr)
    return SandboxResult(
        exit_code=exit_code,
        stdout=bytes(out["stdout"]).decode("utf-8", "replace"),
        stderr=stderr,
        truncated=out["truncated"],
        timed_out=reason == "timeout",
        killed_reason=reason,
        duration_s=round(duration, 4),
        isolation=_STATIC_LAYERS
        + info["layers"]
        + ([] if "pidns" in info["layers"] or os.geteuid() != 0 else ["uid-sweep"]),
        interpreter=info["exec"] or "",
    )


def _diagnose(exit_code: int, stderr: str) -> str | None:
    """Name the limit a failed run most likely hit (None: it just failed)."""
    if exit_code < 0:
        if -exit_code == signal.SIGXCPU:
            return "cpu"
        if -exit_code == signal.SIGXFSZ:
            return "file_size"
        try:
            return f"signal:{signal.Signals(-exit_code).name}"
        except ValueError:  # e.g. a real-time signal
            return f"signal:{-exit_code}"
    tail = stderr[-2000:]
    if "MemoryError" in tail or "Cannot allocate memory" in tail:
        return "memory"
    if "File too large" in tail:
        return "file_size"
    return None
