"""Start and stop local OpenAI-compatible model servers (llama.cpp via xllamacpp).

One :class:`LocalModelServer` is one child process (``sale_ray.agents.local_server``) serving one
GGUF on 127.0.0.1. The agent's OpenAI client talks to ``server.base_url``; on a GPU cluster the
same client talks to vLLM instead, so nothing here leaks into the agent beyond that URL.

Lifetime safety, because a leaked server holds a core and ~0.2-2 GB: ``stop()`` is idempotent
(terminate, then kill after a grace period); a finalizer runs it when the object is collected
and at interpreter exit; and if this process dies without either (SIGKILL, OOM), the child sees
its parent gone within a second and exits by itself.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from ..errors import ModelNotAvailable, ModelServerError

if TYPE_CHECKING:
    from ..config import AgentSpec

LOG_DIR_ENV = "SALE_RAY_LOG_DIR"
_seq = itertools.count()  # distinguishes log files of servers started in the same second
# Health checks go straight to 127.0.0.1: an HTTP(S)_PROXY in the environment must not see them.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def default_logs_dir() -> Path:
    """``$SALE_RAY_LOG_DIR`` or ``<tmp>/sale-ray/logs``."""
    env = os.environ.get(LOG_DIR_ENV)
    return Path(env).expanduser() if env else Path(tempfile.gettempdir()) / "sale-ray" / "logs"


def default_threads() -> int:
    """CPUs this process may run on (respects affinity / cpusets), else ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _terminate(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM, wait up to ``grace_s``, then SIGKILL. Safe to call on a finished process."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class LocalModelServer:
    """One llama.cpp server for one GGUF, in a child process bound to 127.0.0.1.

    ``n_ctx`` is the context each request may use; the server reserves ``n_ctx * n_parallel``
    (llama.cpp splits its context across parallel slots). ``n_parallel`` should equal the
    agent's ``max_concurrency``. ``port=0`` lets the OS pick a free port (no race: the child
    binds it and reports the address back).
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        n_ctx: int = 4096,
        n_parallel: int = 2,
        threads: int | None = None,
        port: int = 0,
        name: str | None = None,
        log_path: str | os.PathLike[str] | None = None,
        logs_dir: str | os.PathLike[str] | None = None,
        start_timeout_s: float = 120.0,
        stop_grace_s: float = 5.0,
        cache_ram_mib: int = 512,
    ) -> None:
        self.model_path = Path(model_path)
        self.n_ctx = n_ctx
        self.n_parallel = n_parallel
        self.threads = threads or default_threads()
        self.requested_port = port
        self.name = name or self.model_path.stem
        if log_path is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            fname = f"llama-{self.name}-{os.getpid()}-{stamp}-{next(_seq)}.log"
            log_path = Path(logs_dir or default_logs_dir()) / fname
        self.log_path = Path(log_path)
        self.start_timeout_s = start_timeout_s
        self.stop_grace_s = stop_grace_s
        self.cache_ram_mib = cache_ram_mib
        self.startup_s: float | None = None  # measured load time, for logs and benchmarks
        self._proc: subprocess.Popen[bytes] | None = None
        self._url: str | None = None
        self._finalizer: weakref.finalize | None = None
        self._lock = threading.Lock()

    @classmethod
    def for_agent(
        cls, spec: AgentSpec, model_path: str | os.PathLike[str], **kw: object
    ) -> LocalModelServer:
        """A server sized from an agent's spec (n_ctx, threads, max_concurrency)."""
        return cls(model_path, n_ctx=spec.n_ctx, n_parallel=spec.max_concurrency,
                   threads=spec.threads, name=spec.name, **kw)  # type: ignore[arg-type]  # fmt: skip

    # --- what callers read ------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Root URL, e.g. ``http://127.0.0.1:41234`` (``/health`` lives here)."""
        if self._url is None:
            raise ModelServerError(f"server {self.name} is not running")
        return self._url

    @property
    def base_url(self) -> str:
        """OpenAI-compatible base URL (``…/v1``) for the agent's client."""
        return self.url + "/v1"

    @property
    def port(self) -> int:
        """The port actually bound."""
        return int(self.url.rsplit(":", 1)[1])

    @property
    def pid(self) -> int | None:
        """Pid of the server process, ``None`` before ``start()``."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server log (for error messages)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))  # the tail only: logs can be long
                text = f.read().decode("utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> LocalModelServer:
        """Start the child and wait until it answers ``/health``. Idempotent while running.

        Raises :class:`ModelNotAvailable` if the model file is missing, and
        :class:`ModelServerError` (with the log tail) if the child dies or is not healthy
        within ``start_timeout_s``.
        """
        with self._lock:
            if self.running and self._url is not None:
                return self
            self._stop_locked()  # a child that died since: reap it and drop its finalizer
            if not self.model_path.is_file():
                raise ModelNotAvailable(f"model file not found: {self.model_path}")
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            ready = self.log_path.with_name(f".{self.log_path.name}.ready.json")
            ready.unlink(missing_ok=True)
            t0 = time.monotonic()
            self._spawn(ready)
            try:
                self._url = self._wait_ready(ready, t0 + self.start_timeout_s)
            except BaseException:
                self._stop_locked()
                raise
            finally:
                ready.unlink(missing_ok=True)
            self.startup_s = time.monotonic() - t0
            return self

    def _spawn(self, ready: Path) -> None:
        cmd = [
            sys.executable, "-m", "sale_ray.agents.local_server",
            "--model", str(self.model_path), "--ready-file", str(ready),
            "--parent-pid", str(os.getpid()), "--port", str(self.requested_port),
            "--n-ctx", str(self.n_ctx), "--n-parallel", str(self.n_parallel),
            "--threads", str(self.threads), "--alias", self.name,
            "--cache-ram-mib", str(self.cache_ram_mib),
        ]  # fmt: skip
        env = dict(os.environ)
        # The child must import this very sale_ray even when the caller's cwd (a Ray worker's)
        # does not have it on sys.path and the package is not installed.
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                close_fds=True,
                start_new_session=True,  # the terminal's Ctrl-C goes to us; we stop the child
            )
        # Runs on stop(), on garbage collection and at interpreter exit, whichever is first.
        self._finalizer = weakref.finalize(self, _terminate, self._proc, self.stop_grace_s)

    def _wait_ready(self, ready: Path, deadline: float) -> str:
        assert self._proc is not None
        url: str | None = None
        while time.monotonic() < deadline:
            rc = self._proc.poll()
            if rc is not None:
                raise ModelServerError(
                    f"llama.cpp server for {self.model_path} exited with code {rc} while "
                    f"starting; log {self.log_path}, last lines:\n{self.log_tail()}"
                )
            if url is None and ready.is_file():
                try:
                    url = json.loads(ready.read_text())["address"]
                except (OSError, ValueError, KeyError):
                    url = None  # the rename is atomic, so this is a real oddity: retry
            if url is not None and _healthy(url):
                return url
            time.sleep(0.05)
        raise ModelServerError(
            f"llama.cpp server for {self.model_path} was not healthy within "
            f"{self.start_timeout_s:.0f} s; log {self.log_path}, last lines:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """Terminate the server (kill after ``stop_grace_s``) and wait for it. Idempotent."""
        with self._lock:
            self._stop_locked()

    def _stop_locked(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # a no-op if it already ran
        self._url = None

    def __enter__(self) -> LocalModelServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running at {self._url}" if self.running else "stopped"
        return f"LocalModelServer({self.name!r}, {self.model_path.name}, {state})"


def _healthy(url: str) -> bool:
    """True when llama.cpp's ``/health`` answers 200 (it answers 503 while loading)."""
    try:
        with _DIRECT.open(url + "/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False
