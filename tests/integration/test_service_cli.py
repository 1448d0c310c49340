"""``sale-ray up`` / ``status`` / ``run`` / ``down`` as a user types them, against a real
``ray start`` head node (slow: it starts a Ray cluster of its own).

The story: ``ray start``, then ``sale-ray up`` finds that cluster by itself and starts a detached
service of two scripted agents; ``sale-ray status`` shows them alive; ``sale-ray run`` attaches
to the service (it starts no agents of its own), and the service counts, bills and logs those
auctions; an agent actor killed behind the service's back is restarted by Ray and shows alive
again; ``sale-ray down`` stops everything, after which ``status`` says there is nothing to show,
and the ledger and the log left behind agree to the cent.

The machine is shared with other engineers' Ray clusters, so (RAY_NOTES.md) the head has its
own ports on 127.0.0.1 and its own temp dir, and only this test's processes are stopped at the
end — never ``ray stop`` (nor ``sale-ray down --stop-ray``), which stop every Ray on the machine.
``RAY_TMPDIR`` points into the private folder, so Ray's address file — how ``sale-ray up`` finds
a ``ray start`` cluster without being told — is written there, where only this test's commands
look; the other commands are given ``RAY_ADDRESS``, as a job on a cluster is.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]
BIN = Path(sys.executable).parent
SALE_RAY = str(BIN / "sale-ray")
NAME = "clitest"
AGENTS = {"cheap": 0.1, "dear": 0.8}  # $/Mtok in and out
N_TASKS = 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def our_processes(root: Path) -> set[int]:
    """Processes whose command line names ``root``, and their descendants (Ray's workers
    retitle themselves "ray::...", so they are found as the raylet's children)."""
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


def ray_env(root: Path, address: str | None = None) -> dict[str, str]:
    """A user's shell for this cluster: loopback sockets, auth and usage stats set explicitly,
    Ray's temp dir (and so its address file) in ``root``; ``RAY_ADDRESS`` only if given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        RAY_TMPDIR=str(root),
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_AUTH_MODE="disabled",
    )
    if address:
        env["RAY_ADDRESS"] = address
    return env


@pytest.fixture()
def head():
    """A ``ray start`` head on 127.0.0.1 with private ports and temp dir; yields (root, GCS
    address). Stopped by killing only its own processes."""
    root = Path(tempfile.mkdtemp(prefix="srsc", dir="/tmp"))  # short: socket paths <= 107 bytes
    port = free_port()
    cmd = [
        str(BIN / "ray"),
        "start",
        "--head",
        f"--port={port}",
        "--node-ip-address=127.0.0.1",
        f"--temp-dir={root / 'ray'}",
        "--num-cpus=2",
        "--object-store-memory=100000000",
        "--include-dashboard=false",
        "--disable-usage-stats",
        # defaults every head shares (52365, 10001): another cluster there would stop ours
        f"--dashboard-agent-listen-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
    ]
    try:
        r = subprocess.run(cmd, env=ray_env(root), capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        yield root, f"127.0.0.1:{port}"
    finally:
        stop_our_cluster(root)
        shutil.rmtree(root, ignore_errors=True)


def sale_ray(*args: str, env: dict, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SALE_RAY, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def said(r: subprocess.CompletedProcess) -> str:
    return f"exit {r.returncode}\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}"


def status_json(env: dict, cwd: Path) -> tuple[int, dict]:
    r = sale_ray("status", "--name", NAME, "--json", env=env, cwd=cwd)
    assert r.returncode in (0, 3), said(r)  # 3: some agent is not alive (yet)
    return r.returncode, json.loads(r.stdout)


# Ray's view of the service's actors, through the public API plus the GCS actor table (for the
# worker pid and restart count that prove an actor really died and came back). argv: an agent
# to report on ("actor": null once it is gone for good), and "kill" to kill it (Ray may
# restart it).
PROBE = """
import json, os, sys
import ray
from ray._private import state
ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
out = {"named": sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                       if a["namespace"] == "sale-ray")}
if len(sys.argv) > 1:
    try:
        actor = ray.get_actor(sys.argv[1], namespace="sale-ray")
    except ValueError:  # gone for good
        actor = out["actor"] = None
    else:
        info = state.actors(actor_id=actor._actor_id.hex())
        out["actor"] = {"pid": info["Pid"], "restarts": info["NumRestarts"],
                        "state": info["State"]}
    if actor is not None and sys.argv[2:] == ["kill"]:
        ray.kill(actor, no_restart=False)
