"""One service behind every door (docs/service.md): batch jobs, Serve replicas and the Python
API share one pool of agents, one set of limits, one budget ledger, one memory and one log.

Real Ray (the session's cluster), real Serve with two replicas, real HTTP through the official
``openai`` client; the models are the scripted OpenAI-compatible upstream, whose plans differ
per model, so decisions follow from prices and qualities.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from sale_ray.batch import run_batch
from sale_ray.config import (
    AgentSpec,
    AuctionConfig,
    PoolSpec,
    QuotaSpec,
    SaleConfig,
    ScriptedSpec,
    ServeConfig,
)
from sale_ray.memory.config import MemoryConfig
from sale_ray.service import names
from sale_ray.service.config import ServiceConfig
from sale_ray.service.handle import (
    ServiceMismatch,
    ServiceNotFound,
    attach,
    down,
    open_service,
    status,
    up,
)
from sale_ray.service.ledger import Ledger
from sale_ray.sink import ResultSink
from sale_ray.types import Task
from tests.fakes.upstream import ScriptedUpstream

pytestmark = pytest.mark.usefixtures("ray_cluster")
KEY = "service-test-key-0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def upstream():
    up_ = ScriptedUpstream().start()
    yield up_
    up_.stop()


def _agent(upstream, name: str, price: float, **quota) -> AgentSpec:
    return AgentSpec(
        name=name,
        backend="openai",
        base_url=upstream.base_url,
        model=f"{name}-m",
        price_in_per_mtok=price,
        price_out_per_mtok=2 * price,
        max_concurrency=8,
        quota=QuotaSpec(**quota),
    )


def _config(
    tmp, name: str, agents: list[AgentSpec], *, memory: bool = False, **serve
) -> SaleConfig:
    return SaleConfig(
        pool=PoolSpec(agents=agents),
        auction=AuctionConfig(bid_timeout_s=4, jury_timeout_s=4, execute_timeout_s=8),
        memory=MemoryConfig(enabled=memory, shards=1, embedder="hashing"),
        serve=ServeConfig(api_keys_env=None, require_auth=False, **serve),
        service=ServiceConfig(
            name=name, log_uri=str(tmp / "log"), ledger_uri=str(tmp / "ledger.json"), flush_s=0.2
        ),
    )


def _tasks(prefix: str, n: int, text: str = "compute") -> list[Task]:
    return [
        Task(id=f"{prefix}-{i}", prompt=f"{text} {prefix} {i}", kind="answer") for i in range(n)
    ]


@pytest.fixture(scope="module")
def serve_port():
    from sale_ray.serve.deployment import start_serve

    return start_serve(ServeConfig(port=_free_port()))


def _deploy(config: SaleConfig, name: str, port: int, replicas: int = 2) -> str:
    """The endpoint on Serve with ``replicas`` replicas; returns its /v1 base once each has
    answered (each replica attaches to the service at start)."""
    from ray import serve

    from sale_ray.serve.deployment import build_app

    cfg = config.model_copy(
        update={"serve": config.serve.model_copy(update={"num_replicas": replicas})}
    )
    serve.run(build_app(cfg), name=name, route_prefix=f"/{name}")
    base = f"http://127.0.0.1:{port}/{name}/v1"
    warm = openai.OpenAI(base_url=base, api_key=KEY, max_retries=5)
    for _ in range(2 * replicas):
        warm.models.list()
    return base


async def _all(svc, tasks: list[Task]) -> list:
    return await asyncio.gather(*(svc.submit(t) for t in tasks))


def _calls(upstream, model: str) -> int:
    return upstream.calls[model]


# --- lifecycle ------------------------------------------------------------------------------------
def test_up_attach_status_and_down(tmp_path, upstream):
    from sale_ray.tracing import TracingConfig

    cfg = _config(tmp_path, "lifecycle", [_agent(upstream, "cheap", 0.1)])
    spans = tmp_path / "spans.jsonl"  # every auction the service settles is traced too
    cfg = cfg.model_copy(
        update={"tracing": TracingConfig(enabled=True, file=str(spans), processor="simple")}
    )
    with pytest.raises(ServiceNotFound, match="sale-ray up --name lifecycle"):
        attach("lifecycle")
    svc = asyncio.run(up(cfg, detached=False))
    try:
        again = asyncio.run(up(cfg))  # a second door starting it gets the same service
        assert again.actor._actor_id == svc.actor._actor_id and not again.started
        other = cfg.model_copy(update={"pool": PoolSpec(agents=[_agent(upstream, "x", 0.2)])})
        with pytest.raises(ServiceMismatch, match=r"another pool \(agents \['cheap'\]"):
            asyncio.run(up(other))  # a door never auctions on other agents than it was given
        rec = asyncio.run(attach("lifecycle").submit(Task(id="t1", prompt="2+2", kind="answer")))
        assert rec.winner == "cheap" and rec.cost_usd > 0
        st = asyncio.run(status("lifecycle"))
        assert st["agents"] == {"cheap": "alive"} and st["counts"]["finished"] == 1
        assert st["spent_usd"] == pytest.approx(rec.cost_usd)
    finally:
        asyncio.run(down("lifecycle"))
    with pytest.raises(ServiceNotFound):
        attach("lifecycle")
    # what it spent and did outlives it: the ledger and the log
    assert Ledger(str(tmp_path / "ledger.json")).load().run_usd == pytest.approx(rec.cost_usd)
    table, _ = ResultSink(str(tmp_path / "log")).merged()
    assert table.column("auction_id").to_pylist() == [rec.auction_id]
    lines = [json.loads(x) for x in spans.read_text().splitlines()]
    auction = [x for x in lines if x["name"] == "auction"]
    assert [x["attributes"]["sale.auction_id"] for x in auction] == [rec.auction_id]
    assert {x["name"] for x in lines} >= {"auction", "bid", "execute"}


def test_a_restarted_service_continues_its_budget_from_the_ledger(tmp_path, upstream):
    agents = [_agent(upstream, "cheap", 0.1)]
    cfg = _config(tmp_path, "ledger", agents)
    svc = asyncio.run(up(cfg, detached=False))
    try:
        asyncio.run(svc.submit(Task(id="l1", prompt="1+1", kind="answer")))
        first = asyncio.run(svc.stats())["spent_usd"]
    finally:
        asyncio.run(down("ledger"))
    svc = asyncio.run(up(cfg, detached=False))
    try:
        st = asyncio.run(svc.stats())
        assert first > 0 and st["spent_usd"] == pytest.approx(first)
        assert st["agents"]["cheap"]["spent_usd"] == pytest.approx(first)
    finally:
        asyncio.run(down("ledger"))


def test_a_resumed_batch_job_continues_its_budget(tmp_path, upstream):
    """A run's private service keeps its ledger beside the results, so the budget is the
    job's, not each run's: the rerun's service starts with the first run's spend, and a fresh
    run (``resume=False``) starts at $0."""
    cfg = _config(tmp_path, "never-up", [_agent(upstream, "cheap", 0.1)])
    out = str(tmp_path / "out")
    first = asyncio.run(run_batch(_tasks("solo", 2), out, cfg, progress=False)).summary.cost_usd

    async def spent_at_start(**kw) -> float:
        if kw:  # what run_batch(resume=False) does first
            ResultSink(out).reset()
        async with open_service(cfg, ledger_uri=ResultSink(out).ledger_uri) as svc:
            assert svc.private
            return (await svc.stats())["spent_usd"]

    assert first > 0 and asyncio.run(spent_at_start()) == pytest.approx(first)
    assert asyncio.run(spent_at_start(fresh=True)) == 0.0


# --- limits at the agent, for every caller ---------------------------------------------------------
def test_two_replicas_and_a_batch_job_share_one_rate_limit_and_one_budget(
    tmp_path, upstream, serve_port
):
    """``cheap`` may make R requests a minute, ``mid`` may spend B dollars; two Serve replicas
    (passthrough and auctions) and a batch job call them at once, far more than that. Measured
    at the upstream: cheap's calls ≤ the bucket's capacity R + R/min × elapsed; mid's spend ≤
    B + its largest reservation. Separate limits per door would each allow that much again."""
    # a passthrough call to mid reserves ~$0.001 (512 tokens at $2/Mtok) and costs ~$0.00005:
    # $0.0015 lets a dozen calls through, one reservation at a time, then refuses
    rpm, budget = 20, 0.0015
    agents = [
        _agent(upstream, "cheap", 0.1, rpm=rpm),
        _agent(upstream, "mid", 1.0, budget_usd=budget),
        _agent(upstream, "dear", 2.0),
    ]
    cfg = _config(tmp_path, "shared", agents, request_timeout_s=6.0)
    svc = asyncio.run(up(cfg, detached=False))
    try:
        base = _deploy(cfg, "shared", serve_port)
        before = _calls(upstream, "cheap-m")
        t0 = time.monotonic()
        statuses: list[int] = []
        stop = threading.Event()

        def client(i: int) -> None:
            c = openai.OpenAI(base_url=base, api_key=KEY, max_retries=0, timeout=20)
            n = 0
            while not stop.is_set():
                model = ["cheap", "mid", "sale"][n % 3]
                n += 1
                try:
                    c.chat.completions.create(
                        model=model, messages=[{"role": "user", "content": f"q{i}-{n}"}]
                    )
                    statuses.append(200)
                except openai.APIStatusError as e:
                    statuses.append(e.status_code)

        with ThreadPoolExecutor(6) as pool:
            futs = [pool.submit(client, i) for i in range(6)]
            res = asyncio.run(
                run_batch(_tasks("shared", 30), str(tmp_path / "out"), cfg, progress=False)
            )
            # on a slow box the job can end before the clients reach the limits: they go on
            # until both limits have bitten (or a deadline far past a normal run's ~40 s)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not (
                429 in statuses
                and asyncio.run(svc.stats())["agents"]["mid"]["refused"].get("budget", 0) > 0
            ):
                time.sleep(0.5)
            stop.set()
            for f in futs:
                f.result()
        elapsed = time.monotonic() - t0
        made = _calls(upstream, "cheap-m") - before
        st = asyncio.run(svc.stats())
        assert res.service == "shared"  # the job attached: it ran through the same gates
        assert made <= rpm + rpm * elapsed / 60 + 1, (made, elapsed)
        assert 429 in statuses  # the endpoint says "later", with Retry-After
        mid = st["agents"]["mid"]["spent_usd"]
        assert 0 < mid <= budget + st["largest_reservation_usd"], st["agents"]["mid"]
        assert st["agents"]["mid"]["refused"].get("budget", 0) > 0  # the budget was reached
        # one set of metrics in the service: every replica answers the same totals
        import httpx2 as httpx
        from prometheus_client.parser import text_string_to_metric_families

        def auctions() -> float:
            text = httpx.get(base.removesuffix("/v1") + "/metrics", timeout=10).text
            fams = text_string_to_metric_families(text)
            return sum(x.value for f in fams for x in f.samples if x.name == "sale_auctions_total")

        seen = {auctions() for _ in range(8)}
        assert len(seen) == 1 and seen.pop() > 0, seen
        print(
            f"shared limits: cheap {made} calls in {elapsed:.1f}s (R={rpm}/min), "
            f"mid ${mid:.6f} of ${budget}, statuses {sorted(set(statuses))}"
        )
    finally:
        from ray import serve

        serve.delete("shared")
        asyncio.run(down("shared"))


# --- idempotency and failures online ---------------------------------------------------------------
def test_a_retried_request_with_the_same_idempotency_key_runs_one_auction(
    tmp_path, upstream, serve_port
):
    cfg = _config(tmp_path, "idem", [_agent(upstream, "cheap", 0.1), _agent(upstream, "dear", 1.0)])
    svc = asyncio.run(up(cfg, detached=False))
    try:
        base = _deploy(cfg, "idem", serve_port)
        c = openai.OpenAI(base_url=base, api_key=KEY, max_retries=0)
        msg = [{"role": "user", "content": "idem [id:idem-1] what is 6*7"}]
        h = {"Idempotency-Key": "order-42"}
        answers = [
            c.chat.completions.with_raw_response.create(model="sale", messages=msg, extra_headers=h)
            for _ in range(3)
        ]
        spent = asyncio.run(svc.stats())
        ids = {a.headers["x-sale-auction-id"] for a in answers}
        texts = {a.parse().choices[0].message.content for a in answers}
        assert len(ids) == 1 and len(texts) == 1
        assert len(upstream.prompts("bid", "[id:idem-1]")) == 2  # one auction: two bids
        assert spent["admitted"] == 1 and spent["duplicates"] == 2
        # a stream with the same key replays the same answer, spending nothing more
        chunks = list(
            c.chat.completions.create(model="sale", messages=msg, stream=True, extra_headers=h)
        )
        assert (
            "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == texts.pop()
        )
        assert asyncio.run(svc.stats())["spent_usd"] == spent["spent_usd"]
        # a request with another key is an auction of its own
        c.chat.completions.create(
            model="sale", messages=msg, extra_headers={"Idempotency-Key": "x"}
        )
        assert len(upstream.prompts("bid", "[id:idem-1]")) == 4
    finally:
        from ray import serve

        serve.delete("idem")
        asyncio.run(down("idem"))


def test_an_agent_killed_mid_run_comes_back_and_nothing_is_spent_twice(tmp_path):
    """Scripted agents that take 0.3 s a call; ``cheap`` is killed while auctions run. The
    auctions in flight record what happened; Ray restarts the agent; later auctions use it
    again; the ledger's spend equals the sum over the log's records (conservation)."""
    import ray

    def spec(name: str, price: float) -> AgentSpec:
        return AgentSpec(
            name=name,
            backend="scripted",
            model=name,
            price_in_per_mtok=price,
            price_out_per_mtok=price,
            max_concurrency=16,
            scripted=ScriptedSpec(latency_ms=(300, 300), quality=0.9),
        )

    cfg = _config(tmp_path, "restart", [spec("cheap", 0.1), spec("dear", 1.0)])
    svc = asyncio.run(up(cfg, detached=False))
    try:
        actor = ray.get_actor(names.agent_name("restart", "cheap"), namespace=names.NAMESPACE)

        async def run() -> list:
            first = asyncio.ensure_future(_all(svc, _tasks("k", 8)))
            await asyncio.sleep(0.15)  # the bids (0.3 s each) are in flight
            ray.kill(actor, no_restart=False)  # dies now; Ray brings it back
            return await first

        recs = asyncio.run(run())
        deadline = time.monotonic() + 60
        while asyncio.run(svc.health())["agents"]["cheap"] != "alive":
            assert time.monotonic() < deadline, "cheap never came back"
            time.sleep(0.5)
        later = asyncio.run(_all(svc, _tasks("after", 4)))
        assert all(r.winner is not None or r.failure for r in recs), recs
        hit = [r for r in recs for b in r.bids if b.bid.agent == "cheap" and b.bid.rejected]
        assert hit, "the kill reached no auction in flight"
        assert all(
            any(b.bid.agent == "cheap" and not b.bid.rejected for b in r.bids) for r in later
        )
        asyncio.run(svc.flush())
        table, _ = ResultSink(str(tmp_path / "log")).merged()
        ids = table.column("task_id").to_pylist()
        assert sorted(ids) == sorted(t.id for t in _tasks("k", 8) + _tasks("after", 4))
        logged = sum(table.column("cost_usd").to_pylist())
        assert Ledger(str(tmp_path / "ledger.json")).load().run_usd == pytest.approx(logged)
    finally:
        asyncio.run(down("restart"))


# --- the same system at every door ----------------------------------------------------------------
def test_the_same_task_gets_the_same_decision_in_batch_online_and_in_process(
    tmp_path, upstream, serve_port
):
    from sale_ray.agents.agent import Agent
    from sale_ray.serve.handles import InProcessAgent
    from sale_ray.service.local import LocalService

    agents = [
        _agent(upstream, "cheap", 0.1),
        _agent(upstream, "mid", 0.5),
        _agent(upstream, "dear", 1.0),
    ]
    cfg = _config(tmp_path, "doors", agents)
    prompts = [f"door task {i} [best:{m}]" for i, m in enumerate(["mid-m", "dear-m", "cheap-m"])]
    svc = asyncio.run(up(cfg, detached=False))  # lives while this handle does (not detached)
    try:
        assert svc.started
        base = _deploy(cfg, "doors", serve_port, replicas=1)
        c = openai.OpenAI(base_url=base, api_key=KEY, max_retries=0)
        online = [
            c.chat.completions.create(
                model="sale", messages=[{"role": "user", "content": p}]
            ).model_extra["sale"]["winner"]
            for p in prompts
        ]
        batch_tasks = [Task(id=f"b{i}", prompt=p, kind="answer") for i, p in enumerate(prompts)]
        res = asyncio.run(run_batch(batch_tasks, str(tmp_path / "out"), cfg, progress=False))
        table, _ = ResultSink(str(tmp_path / "out")).merged()
        by_id = dict(
            zip(
                table.column("task_id").to_pylist(), table.column("winner").to_pylist(), strict=True
            )
        )
        batch = [by_id[f"b{i}"] for i in range(3)]

        async def local() -> list[str]:
            started = {a.name: Agent(a, cfg) for a in agents}
            for a in started.values():
                await a.start()
            ls = LocalService.over(
                {n: InProcessAgent(a) for n, a in started.items()},
                {a.name: (a.price_in_per_mtok, a.price_out_per_mtok) for a in agents},
                cfg,
            )
            out = [
                (await ls.submit(Task(id=f"l{i}", prompt=p, kind="answer"), evaluate=False)).winner
                for i, p in enumerate(prompts)
            ]
            for a in started.values():
                await a.stop()
            return out

        assert res.service == "doors"
        assert online == batch == asyncio.run(local()), (online, batch)
        assert len(set(online)) >= 2  # the tasks do not all go one way: decisions are compared
    finally:
        from ray import serve

        serve.delete("doors")
        asyncio.run(down("doors"))


def test_online_auctions_refine_from_memory_a_batch_job_wrote_and_the_other_way_round(
    tmp_path, upstream, serve_port
):
    """One memory for every door: ``dear`` wins (``[best:dear-m]``), so the cheaper ``cheap``
    refines from the contrasts of similar past auctions — which, online, are the batch job's,
    and in the next batch job the online one's. The refine prompt carries the past task."""
    agents = [_agent(upstream, "cheap", 0.1), _agent(upstream, "dear", 1.0)]
    cfg = _config(tmp_path, "mem", agents, memory=True)
    svc = asyncio.run(up(cfg, detached=False))

    def refined_with(current: str, past: str) -> bool:
        return any(current in p and past in p for p in upstream.prompts("bid", "PAST TASK"))

    try:
        base = _deploy(cfg, "mem", serve_port, replicas=1)
        first = [
            Task(id=f"mb{i}", prompt=f"sort the list [best:dear-m] batchtag{i}", kind="answer")
            for i in range(3)
        ]
        asyncio.run(run_batch(first, str(tmp_path / "out1"), cfg, progress=False))
        c = openai.OpenAI(base_url=base, api_key=KEY, max_retries=0)
        msg = [{"role": "user", "content": "sort the list [best:dear-m] onlinetag"}]
        c.chat.completions.create(model="sale", messages=msg)
        assert refined_with("onlinetag", "batchtag"), "online did not refine from batch memory"
        later = [Task(id="mb9", prompt="sort the list [best:dear-m] latertag", kind="answer")]
        asyncio.run(run_batch(later, str(tmp_path / "out2"), cfg, progress=False))
        assert refined_with("latertag", "onlinetag"), "batch did not refine from online memory"
        assert asyncio.run(svc.stats())["memory_write_failed"] == 0
    finally:
        from ray import serve

        serve.delete("mem")
        asyncio.run(down("mem"))


