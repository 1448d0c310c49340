"""What the online endpoint costs on top of the model, against what Ray Serve alone costs.

    python benchmarks/serve_overhead.py [--json] [--requests 300] [--concurrency 8] [--seconds 5]
        [--auction-requests 200] [--auction-clients 10] [--auction-rounds 3]

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

The auction path (``model: sale``), in the same run: a second app whose pool is two agents
(``cheap`` 0.1/0.2 and ``dear`` 1.0/2.0 $/Mtok, ``backend: openai``) on the same scripted
upstream, against the same auction in this process without Serve or Ray — the same
:class:`~sale_ray.serve.gateway.Gateway` over the same agent specs (``InProcessAgent``), its
``chat`` called directly on an event loop of its own:

* ``auction_inprocess_p50_ms``: p50 of the in-process auction, one request at a time;
* ``auction_p50_overhead_ms`` = p50(through Serve) − ``auction_inprocess_p50_ms`` (requests
  interleaved one for one, so that noise hits both alike); p99 likewise;
* ``_c10`` keys: the same with ``--auction-clients`` (10) clients at once, Serve and in-process
  phases alternating for ``--auction-rounds`` rounds.
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

ROOT = Path(__file__).resolve().parents[1]
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
    """A Python process in the repo root (so ``-m tests.fakes.upstream`` imports)."""
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, text=True, cwd=ROOT)


def _start_upstream() -> tuple[subprocess.Popen[str], int]:
    proc = _spawn(["-m", "tests.fakes.upstream", "--port", "0"])
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


AUCTION_BODY = {"model": "sale", "messages": [{"role": "user", "content": "ping"}]}


def auction_config(upstream_port: int, keys_file: str | None):
    """The auction app's config: two agents on the scripted upstream (as the Serve tests)."""
    from sale_ray.config import AgentSpec, AuctionConfig, PoolSpec, SaleConfig, ServeConfig

    def spec(name: str, price: float) -> AgentSpec:
        return AgentSpec(
            name=name,
            backend="openai",
            model=f"{name}-m",
            max_concurrency=64,
            base_url=f"http://127.0.0.1:{upstream_port}/v1",
            price_in_per_mtok=price,
            price_out_per_mtok=2 * price,
        )

    return SaleConfig(
        pool=PoolSpec(agents=[spec("cheap", 0.1), spec("dear", 1.0)]),
        auction=AuctionConfig(bid_timeout_s=30, jury_timeout_s=30, execute_timeout_s=30),
        serve=ServeConfig(
            api_keys_env=None,
            api_keys_file=keys_file,
            max_ongoing_requests=64,
            max_queued_requests=1024,
        ),
    )


class InProcessAuction:
    """The gateway of the auction app in this process (no Serve, no Ray, no HTTP in front):
    real agents over the same upstream, on an event loop in a thread of its own."""

    def __init__(self, config) -> None:
        import asyncio

        from sale_ray.agents.agent import Agent
        from sale_ray.batch import make_evaluator
        from sale_ray.serve.gateway import Gateway
        from sale_ray.serve.handles import InProcessAgent
        from sale_ray.serve.wire import ChatCompletionRequest

        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        agents = {a.name: Agent(a, config) for a in config.pool.agents}
        for a in agents.values():
            self.call(a.start())
        self.gateway = Gateway(
            {n: InProcessAgent(a) for n, a in agents.items()},
            {n: a.price_out for n, a in agents.items()},
            config,
            evaluate=make_evaluator(config),
        )
        self.agents = agents
        self.request = ChatCompletionRequest.model_validate(AUCTION_BODY)

    def call(self, coro):
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def one(self) -> float:
        t0 = time.perf_counter()
        await self.gateway.chat(self.request, 30.0)
        return (time.perf_counter() - t0) * 1000

    def sequential(self) -> float:
        return self.call(self.one())

    def concurrent(self, clients: int, each: int) -> list[float]:
        import asyncio

        async def client() -> list[float]:
            return [await self.one() for _ in range(each)]

        async def all_clients() -> list[float]:
            got = await asyncio.gather(*(client() for _ in range(clients)))
            return [x for g in got for x in g]

        return self.call(all_clients())

    def close(self) -> None:
        for a in self.agents.values():
            try:
                self.call(a.stop())
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def _deploy(upstream_port: int, keys_file: str) -> int:
    from ray import serve

    from sale_ray.config import AgentSpec, PoolSpec, SaleConfig, ServeConfig
    from sale_ray.serve.deployment import Echo, build_app, start_serve
    from sale_ray.service.config import ServiceConfig

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
    # each app its own service (two pools cannot share one), its state in a temporary folder
    state = Path(tempfile.mkdtemp(prefix="sr-overhead-"))

    def own(cfg: SaleConfig, name: str) -> SaleConfig:
        svc = ServiceConfig(
            name=name, log_uri=str(state / name / "log"), ledger_uri=str(state / name / "l.json")
        )
        return cfg.model_copy(update={"service": svc})

    serve.run(build_app(own(config, "bench")), name="bench", route_prefix="/bench")
    serve.run(Echo.bind(), name="echo", route_prefix="/echo-app")
    auction = own(auction_config(upstream_port, keys_file), "bench-sale")
    serve.run(build_app(auction), name="sale", route_prefix="/sale")
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


