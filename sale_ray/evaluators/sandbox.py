"""Run untrusted Python (model-written code + tests) in a throw-away, resource-limited process.

Isolation layers (``SandboxResult.isolation`` lists the ones a run actually got):

* ``process-group``  — the run is its own session; the whole group is SIGKILLed at the wall-clock
  timeout, on output overflow and after it exits.
* ``pidns``          — a fresh PID namespace whose init is ours: when it exits, the kernel kills
  every process left inside, including ones that escaped the process group with ``setsid``.
  Without it (no CAP_SYS_ADMIN) a root sandbox falls back to killing every process of the run's
  private uid (``uid-sweep``).
* ``netns``          — a fresh network namespace: no interfaces, loopback down, so not even
  ``127.0.0.1`` is reachable (also for subprocesses and ctypes, which the next layer cannot stop).
* ``audit-hook``     — a ``sys.addaudithook`` guard (cannot be removed from Python) that raises
  PermissionError on every ``socket.*`` event.
* ``uid:N``          — when we run as root (root ignores RLIMIT_NPROC and may delete anything),
  the code runs as a private unprivileged uid/gid ``N = UID_BASE + pid of the launcher``: unique
  per live run, so RLIMIT_NPROC counts exactly this run's processes and concurrent runs cannot
  starve or signal each other.
* ``rlimits``        — CPU seconds, address space, processes, file size, open files, no core.
* ``scratch-cwd``    — a fresh 0700 temp dir (owned by the run's uid) as cwd/HOME/TMPDIR,
  deleted afterwards; a minimal environment; ``python -I -S -B`` (no site-packages, no
  PYTHON* variables, no .pyc writes).

Not covered: the code can *read* world-readable files and write to world-writable places such as
``/tmp`` (within RLIMIT_FSIZE per file). Use a container/VM boundary for hostile workloads.

Setup happens in a small launcher interpreter rather than ``preexec_fn``: the caller may be a
multi-threaded Ray worker, where forking and running Python before ``exec`` can deadlock.
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

from pydantic import BaseModel, ConfigDict, Field

from ..config import SandboxConfig
from ..errors import SandboxError

UID_BASE = 1_500_000_000  # far above any real account; + launcher pid (< 2**22) stays < 2**31
MAX_OPEN_FILES = 64
_GRACE_S = 0.5  # how long we keep draining pipes after the program itself has exited

# The launcher runs as the caller's user (root in CI) in a new session. It unshares namespaces,
# forks the namespace init, which forks the user process: limits, cwd, privilege drop, exec.
# Protocol on the info pipe (one line each): "layer NAME", "init HOSTPID", "exec PATH" (about
# to exec the program), "error MSG" (setup failed), "status WAITSTATUS" (the program ended).
_LAUNCHER = r"""
import ctypes, json, os, resource, signal, sys
spec = json.loads(sys.argv[1])
info = spec["info_fd"]
def say(msg):
    os.write(info, (msg.replace("\n", " ") + "\n").encode())
libc = ctypes.CDLL(None, use_errno=True)
root = os.geteuid() == 0
NEWNET, NEWPID, NEWUSER = 0x40000000, 0x20000000, 0x10000000
extra = 0 if root else NEWUSER  # unprivileged users may get namespaces via a user namespace
for flags, names in ((NEWNET | NEWPID, ("netns", "pidns")), (NEWNET, ("netns",))):
    if libc.unshare(flags | extra) == 0:
        for n in names:
            say("layer " + n)
        break
uid = spec["uid_base"] + os.getpid() if root else None
scratch = spec["scratch"]
if root:
    for p in (scratch, os.path.join(scratch, "main.py")):
        os.chown(p, uid, uid)
    os.chmod(scratch, 0o700)

def user_process():
    try:
        mb = 1024 * 1024
        limits = [
            (resource.RLIMIT_CPU, spec["cpu_s"], spec["cpu_s"] + 1),
            (resource.RLIMIT_AS, spec["memory_mb"] * mb, spec["memory_mb"] * mb),
            (resource.RLIMIT_NPROC, spec["max_processes"], spec["max_processes"]),
            (resource.RLIMIT_FSIZE, spec["max_file_mb"] * mb, spec["max_file_mb"] * mb),
            (resource.RLIMIT_NOFILE, spec["max_open_files"], spec["max_open_files"]),
            (resource.RLIMIT_CORE, 0, 0),
        ]
        for which, soft, hard in limits:
            cur = resource.getrlimit(which)[1]
            if not root and cur != resource.RLIM_INFINITY:  # only root may raise a hard limit
                hard = min(hard, cur)
            resource.setrlimit(which, (min(soft, hard), hard))
        os.chdir(scratch)
        if root:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            try:
                os.setuid(0)
            except PermissionError:
                pass
            else:
                raise RuntimeError("privilege drop did not stick")
            say("layer uid:%d" % uid)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with our init
        say("layer rlimits")
        for exe in spec["pythons"]:
            if os.access(exe, os.X_OK):
                break
        else:
            raise RuntimeError("no Python interpreter the sandbox user may run: %s" % spec["pythons"])
        say("exec " + exe)
        os.set_inheritable(info, False)
        env = {"PATH": "/usr/bin:/bin", "HOME": scratch, "TMPDIR": scratch, "LC_ALL": "C.UTF-8"}
        os.execve(exe, [exe, "-I", "-S", "-B", "-c", spec["bootstrap"], "main.py"], env)
    except BaseException as e:
        say("error %s: %s" % (type(e).__name__, e))
    os._exit(127)