print(json.dumps(out))
"""


def probe(env: dict, cwd: Path, *args: str) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, said(r)
    return json.loads(r.stdout.strip().splitlines()[-1])


def write_inputs(tmp: Path) -> tuple[Path, Path, list[str]]:
    pool = [
        {
            "name": name,
            "backend": "scripted",
            "model": "scripted",
            "price_in_per_mtok": price,
            "price_out_per_mtok": price,
            "scripted": {"quality": 0.6, "seed": i},
        }
        for i, (name, price) in enumerate(AGENTS.items())
    ]
    cfg = tmp / "cfg.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "pool": {"agents": pool},
                "memory": {"enabled": False},
                "service": {
                    "name": NAME,
                    "log_uri": str(tmp / "log"),
                    "ledger_uri": str(tmp / "ledger.json"),
                    "flush_s": 0.2,
                },
            }
        )
    )
    ids = [f"cli-{i}" for i in range(N_TASKS)]
    tasks = tmp / "tasks.jsonl"
    tasks.write_text(
        "".join(
            json.dumps({"id": t, "prompt": f"What is {i} + {i}?", "kind": "answer"}) + "\n"
            for i, t in enumerate(ids)
        )
    )
    return cfg, tasks, ids


def test_up_status_run_restart_and_down_from_the_command_line(head, tmp_path):
    root, address = head
    cfg, tasks, ids = write_inputs(tmp_path)
    found = ray_env(root)  # no RAY_ADDRESS: `sale-ray up` finds the `ray start` cluster itself
    told = ray_env(root, address)
    try:
        # 1. up: the service's agents, each alive
        r = sale_ray("up", "--config", str(cfg), "--name", NAME, env=found, cwd=tmp_path)
        assert r.returncode == 0, said(r)
        assert "starting a Ray head node" not in r.stderr, said(r)  # it found ours
        for agent in AGENTS:
            assert re.search(rf"^\s*agent {agent}\s+alive$", r.stdout, re.M), said(r)
        assert f"service {NAME!r} is up" in r.stdout

        # 2. status --json: the same agents, nothing done yet
        rc, st = status_json(told, tmp_path)
        assert rc == 0 and st["name"] == NAME
        assert st["agents"] == dict.fromkeys(AGENTS, "alive")
        assert st["counts"]["admitted"] == st["counts"]["finished"] == 0
        assert st["spent_usd"] == 0

        # 3. a batch run attaches to the service, which counts and bills its auctions
        out = tmp_path / "out"
        run = ["run", "--tasks", str(tasks), "--out", str(out), "--config", str(cfg)]
        r = sale_ray(*run, "--no-progress", env=told, cwd=tmp_path)
        assert r.returncode == 0, said(r)
        assert f"through service {NAME!r}" in r.stdout, said(r)
        assert f"written {N_TASKS}" in r.stdout, said(r)
        table = pq.read_table(out / "auctions.parquet")
        assert sorted(table.column("task_id").to_pylist()) == sorted(ids)
        assert set(table.column("winner").to_pylist()) <= set(AGENTS)
        rc, st = status_json(told, tmp_path)
        assert rc == 0
        assert st["counts"]["finished"] == st["counts"]["admitted"] == N_TASKS
        run_cost = sum(table.column("cost_usd").to_pylist())
        assert run_cost > 0 and st["spent_usd"] == pytest.approx(run_cost)

        # 4. an agent actor killed behind the service's back is restarted by Ray
        victim = f"{NAME}/agent/dear"
        before = probe(told, tmp_path, victim, "kill")["actor"]
        assert before["state"] == "ALIVE"
        deadline = time.monotonic() + 90
        while True:
            rc, st = status_json(told, tmp_path)
            now = probe(told, tmp_path, victim)["actor"]
            if rc == 0 and now and now["restarts"] > before["restarts"]:
                break
            assert time.monotonic() < deadline, f"not back: {st['agents']}, {now}"
            time.sleep(1.0)
        assert st["agents"] == dict.fromkeys(AGENTS, "alive")
        assert now["state"] == "ALIVE" and now["pid"] != before["pid"]
        assert st["counts"]["finished"] == N_TASKS  # the auctioneer did not restart

        # 5. down: nothing left running; the ledger and the log agree
        r = sale_ray("down", "--name", NAME, env=told, cwd=tmp_path)
        assert r.returncode == 0, said(r)
        assert f"service {NAME!r} stopped ({len(AGENTS)} agents)" in r.stdout, said(r)
        assert [n for n in probe(told, tmp_path)["named"] if n.startswith(f"{NAME}/")] == []
        r = sale_ray("status", "--name", NAME, env=told, cwd=tmp_path)
        assert r.returncode == 2, said(r)  # a user error: one line, no traceback
        assert "Traceback" not in r.stderr, said(r)
        assert r.stderr.strip().splitlines()[-1] == (
            f"sale-ray: error: no sale-ray service {NAME!r} is running on this Ray cluster "
            f"(start one with `sale-ray up --name {NAME}`)"
        ), said(r)

        ledger = json.loads((tmp_path / "ledger.json").read_text())
        log = ds.dataset(tmp_path / "log", format="parquet").to_table()
        assert sorted(log.column("task_id").to_pylist()) == sorted(ids)
        assert sorted(log.column("auction_id").to_pylist()) == sorted(
            table.column("auction_id").to_pylist()
        )
        logged = sum(log.column("cost_usd").to_pylist())
        assert ledger["run_usd"] == pytest.approx(logged)  # every dollar spent is logged
        assert logged == pytest.approx(run_cost)
        assert ledger["agents"].keys() <= set(AGENTS)

        # discovery stayed private: Ray's machine-wide address file never named our cluster
        shared = Path("/tmp/ray/ray_current_cluster")
        assert not (shared.exists() and shared.read_text().strip() == address)
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):  # if still up; the cluster goes next
            sale_ray("down", "--name", NAME, env=told, cwd=tmp_path, timeout=120)