def test_the_facade_runs_the_whole_lifecycle_from_blocking_code(tmp_path, upstream):
    from sale_ray import api

    cfg = _config(tmp_path, "facade", [_agent(upstream, "cheap", 0.1)])
    svc = api.up(cfg, detached=False)
    try:
        assert api.submit(svc, Task(id="f1", prompt="1+2", kind="answer")).winner == "cheap"
        groups = list(api.stream(svc, _tasks("fs", 3)))
        assert sorted(r.task_id for g in groups for r in g["records"]) == ["fs-0", "fs-1", "fs-2"]
        assert api.status("facade")["counts"]["finished"] == 4
    finally:
        api.down("facade")
    with pytest.raises(api.ServiceNotFound):
        api.attach("facade")


def test_a_replica_killed_mid_request_loses_nothing_a_retry_cannot_get_back(
    tmp_path, upstream, serve_port
):
    """Every replica of the app dies while an auction's winner is still writing (the upstream
    answers executions of ``[slow:3]`` after 3 s). The auction lives in the service, not in
    the replica: the client's retry with the same Idempotency-Key, on the replicas Serve
    brings back, gets that auction's answer; one auction ran, its spend counted once."""
    import ray

    agents = [_agent(upstream, "cheap", 0.1), _agent(upstream, "dear", 1.0)]
    cfg = _config(tmp_path, "rkill", agents, request_timeout_s=30.0)
    svc = asyncio.run(up(cfg, detached=False))
    try:
        base = _deploy(cfg, "rkill", serve_port)
        msg = [{"role": "user", "content": "slow one [slow:3] [id:rkill-1]"}]
        h = {"Idempotency-Key": "rkill-1"}
        c = openai.OpenAI(base_url=base, api_key=KEY, max_retries=0, timeout=60)
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(
                c.chat.completions.create, model="sale", messages=msg, extra_headers=h
            )
            assert upstream.wait_for("request", "rkill-1", 15)  # the execution has started
            time.sleep(0.3)
            replicas = [
                a
                for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith("SERVE_REPLICA::rkill#")
            ]
            assert len(replicas) == 2
            for a in replicas:
                ray.kill(ray.get_actor(a["name"], namespace=a["namespace"]), no_restart=True)
            with pytest.raises((openai.APIStatusError, openai.APIConnectionError)):
                first.result()
        deadline = time.monotonic() + 90
        while True:  # Serve replaces the replicas; then the retry
            try:
                again = c.chat.completions.with_raw_response.create(
                    model="sale", messages=msg, extra_headers=h
                )
                break
            except (openai.APIStatusError, openai.APIConnectionError):
                assert time.monotonic() < deadline, "the app never came back"
                time.sleep(1.0)
        st = asyncio.run(svc.stats())
        assert again.parse().choices[0].message.content.startswith("echo(")
        assert st["admitted"] == 1 and st["cancelled"] == 0, st  # one auction, not cancelled
        assert len(upstream.prompts("bid", "[id:rkill-1]")) == 2  # its two bids, once
        rec = asyncio.run(svc.record(again.headers["x-sale-auction-id"]))
        assert st["spent_usd"] == pytest.approx(rec.cost_usd)  # one auction's spend, once
    finally:
        from ray import serve

        serve.delete("rkill")
        asyncio.run(down("rkill"))
