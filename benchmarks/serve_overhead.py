"""What the online endpoint costs on top of the model, against what Ray Serve alone costs.

    python benchmarks/serve_overhead.py [--json] [--requests 300] [--concurrency 8] [--seconds 5]

All in one run, on 127.0.0.1, one keep-alive HTTP client per target, requests interleaved
round-robin so that machine noise hits every target alike:

* ``direct``       the scripted zero-latency OpenAI-compatible upstream, called directly;
* ``passthrough``  the same request through sale-ray (Serve proxy → gateway replica → agent
                   actor → upstream), model = the agent's name;
* ``serve_echo``   a trivial FastAPI echo as a Serve deployment;
* ``uvicorn_echo`` the same echo app under plain uvicorn (its own process, like Serve's proxy).

``p50_overhead_ms`` = p50(passthrough) − p50(direct) (p99 likewise); ``serve_floor_p50_ms`` =
p50(serve_echo) − p50(uvicorn_echo); the goal is overhead p50 ≤ 1.5 × the floor. ``rps``:
passthrough requests per second with ``--concurrency`` clients for ``--seconds``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx2 as httpx

KEY = "bench-key-" + os.urandom(12).hex()
BODY = {
    "model": "bench-m",
    "messages": [{"role": "user", "content": "ping"}],
    "max_tokens": 16,
    "temperature": 0,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, text=True)


def _start_upstream() -> tuple[subprocess.Popen[str], int]:
    proc = _spawn(["-m", "sale_ray.serve.scripted", "--port", "0"])
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("PORT "):
        raise RuntimeError("scripted upstream did not start")
    return proc, int(line.split()[1])


def _start_uvicorn_echo() -> tuple[subprocess.Popen[str], int]:
    port = _free_port()
    proc = _spawn(
        [
            "-m",
            "uvicorn",
            "--factory",
            "sale_ray.serve.deployment:echo_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.post(f"http://127.0.0.1:{port}/echo", content=b"{}", timeout=1)
            return proc, port
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError("uvicorn echo did not start")


def _deploy(upstream_port: int, keys_file: str) -> int:
    from ray import serve

    from sale_ray.config import AgentSpec, PoolSpec, SaleConfig, ServeConfig
    from sale_ray.serve.deployment import Echo, build_app, start_serve

    port = start_serve(ServeConfig(port=_free_port()))
    config = SaleConfig(
        pool=PoolSpec(
            agents=[
                AgentSpec(
                    name="bench",
                    backend="openai",
                    model="bench-m",
                    max_concurrency=64,
                    base_url=f"http://127.0.0.1:{upstream_port}/v1",
                    price_in_per_mtok=0.1,
                    price_out_per_mtok=0.2,
                )
            ]
        ),
        serve=ServeConfig(
            api_keys_env=None,
            api_keys_file=keys_file,
            max_ongoing_requests=64,
            max_queued_requests=1024,
        ),
    )
    serve.run(build_app(config), name="bench", route_prefix="/bench")
    serve.run(Echo.bind(), name="echo", route_prefix="/echo-app")
    return port


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def _latencies(targets: dict[str, tuple[str, dict, dict]], n: int) -> dict[str, list[float]]:
    clients = {name: httpx.Client(timeout=30) for name in targets}
    out: dict[str, list[float]] = {name: [] for name in targets}
    try:
        for i in range(n + 30):  # the first 30 rounds warm connections and code paths
            for name, (url, body, headers) in targets.items():
                t0 = time.perf_counter()
                r = clients[name].post(url, json=body, headers=headers)
                dt = time.perf_counter() - t0
                if r.status_code != 200:
                    raise RuntimeError(f"{name}: HTTP {r.status_code}: {r.text[:200]}")
                if i >= 30:
                    out[name].append(dt * 1000)
    finally:
        for c in clients.values():
            c.close()
    return out


def _throughput(url: str, headers: dict, concurrency: int, seconds: float) -> tuple[float, int]:
    ok, errors = [0], [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker() -> None:
        with httpx.Client(timeout=30) as c:
            while time.monotonic() < stop:
                r = c.post(url, json={**BODY, "model": "bench"}, headers=headers)
                with lock:
                    if r.status_code == 200:
                        ok[0] += 1
                    else:
                        errors[0] += 1

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ok[0] / (time.monotonic() - t0), errors[0]


def run(requests: int, concurrency: int, seconds: float) -> dict:
    import ray

    from sale_ray.runtime import connect

    procs: list[subprocess.Popen[str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "keys"
        keys.write_text(KEY + "\n")
        try:
            up, up_port = _start_upstream()
            procs.append(up)
            uv, uv_port = _start_uvicorn_echo()
            procs.append(uv)
            started = connect()
            serve_port = _deploy(up_port, str(keys))
            auth = {"authorization": f"Bearer {KEY}"}
            base = f"http://127.0.0.1:{serve_port}"
            targets = {
                "direct": (f"http://127.0.0.1:{up_port}/v1/chat/completions", BODY, {}),
                "passthrough": (
                    f"{base}/bench/v1/chat/completions",
                    {**BODY, "model": "bench"},
                    auth,
                ),
                "serve_echo": (f"{base}/echo-app/echo", BODY, {}),
                "uvicorn_echo": (f"http://127.0.0.1:{uv_port}/echo", BODY, {}),
            }
            lat = _latencies(targets, requests)
            rps, errors = _throughput(targets["passthrough"][0], auth, concurrency, seconds)
        finally:
            for p in procs:
                p.terminate()
                p.wait(10)
            if ray.is_initialized():
                from ray import serve

                serve.shutdown()
                if started:
                    ray.shutdown()

    p50 = {k: statistics.median(v) for k, v in lat.items()}
    p99 = {k: _pct(v, 0.99) for k, v in lat.items()}
    overhead50 = p50["passthrough"] - p50["direct"]
    floor50 = p50["serve_echo"] - p50["uvicorn_echo"]
    return {
        "rps": round(rps, 1),
        "p50_overhead_ms": round(overhead50, 3),
        "p99_overhead_ms": round(p99["passthrough"] - p99["direct"], 3),
        "serve_floor_p50_ms": round(floor50, 3),
        "overhead_over_floor": round(overhead50 / floor50, 3) if floor50 > 0 else None,
        "goal_met": floor50 > 0 and overhead50 <= 1.5 * floor50,
        "p50_ms": {k: round(v, 3) for k, v in p50.items()},
        "p99_ms": {k: round(v, 3) for k, v in p99.items()},
        "requests": requests,
        "concurrency": concurrency,
        "throughput_errors": errors,
        "cpus": os.cpu_count(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--requests", type=int, default=300, help="timed requests per target")
    p.add_argument("--concurrency", type=int, default=8, help="clients for the rps phase")
    p.add_argument("--seconds", type=float, default=5.0, help="length of the rps phase")
    args = p.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    res = run(args.requests, args.concurrency, args.seconds)
    if args.json:
        print(json.dumps(res))
        return
    print(
        f"passthrough overhead p50 {res['p50_overhead_ms']:.2f} ms, "
        f"p99 {res['p99_overhead_ms']:.2f} ms; Serve's floor p50 "
        f"{res['serve_floor_p50_ms']:.2f} ms (ratio {res['overhead_over_floor']}, goal <= 1.5: "
        f"{'met' if res['goal_met'] else 'NOT met'}); {res['rps']} req/s at concurrency "
        f"{res['concurrency']}"
    )
    for k in res["p50_ms"]:
        print(f"  {k:<13} p50 {res['p50_ms'][k]:8.2f} ms   p99 {res['p99_ms'][k]:8.2f} ms")


if __name__ == "__main__":
    main()