def _auction_latencies(
    url: str, headers: dict, inproc: InProcessAuction, n: int
) -> tuple[list[float], list[float]]:
    """One request at a time, alternating Serve and in-process (after 20 warm-up rounds)."""
    serve_ms: list[float] = []
    local_ms: list[float] = []
    with httpx.Client(timeout=60) as c:
        for i in range(n + 20):
            t0 = time.perf_counter()
            r = c.post(url, json=AUCTION_BODY, headers=headers)
            dt = (time.perf_counter() - t0) * 1000
            if r.status_code != 200:
                raise RuntimeError(f"auction via Serve: HTTP {r.status_code}: {r.text[:200]}")
            local = inproc.sequential()
            if i >= 20:
                serve_ms.append(dt)
                local_ms.append(local)
    return serve_ms, local_ms


def _auction_concurrent(
    url: str, headers: dict, inproc: InProcessAuction, clients: int, each: int, rounds: int
) -> tuple[list[float], list[float], int]:
    """``clients`` at once, ``each`` requests per client, Serve then in-process, per round."""
    serve_ms: list[float] = []
    local_ms: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def worker() -> None:
        with httpx.Client(timeout=60) as c:
            for _ in range(each):
                t0 = time.perf_counter()
                r = c.post(url, json=AUCTION_BODY, headers=headers)
                dt = (time.perf_counter() - t0) * 1000
                with lock:
                    if r.status_code == 200:
                        serve_ms.append(dt)
                    else:
                        errors[0] += 1

    for _ in range(rounds):
        threads = [threading.Thread(target=worker) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        local_ms += inproc.concurrent(clients, each)
    return serve_ms, local_ms, errors[0]


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


def run(
    requests: int,
    concurrency: int,
    seconds: float,
    auction_requests: int,
    auction_clients: int,
    auction_rounds: int,
    auction_each: int,
) -> dict:
    import ray

    from sale_ray.runtime import connect

    procs: list[subprocess.Popen[str]] = []
    inproc: InProcessAuction | None = None
    started = False
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
            inproc = InProcessAuction(auction_config(up_port, None))
            sale_url = f"{base}/sale/v1/chat/completions"
            a_serve, a_local = _auction_latencies(sale_url, auth, inproc, auction_requests)
            c_serve, c_local, c_errors = _auction_concurrent(
                sale_url, auth, inproc, auction_clients, auction_each, auction_rounds
            )
        finally:
            if inproc is not None:
                inproc.close()
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
    med = statistics.median
    a50, c50 = med(a_local), med(c_local)
    return {
        "auction_p50_overhead_ms": round(med(a_serve) - a50, 3),
        "auction_inprocess_p50_ms": round(a50, 3),
        "auction_serve_p50_ms": round(med(a_serve), 3),
        "auction_p99_overhead_ms": round(_pct(a_serve, 0.99) - _pct(a_local, 0.99), 3),
        "auction_p50_overhead_ms_c10": round(med(c_serve) - c50, 3),
        "auction_inprocess_p50_ms_c10": round(c50, 3),
        "auction_serve_p50_ms_c10": round(med(c_serve), 3),
        "auction_p99_overhead_ms_c10": round(_pct(c_serve, 0.99) - _pct(c_local, 0.99), 3),
        "auction_requests": auction_requests,
        "auction_clients": auction_clients,
        "auction_requests_c10": len(c_serve),
        "auction_errors_c10": c_errors,
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
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--requests", type=int, default=300, help="timed requests per target")
    p.add_argument("--concurrency", type=int, default=8, help="clients for the rps phase")
    p.add_argument("--seconds", type=float, default=5.0, help="length of the rps phase")
    p.add_argument("--auction-requests", type=int, default=200, help="sequential auctions")
    p.add_argument("--auction-clients", type=int, default=10, help="concurrent auction clients")
    p.add_argument("--auction-rounds", type=int, default=3, help="Serve/in-process alternations")
    p.add_argument(
        "--auction-each", type=int, default=20, help="requests per client per round (concurrent)"
    )
    args = p.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    res = run(
        args.requests,
        args.concurrency,
        args.seconds,
        args.auction_requests,
        args.auction_clients,
        args.auction_rounds,
        args.auction_each,
    )
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
    print(
        f"auction (model: sale): in-process p50 {res['auction_inprocess_p50_ms']:.2f} ms, "
        f"Serve adds {res['auction_p50_overhead_ms']:.2f} ms; at {res['auction_clients']} "
        f"clients in-process p50 {res['auction_inprocess_p50_ms_c10']:.2f} ms, Serve adds "
        f"{res['auction_p50_overhead_ms_c10']:.2f} ms"
    )


if __name__ == "__main__":
    main()
