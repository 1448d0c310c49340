"""A real `ray start` cluster on 127.0.0.1: a head and a second raylet with different custom
resources. Agents land on the node that holds their quota resource, and the batch job runs
under `ray job submit` (RAY_NOTES pitfalls: loopback env, explicit RAY_AUTH_MODE on server and
client, a private --temp-dir, and only our own processes stopped — never `ray stop`)."""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env():
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (loopback only) also means "single node": Ray refuses
    # a second raylet under it. Without it Ray's ports listen on every interface, so this
    # cluster runs with token auth, on the server and on every client alike.
    e = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token")
    for k in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
        e.pop(k, None)
    return e


def our_pids(temp_dir):
    """Processes whose command line names our private temp dir (our cluster, nobody else's)."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            try:
                cmd = Path(f"/proc/{d}/cmdline").read_bytes()
            except OSError:
                continue
            if temp_dir.encode() in cmd:
                pids.append(int(d))
    return pids


@pytest.fixture(scope="module")
def two_nodes():
    temp = tempfile.mkdtemp(prefix="srmn", dir="/tmp")  # short: socket paths <= 107 bytes
    port, dash = free_port(), free_port()
    ray = str(BIN / "ray")
    head = [
        ray,
        "start",
        "--head",
        f"--port={port}",
        "--node-ip-address=127.0.0.1",
        f"--temp-dir={temp}",
        "--num-cpus=1",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        '--resources={"quota_a": 4}',
        "--object-store-memory=100000000",
        "--disable-usage-stats",
        # every node's dashboard agent defaults to port 52365: another cluster on the
        # machine would make ours fail to start, and jobs answer "No available agent"
        f"--dashboard-agent-listen-port={free_port()}",
    ]
    worker = [
        ray,
        "start",
        f"--address=127.0.0.1:{port}",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=1",
        '--resources={"quota_b": 4}',
        "--object-store-memory=100000000",
        f"--dashboard-agent-listen-port={free_port()}",
    ]
    try:
        subprocess.run(head, env=env(), check=True, capture_output=True, timeout=120)
        subprocess.run(worker, env=env(), check=True, capture_output=True, timeout=120)
        yield {"gcs": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dash}", "temp": temp}
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in our_pids(temp):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            time.sleep(1.0)


POOL = {
    "pool": {
        "agents": [
            {
                "name": "on-a",
                "backend": "scripted",
                "model": "s",
                "resources": {"custom": {"quota_a": 1}},
                "price_in_per_mtok": 0.1,
                "price_out_per_mtok": 0.1,
            },
            {
                "name": "on-b",
                "backend": "scripted",
                "model": "s",
                "resources": {"custom": {"quota_b": 1}},
                "price_in_per_mtok": 0.3,
                "price_out_per_mtok": 0.3,
            },
        ]
    }
}

PLACEMENT = """
import asyncio, json, ray
from sale_ray.config import SaleConfig
from sale_ray.runtime import start_agents
ray.init(address="{gcs}", log_to_driver=False)
pool = asyncio.run(start_agents(SaleConfig.model_validate({pool})))
nodes = {{n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}}
print(json.dumps({{name: sorted(k for k in nodes[i["node_id"]] if k.startswith("quota"))
                  for name, i in pool.infos.items()}}))
"""


def test_agents_land_on_the_node_holding_their_quota_resource(two_nodes):
    code = PLACEMENT.format(gcs=two_nodes["gcs"], pool=repr(POOL))
    r = subprocess.run(
        [sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-3000:]
    placed = json.loads(r.stdout.strip().splitlines()[-1])
    assert placed == {"on-a": ["quota_a"], "on-b": ["quota_b"]}


def test_the_batch_job_runs_under_ray_job_submit(two_nodes, tmp_path):
    cfg = tmp_path / "pool.yaml"
    cfg.write_text(yaml.safe_dump(POOL))
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(
        "".join(
            json.dumps({"id": f"j{i}", "prompt": f"task {i}", "kind": "answer", "expected": "x"})
            + "\n"
            for i in range(50)
        )
    )
    out = tmp_path / "out"
    cmd = [
        str(BIN / "ray"),
        "job",
        "submit",
        "--address",
        two_nodes["dashboard"],
        "--",
        sys.executable,
        str(ROOT / "jobs/run_auctions.py"),
        "--tasks",
        str(tasks),
        "--out",
        str(out),
        "--config",
        str(cfg),
        "--no-progress",
    ]
    for _ in range(10):  # the head's dashboard agent may still be starting
        r = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
        if "No available agent" not in r.stdout + r.stderr:
            break
        time.sleep(3)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "succeeded" in r.stdout and "== sale-ray summary ==" in r.stdout
    table = pq.read_table(out / "auctions.parquet")
    assert sorted(table.column("task_id").to_pylist()) == sorted(f"j{i}" for i in range(50))
    assert set(table.column("winner").to_pylist()) <= {"on-a", "on-b"}