def init():
    libc.prctl(1, signal.SIGKILL)  # if the launcher is killed, the namespace goes with us
    child = os.fork()
    if child == 0:
        user_process()
    while True:  # reap orphans until the user process itself exits
        pid, status = os.wait()
        if pid == child:
            say("status %d" % status)
            os._exit(0)

resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
pid = os.fork()
if pid == 0:
    try:
        init()
    finally:
        os._exit(126)
say("init %d" % pid)
os.waitpid(pid, 0)
"""

# Runs inside the sandbox before the user's code: audit hooks cannot be removed once added.
_BOOTSTRAP = r"""
import sys
def _sale_ray_no_network(event, args):
    if event.startswith("socket."):
        raise PermissionError("network access is disabled in the sale-ray sandbox")
sys.addaudithook(_sale_ray_no_network)
del _sale_ray_no_network
with open(sys.argv[1], encoding="utf-8") as _f:
    _code = compile(_f.read(), sys.argv[1], "exec")
sys.argv = sys.argv[1:]
# A fresh, real __main__ module: unittest.main(), pickle and friends look it up in sys.modules.
_boot, _main = sys.modules["__main__"], type(sys)("__main__")
_main.__file__, _main.__builtins__ = sys.argv[0], __builtins__
sys.modules["__main__"] = _main
exec(_code, _main.__dict__)
"""

# What every run gets without needing privileges; the launcher reports the rest.
_STATIC_LAYERS = ["process-group", "audit-hook", "scratch-cwd"]


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
    """Interpreters to try, best first. A root sandbox runs as an unprivileged uid, which may not
    reach ours (e.g. pyenv under 0700 /root), so same-minor system interpreters follow."""
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    cands = [os.path.realpath(sys.executable)]
    cands += [f"{d}/python{ver}" for d in ("/usr/local/bin", "/usr/bin")]
    return list(dict.fromkeys(c for c in cands if os.path.isfile(c)))


def run_python(source: str, cfg: SandboxConfig | None = None, stdin: str = "") -> SandboxResult:
    """Run ``source`` as ``__main__`` in the sandbox and report what happened.

    Never raises because of what the code does (crash, loop, fork bomb, 10 GB allocation, ...);
    raises :class:`SandboxError` only if the sandbox itself cannot be set up.
    """
    cfg = cfg or SandboxConfig()
    scratch = tempfile.mkdtemp(prefix="sale-ray-sbx-")
    try:
        with open(os.path.join(scratch, "main.py"), "w", encoding="utf-8") as f:
            f.write(source)
        return _run_in(scratch, cfg, stdin)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_in(scratch: str, cfg: SandboxConfig, stdin: str) -> SandboxResult:
    pythons = _interpreters()
    spec = {
        "scratch": scratch,
        "uid_base": UID_BASE,
        "cpu_s": cfg.cpu_s,
        "memory_mb": cfg.memory_mb,
        "max_processes": cfg.max_processes,
        "max_file_mb": cfg.max_file_mb,
        "max_open_files": MAX_OPEN_FILES,
        "pythons": pythons,
        "bootstrap": _BOOTSTRAP,
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
            pass_fds=(info_w,),
            cwd=scratch,
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
    parsed: dict = {"layers": [], "exec": None, "error": None, "status": None, "init": None}
    for line in bytes(raw).decode("utf-8", "replace").splitlines():
        word, _, rest = line.partition(" ")
        if word == "layer":
            parsed["layers"].append(rest)
        elif word == "exec":
            parsed["exec"] = rest
        elif word == "error":
            parsed["error"] = rest
        elif word in ("status", "init") and rest.lstrip("-").isdigit():
            parsed[word] = int(rest)
    return parsed


def _result(proc: subprocess.Popen, out: dict, duration: float) -> SandboxResult:
    info = _parse_info(out["info"])
    stderr = bytes(out["stderr"]).decode("utf-8", "replace")
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
        reason = _diagnose(exit_code, stderr)
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
