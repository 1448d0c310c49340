"""The sandbox contains misbehaving code (RELIABILITY.md row 14) and reports what happened.

Every test here runs real subprocesses; none needs Ray. Limits are set low so the suite is fast.
"""

from __future__ import annotations

import os
import socket
import subprocess
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from sale_ray.config import SandboxConfig
from sale_ray.errors import SandboxError
from sale_ray.evaluators import sandbox
from sale_ray.evaluators.sandbox import SandboxResult, run_python

ROOT = os.geteuid() == 0


def cfg(**kw) -> SandboxConfig:
    base = {"timeout_s": 5.0, "cpu_s": 5, "memory_mb": 256, "max_processes": 8}
    return SandboxConfig(**{**base, **kw})


def run(src: str, **kw) -> SandboxResult:
    return run_python(textwrap.dedent(src), cfg(**kw))


def run_uid(r: SandboxResult) -> int | None:
    """The private uid a root sandbox ran as (None when not running as root)."""
    return next((int(x.split(":")[1]) for x in r.isolation if x.startswith("uid:")), None)


def live_processes_of(uid: int) -> list[int]:
    """Pids of non-zombie processes owned by ``uid`` (zombies are dead, only not yet reaped)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if int(status["Uid"].split()[0]) == uid and not status["State"].strip().startswith("Z"):
            pids.append(int(entry))
    return pids


# --- ordinary programs ------------------------------------------------------------------------
def test_a_passing_program_reports_its_output_and_exit_status():
    r = run("print('hello'); import sys; print('warn', file=sys.stderr)")
    assert r.ok and r.exit_code == 0
    assert r.stdout == "hello\n" and r.stderr == "warn\n"
    assert not r.truncated and not r.timed_out and r.killed_reason is None
    assert {"process-group", "audit-hook", "scratch-cwd", "rlimits"} <= set(r.isolation)
    if ROOT:
        assert run_uid(r) is not None


def test_stdin_is_given_to_the_program():
    r = run_python("import sys; print(sys.stdin.read().upper())", cfg(), stdin="abc")
    assert r.stdout == "ABC\n"


def test_without_stdin_the_program_reads_eof():
    assert run("import sys; print(repr(sys.stdin.read()))").stdout == "''\n"


def test_an_exception_is_a_failed_run_not_a_sandbox_error():
    r = run("raise ValueError('boom')")
    assert r.exit_code == 1 and not r.ok
    assert "ValueError: boom" in r.stderr
    assert r.killed_reason is None


def test_the_program_runs_in_a_fresh_scratch_dir_that_is_removed(tmp_path):
    r = run("import os; print(os.getcwd()); open('out.txt', 'w').write('x')")
    scratch = r.stdout.strip()
    assert os.path.basename(scratch).startswith("sale-ray-sbx-")
    assert not os.path.exists(scratch)


def test_the_environment_is_minimal(monkeypatch):
    monkeypatch.setenv("SALE_RAY_TEST_SECRET", "hunter2")
    r = run("import os; print(sorted(os.environ))")
    assert "SALE_RAY_TEST_SECRET" not in r.stdout
    assert eval(r.stdout) == ["HOME", "LC_ALL", "PATH", "TMPDIR"]


def test_runs_from_several_threads_at_once_do_not_interfere():
    # Ray evaluates in worker threads (asyncio.to_thread); each run has its own uid and namespace.
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: run(f"print({i} * {i})"), range(8)))
    assert [r.stdout for r in results] == [f"{i * i}\n" for i in range(8)]


def test_a_sandbox_that_cannot_start_raises_sandbox_error(monkeypatch):
    monkeypatch.setattr(sandbox, "_interpreters", lambda: ["/nonexistent/python3"])
    with pytest.raises(SandboxError, match="could not start"):
        run("print(1)")


# --- limits -----------------------------------------------------------------------------------
def test_an_infinite_loop_is_killed_at_the_wall_clock_timeout():
    t0 = time.monotonic()
    r = run("while True: pass", timeout_s=1.0)
    assert r.timed_out and r.killed_reason == "timeout" and not r.ok
    assert time.monotonic() - t0 < 3


def test_cpu_time_is_limited_separately_from_wall_time():
    r = run("while True: pass", cpu_s=1, timeout_s=10)
    assert r.killed_reason == "cpu" and not r.timed_out and not r.ok
    assert r.duration_s < 5


def test_a_fork_bomb_is_contained_and_leaves_no_process_behind():
    bomb = """
    import os
    while True:
        try:
            os.fork()
        except OSError:
            pass
    """
    t0 = time.monotonic()
    r = run(bomb, timeout_s=2.0, max_processes=8)
    assert not r.ok and r.killed_reason == "timeout"
    assert time.monotonic() - t0 < 6
    uid = run_uid(r)
    if uid is not None:
        assert live_processes_of(uid) == []
    # The host is fine: it can still start processes, and the next sandbox run works.
    assert subprocess.run(["true"]).returncode == 0
    assert run("print(6 * 7)").stdout == "42\n"


def test_a_child_that_escapes_the_process_group_is_still_killed():
    escape = """
    import os, time
    if os.fork() == 0:
        os.setsid()  # leaves our process group: only the PID namespace / uid sweep reach it
        time.sleep(60)
    print('parent exits')
    """
    t0 = time.monotonic()
    r = run(escape)
    assert r.ok and r.stdout == "parent exits\n"
    assert time.monotonic() - t0 < 3
    uid = run_uid(r)
    if uid is not None:
        assert live_processes_of(uid) == []


def test_process_count_is_limited():
    r = run(
        """
        import os
        n = 0
        try:
            for _ in range(50):
                if os.fork() == 0:
                    import time; time.sleep(5); os._exit(0)
                n += 1
        except OSError as e:
            print('refused after', n, type(e).__name__)
        """,
        max_processes=4,
    )
    assert r.stdout.startswith("refused after ")
    assert int(r.stdout.split()[2]) < 4


def test_a_10_gb_allocation_fails_as_memory():
    r = run("x = bytearray(10 * 1024**3)", memory_mb=256)
    assert not r.ok and r.killed_reason == "memory"
    assert "MemoryError" in r.stderr


def test_huge_stdout_is_capped_and_the_program_killed():
    r = run("while True: print('x' * 1000)", max_output_bytes=4096, timeout_s=5)
    assert r.truncated and r.killed_reason == "output" and not r.ok
    assert len(r.stdout.encode()) + len(r.stderr.encode()) <= 4096
    assert r.duration_s < 2


def test_writing_a_huge_file_hits_the_file_size_limit():
    r = run("open('big.bin', 'wb').write(b'x' * (8 * 1024 * 1024))", max_file_mb=1)
    assert not r.ok and r.killed_reason == "file_size"
    assert "File too large" in r.stderr


# --- network ----------------------------------------------------------------------------------
@pytest.fixture
def listening_server():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(0.3)
    yield srv, srv.getsockname()[1]
    srv.close()


def assert_never_connected(srv: socket.socket) -> None:
    with pytest.raises(TimeoutError):
        srv.accept()


def test_a_network_call_fails_and_never_reaches_the_server(listening_server):
    srv, port = listening_server
    r = run(f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)")
    assert not r.ok and "PermissionError" in r.stderr
    assert_never_connected(srv)


def test_the_network_namespace_stops_code_that_bypasses_the_socket_module(listening_server):
    srv, port = listening_server
    # ctypes goes straight to libc: no audit event fires, so only the namespace can stop it.
    r = run(
        f"""
        import ctypes, socket, struct
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
        addr = struct.pack('<HH4s8x', socket.AF_INET, socket.htons({port}), bytes([127, 0, 0, 1]))
        print(libc.connect(fd, addr, len(addr)), ctypes.get_errno())
        """
    )
    if "netns" not in r.isolation:
        pytest.skip("no network namespace here (needs CAP_SYS_ADMIN or user namespaces)")
    rc, errno_ = r.stdout.split()
    assert rc == "-1" and int(errno_) != 0
    assert_never_connected(srv)


# --- the host's files -------------------------------------------------------------------------
@pytest.mark.skipif(not ROOT, reason="as a normal user the code runs as that user")
def test_a_root_owned_file_outside_the_scratch_dir_cannot_be_deleted(tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    victim = private / "keep.txt"
    victim.write_text("precious")
    r = run(
        f"""
        import os, shutil
        for attempt in (lambda: os.remove({str(victim)!r}),
                        lambda: shutil.rmtree({str(private)!r})):
            try:
                attempt()
                print('deleted')
            except PermissionError:
                print('denied')
        """
    )
    assert r.stdout.split() == ["denied", "denied"]
    assert victim.read_text() == "precious"
