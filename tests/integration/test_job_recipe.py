"""The README's `ray job submit` recipe works as written on a fresh head node.

The commands are the fenced block after ``<!-- recipe:ray-job -->`` in README.md, read here, so
the doc and this test cannot drift. The test changes only what must differ on a shared machine
(each of these must be in the block, so a rewording fails here first): the ports, the head's
``--temp-dir`` and ``--out`` become private ones, and ``cluster/pools/local.yaml`` becomes the
scripted pool (no model weights; the code path is the same).

The *fresh head node* is a copy of this checkout (its tracked and untracked files, a ``.git``,
an old ``runs/``) whose ``.venv`` is a Python that sees this virtualenv's dependencies but not its
editable install of sale_ray — as a cluster image has ray and the dependencies but not our code —
and the PATH before the recipe holds no Python with ray. So the job imports ``sale_ray`` only from
what the recipe ships. Only this test's own Ray processes are stopped (never ``ray stop``: it
stops every Ray on the machine), found by the private folder in their command line and as their
children.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- recipe:ray-job -->"


def recipe(readme: Path = ROOT / "README.md") -> str:
    """The shell block that follows the marker."""
    text = readme.read_text()
    assert MARKER in text, f"README.md lost its {MARKER} block"
    m = re.match(r"\s*```(?:bash|sh)\n(.*?)\n```", text.split(MARKER, 1)[1], re.S)
    assert m, f"no ```bash block right after {MARKER}"
    return m.group(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def privately(block: str, root: Path) -> tuple[str, dict]:
    """The block with this test's ports, temp dir, output and pool; and those values."""
    gcs, dash, agent = free_port(), free_port(), free_port()
    at = {"dashboard": f"http://127.0.0.1:{dash}", "temp": root / "r", "out": root / "out"}
    subs = {
        "--port=6390": f"--port={gcs}",
        "--dashboard-port=8265": f"--dashboard-port={dash}",
        "http://127.0.0.1:8265": at["dashboard"],
        "--dashboard-agent-listen-port=52400": f"--dashboard-agent-listen-port={agent}",
        "--temp-dir=/tmp/sr-head": f"--temp-dir={at['temp']}",
        "--out /tmp/run1": f"--out {at['out']}",
        "cluster/pools/local.yaml": "cluster/pools/scripted.yaml",
    }
    for old, new in subs.items():
        assert old in block, f"the README recipe no longer says {old!r}; update this test"
        block = block.replace(old, new)
    return block, at


def copy_checkout(dst: Path) -> None:
    """This checkout as a user's clone has it: tracked and untracked files (not the ignored
    ones), a .git, and an earlier run's output under runs/."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        if (ROOT / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dst / rel)
    (dst / ".git").mkdir()
    (dst / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (dst / "runs" / "old").mkdir(parents=True)
    (dst / "runs" / "old" / "auctions.parquet").write_bytes(os.urandom(1 << 20))


def head_python(venv: Path) -> None:
    """A virtualenv that sees this interpreter's site-packages as a plain path: the
    dependencies import, the editable install of sale_ray (a .pth hook) does not run."""
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "_head_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    ray = venv / "bin" / "ray"  # the console script pip would write
    ray.write_text(f"#!{py}\nimport sys\nfrom ray.scripts.scripts import main\nsys.exit(main())\n")
    ray.chmod(0o755)


def our_processes(root: Path) -> set[int]:
    """Processes whose command line names ``root``, and their descendants (Ray's workers
    retitle themselves "ray::IDLE", so they are found as the raylet's children)."""
    procs = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            try:
                cmd = Path(f"/proc/{d}/cmdline").read_bytes()
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            procs[int(d)] = (cmd, ppid)
    ours = {p for p, (cmd, _) in procs.items() if str(root).encode() in cmd}
    while kids := {p for p, (_, ppid) in procs.items() if ppid in ours} - ours:
        ours |= kids
    return ours


def stop_our_cluster(root: Path) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in our_processes(root):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(1.0)


@pytest.fixture()
def fresh_head():
    root = Path(tempfile.mkdtemp(prefix="srj", dir="/tmp"))  # short: socket paths <= 107 bytes
    clone = root / "c"
    try:
        copy_checkout(clone)
        head_python(clone / ".venv")
        probe = [str(clone / ".venv/bin/python"), "-c", "import sale_ray"]
        alone = subprocess.run(probe, cwd=root, capture_output=True, text=True)
        assert "No module named 'sale_ray'" in alone.stderr, (
            "this interpreter's site-packages hold sale_ray itself: the head would not be fresh"
        )
        yield root, clone
    finally:
        stop_our_cluster(root)
        shutil.rmtree(root, ignore_errors=True)


def recipe_env() -> dict:
    """The shell a user opens: no virtualenv active, no Ray settings, no Python with ray on
    the PATH (this test's own virtualenv is taken off it)."""
    ours = {str(ROOT / ".venv" / "bin"), str(Path(sys.executable).parent)}
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p not in ours]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("RAY_") and k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    }
    return dict(env, PATH=os.pathsep.join(path))


def test_the_readme_job_recipe_runs_as_written_on_a_fresh_head(fresh_head):
    root, clone = fresh_head
    block, at = privately(recipe(), root)
    started = time.monotonic()
    r = subprocess.run(
        ["bash", "-e", "-c", block],
        cwd=clone,
        env=recipe_env(),
        capture_output=True,
        text=True,
        timeout=420,
    )
    took = time.monotonic() - started
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    job = re.search(r"Job '(raysubmit_\w+)' succeeded", log)
    assert job, log[-4000:]
    ask = (
        "from ray.job_submission import JobSubmissionClient as C; "
        f"print(C({at['dashboard']!r}).get_job_status({job.group(1)!r}).value)"
    )
    status = subprocess.run(
        [str(clone / ".venv/bin/python"), "-c", ask],
        cwd=root,
        env=dict(recipe_env(), RAY_AUTH_MODE="disabled"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.stdout.strip() == "SUCCEEDED", status.stdout + status.stderr[-2000:]
    assert "== sale-ray summary ==" in log and "written 20" in log

    table = pq.read_table(at["out"] / "auctions.parquet")
    assert sorted(table.column("task_id").to_pylist()) == sorted(
        f"HumanEval/{i}" for i in range(20)
    )
    pool = yaml.safe_load((ROOT / "cluster/pools/scripted.yaml").read_text())
    assert set(table.column("winner").to_pylist()) <= {a["name"] for a in pool["pool"]["agents"]}

    # what travelled: the project, not the virtualenv, the history or old runs
    files = at["temp"] / "session_latest/runtime_resources/working_dir_files"
    (shipped,) = [p for p in files.iterdir() if p.is_dir()]
    assert (shipped / "sale_ray" / "batch.py").is_file()
    assert (shipped / "jobs" / "run_auctions.py").is_file()
    assert not {".venv", ".git", "runs"} & {p.name for p in shipped.iterdir()}
    size = sum(f.stat().st_size for f in shipped.rglob("*") if f.is_file())
    print(f"recipe: job succeeded in {took:.0f} s, shipped {size / 2**20:.1f} MiB unpacked")
