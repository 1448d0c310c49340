"""A secret scan that has a secret to find (issue 13, item 7; RELIABILITY row 11).

A real-looking provider key sits in the variable an agent's ``api_key_env`` names, and a
gateway key in the variable Serve reads its keys from. Then a batch (``backend: openai`` agents
over the scripted upstream, memory snapshots and the response cache on), Serve requests (good,
wrong, missing key; an upstream error) and a failing sandboxed program that prints its
environment all run, and everything they left behind is scanned for both keys: Ray's logs,
error texts and HTTP error bodies, the Parquet results, the memory snapshots, the response
cache and the sandbox's output. The scan must find nothing, and must have scanned something
(files and bytes per place), and a planted control proves it would have found a key.

The keys are built at run time (no secret-looking literal in the repository) and set when this
module is imported: pytest imports every test module before any fixture starts the session's
Ray, and Ray's workers (agent actors, the auctioneer with its sandbox, Serve replicas) inherit
the environment they start with. No key is ever printed: failures name the file, not the key.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx2 as httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sale_ray.config import (
    AgentSpec,
    AuctionConfig,
    CacheConfig,
    PoolSpec,
    SaleConfig,
    ServeConfig,
)
from sale_ray.memory.config import MemoryConfig, StorageConfig
from sale_ray.types import Task
from tests.conftest import own_service, stop_service
from tests.fakes.upstream import ScriptedUpstream

pytestmark = pytest.mark.integration

PROVIDER_ENV = "SALE_RAY_SCAN_PROVIDER_KEY"
GATEWAY_ENV = "SALE_RAY_SCAN_GATEWAY_KEYS"
# Shaped like the real thing ("sk-proj-" + 48 hex; a gateway key), random per session.
os.environ.setdefault(PROVIDER_ENV, "sk-proj-" + secrets.token_hex(24))
os.environ.setdefault(GATEWAY_ENV, "sale-gw-" + secrets.token_hex(20))
PROVIDER_KEY = os.environ[PROVIDER_ENV]
GATEWAY_KEY = os.environ[GATEWAY_ENV]
SECRETS = {"provider key": PROVIDER_KEY.encode(), "gateway key": GATEWAY_KEY.encode()}

# A program that prints every environment variable it can see (its own, and its ancestors'
# through /proc where the sandbox lets it), then fails: a failing run's output is the channel.
ENV_DUMP = """\
import os, sys
print("ENV-DUMP-BEGIN")
for k, v in sorted(os.environ.items()):
    print(f"{k}={v}")
    print(f"{k}={v}", file=sys.stderr)
for pid in PIDS:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            print(f"proc {pid}:", f.read().replace(b"\\0", b" ").decode("utf-8", "replace"))
    except OSError as e:
        print(f"proc {pid}: {type(e).__name__}", file=sys.stderr)
print("ENV-DUMP-END")
raise SystemExit(3)
"""


def env_dump(pids: list[int]) -> str:
    return ENV_DUMP.replace("PIDS", repr(pids))


# --- the scanner ---------------------------------------------------------------------------------
@dataclass
class Scan:
    """What was scanned, per place, and where a secret was found (by name, never by value)."""

    files: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)
    found: list[str] = field(default_factory=list)

    def blob(self, place: str, name: str, data: bytes | str) -> None:
        raw = data.encode("utf-8", "replace") if isinstance(data, str) else data
        self.files[place] = self.files.get(place, 0) + 1
        self.bytes[place] = self.bytes.get(place, 0) + len(raw)
        for what, secret in SECRETS.items():
            if secret in raw:
                self.found.append(f"{what} in {place}: {name}")

    def path(self, place: str, root: Path) -> None:
        """Every file under ``root``; Parquet files also decoded (a value in a compressed or
        dictionary-encoded column need not appear in the raw bytes)."""
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            try:
                data = p.read_bytes()
            except OSError:  # a socket or a file Ray removed meanwhile
                continue
            self.blob(place, str(p), data)
            if p.suffix == ".parquet":
                try:
                    rows = pq.read_table(p).to_pylist()
                except (pa.ArrowException, OSError):
                    rows = []
                self.blob(place, f"{p} (decoded)", json.dumps(rows, default=str))


def test_the_scanner_finds_a_planted_key(tmp_path):
    """The control: a key inside a compressed, dictionary-encoded Parquet column and in a log
    line is found, so an empty result below means absent, not unseen."""
    t = pa.table({"error": [f"upstream said: Bearer {PROVIDER_KEY}"] * 50, "n": list(range(50))})
    pq.write_table(t, tmp_path / "planted.parquet", compression="zstd", use_dictionary=True)
    (tmp_path / "worker.log").write_text(f"auth failed for {GATEWAY_KEY}\n")
    scan = Scan()
    scan.path("planted", tmp_path)
    assert sorted({f.split(" in ")[0] for f in scan.found}) == ["gateway key", "provider key"]
    assert any("(decoded)" in f for f in scan.found)


# --- the run -------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(upstream: ScriptedUpstream, tmp_path: Path) -> SaleConfig:
    def spec(name: str, price: float) -> AgentSpec:
        return AgentSpec(
            name=name,
            backend="openai",
            base_url=upstream.base_url,
            model=f"{name}-m",
            api_key_env=PROVIDER_ENV,
            price_in_per_mtok=price,
            price_out_per_mtok=2 * price,
        )

    return SaleConfig(
        pool=PoolSpec(agents=[spec("cheap", 0.1), spec("dear", 1.0)]),
        # far deadlines: on a loaded box a missed bid would leave the 500 task without the
        # upstream error this scan needs
        auction=AuctionConfig(bid_timeout_s=60, jury_timeout_s=60, execute_timeout_s=120),
        cache=CacheConfig(enabled=True, path=str(tmp_path / "cache"), flush_every=1),
        memory=MemoryConfig(shards=1, embedder="hashing"),
        storage=StorageConfig(snapshot_uri=str(tmp_path / "snapshots")),
        serve=ServeConfig(api_keys_env=GATEWAY_ENV, api_keys_file=None),
    )


def _tasks(path: Path) -> None:
    fence = "```python\n" + env_dump([]) + "```\n"
    rows = [
        {
            "id": "dump-env",
            "prompt": "Write a program that prints its environment.\n" + fence,
            "kind": "code",
            "tests": "assert True\n",
        },
        {"id": "upstream-500", "prompt": "[status:500] fail", "kind": "answer", "expected": "x"},
        {"id": "plain", "prompt": "Capital of France?", "kind": "answer", "expected": "Paris"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


_ERROR_FIELDS = ("error", "execution_error", "evaluation_detail", "notes")


def _workers_hold_the_keys(ray) -> bool:
    @ray.remote(num_cpus=0)
    def held() -> bool:  # the comparison happens in the worker: only a bool comes back
        return os.environ.get(PROVIDER_ENV) == PROVIDER_KEY and (
            os.environ.get(GATEWAY_ENV) == GATEWAY_KEY
        )

    return ray.get(held.remote())


def _serve_requests(config: SaleConfig, scan: Scan, port: int, state: Path) -> None:
    from ray import serve

    from sale_ray.serve.deployment import build_app

    name, prefix = "sale-secret-scan", "/scan"
    config = own_service(config, name, state)  # its ledger and log are scanned too
    serve.run(build_app(config), name=name, route_prefix=prefix)
    try:
        url = f"http://127.0.0.1:{port}{prefix}/v1/chat/completions"
        good = {"authorization": f"Bearer {GATEWAY_KEY}"}
        body = {"model": "sale", "messages": [{"role": "user", "content": "Say hi."}]}
        r = httpx.post(url, json=body, headers=good, timeout=60)
        assert r.status_code == 200, r.text[:500]
        scan.blob("serve responses", "200 sale", r.content)
        wrong = {"authorization": f"Bearer {GATEWAY_KEY[:-4]}beef"}
        for tag, headers in (("401 none", {}), ("403 wrong", wrong)):
            r = httpx.post(url, json=body, headers=headers, timeout=30)
            assert r.status_code in (401, 403), (tag, r.status_code)
            scan.blob("errors", f"serve {tag}", r.content)
        broken = {"model": "cheap", "messages": [{"role": "user", "content": "[status:500]"}]}
        r = httpx.post(url, json=broken, headers=good, timeout=60)
        assert r.status_code >= 500, r.status_code
        scan.blob("errors", "serve upstream 500", r.content)
    finally:
        serve.delete(name)
        stop_service(name)  # flushes the service's ledger and log


def _sandbox(scan: Scan, config: SaleConfig) -> None:
    from sale_ray.evaluators import check_solution, run_python

    # The pytest process holds both keys in its environment: its /proc entry is the target.
    res = run_python(env_dump([os.getpid(), os.getppid()]), config.sandbox)
    out = res.stdout + "\n" + res.stderr
    assert "ENV-DUMP-BEGIN" in res.stdout and res.exit_code != 0, (res.exit_code, res.stderr[-300:])
    scan.blob("sandbox output", "run_python stdout+stderr", out)
    task = Task(id="dump", prompt="Print the environment.", kind="code", tests="assert True\n")
    answer = "```python\n" + env_dump([os.getpid(), os.getppid()]) + "```\n"
    ev = check_solution(task, answer, config.sandbox)
    assert ev.passed is False
    scan.blob("sandbox output", "check_solution evaluation", ev.model_dump_json())


def test_no_key_reaches_logs_errors_results_snapshots_cache_or_sandbox_output(
    ray_cluster, tmp_path
):
    ray = ray_cluster
    assert _workers_hold_the_keys(ray), (
        "Ray started before this module set the keys: the scan would have nothing to find"
    )
    from sale_ray.batch import run_batch
    from sale_ray.serve.deployment import start_serve

    upstream = ScriptedUpstream().start()
    scan = Scan()
    try:
        config = _config(upstream, tmp_path)
        tasks, out = tmp_path / "tasks.jsonl", tmp_path / "out"
        _tasks(tasks)
        res = asyncio.run(run_batch(str(tasks), str(out), config, progress=False))
        scan.blob("errors", "batch result", res.describe())
        rows = {r["task_id"]: r for r in pq.read_table(out / "auctions.parquet").to_pylist()}
        assert set(rows) == {"dump-env", "upstream-500", "plain"}
        # an upstream error text to scan (the agent's HTTP client saw the key go out)
        assert "HTTP 500" in (rows["upstream-500"]["execution_error"] or ""), {
            k: v
            for k, v in rows["upstream-500"].items()
            if "error" in k or k in ("winner", "notes")
        }
        texts = [r.get(k) for r in rows.values() for k in _ERROR_FIELDS]
        scan.blob("errors", "record errors", json.dumps(texts))

        port = start_serve(ServeConfig(port=_free_port()))
        serve_cfg = config.model_copy(update={"memory": MemoryConfig(enabled=False)})
        _serve_requests(serve_cfg, scan, port, tmp_path / "service")
        _sandbox(scan, config)
    finally:
        upstream.stop()

    time.sleep(1.0)  # let Ray's log monitors flush
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    scan.path("ray logs", session / "logs")
    scan.path("parquet results", out)
    scan.path("memory snapshots", tmp_path / "snapshots")
    scan.path("response cache", tmp_path / "cache")
    scan.path("service log and ledger", tmp_path / "service")

    assert scan.found == [], scan.found  # names the file and which key, never the key
    places = [
        "ray logs",
        "errors",
        "parquet results",
        "memory snapshots",
        "response cache",
        "sandbox output",
        "serve responses",
        "service log and ledger",
    ]
    empty = [p for p in places if not scan.files.get(p) or not scan.bytes.get(p)]
    assert empty == [], f"nothing scanned in {empty}: {scan.files}"
    assert list((tmp_path / "snapshots").glob("data/*/*.parquet")), "no snapshot was written"
    assert list((tmp_path / "cache").rglob("*.parquet")), "the response cache wrote nothing"
