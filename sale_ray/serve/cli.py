"""``sale-ray serve``: the online endpoint on Ray Serve, bound to 127.0.0.1 by default; and
``sale-ray serve-llm``: the pool's models as OpenAI-compatible Serve routes (``/llm/<name>/v1``).

    sale-ray serve [--config FILE] [--host H] [--port P] [--address RAY]
    sale-ray serve-llm --config cluster/serve_llm.yaml [--only NAME ...] [--host H] [--port P]
                       [--address RAY]

API keys come from the variable or file the config's ``serve:`` section names (default: env var
``SALE_RAY_API_KEYS``); without one it refuses to start. The LLM routes take no key, like the
model servers behind them: keep them on loopback. Ctrl-C or SIGTERM stops Serve (and the local
Ray it started); a Serve someone else started keeps running without our apps.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def add_serve_parser(subparsers: Any) -> None:
    """Register ``serve`` on the ``sale-ray`` command line."""
    p = subparsers.add_parser(
        "serve", help="run the OpenAI-compatible endpoint (model 'sale') on Ray Serve"
    )
    p.add_argument("--config", default=None, help="YAML config: pool + serve section")
    p.add_argument("--host", default=None, help="bind address (default: serve.host, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default: serve.port, 8000)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start local)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from ray import serve

    from ..config import ServeConfig, load_config
    from .auth import ApiKeys
    from .deployment import build_app, start_serve

    config = load_config(args.config)
    updates = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    sc = config.serve = ServeConfig.model_validate({**config.serve.model_dump(), **updates})
    ApiKeys.load(sc)  # no key, no endpoint: fail here, before anything starts
    if sc.host not in LOOPBACK:
        print(
            f"sale-ray: warning: binding {sc.host}: the endpoint is reachable from the "
            "network; put TLS in front of it",
            file=sys.stderr,
        )
    with _serving(args.address, ["sale"]):
        # the service first, in this process: a config that cannot start fails here, and the
        # replicas attach to it; one this command started (none was up) ends with it
        svc = _service(config)
        port = start_serve(sc)
        serve.run(build_app(config), name="sale", route_prefix="/")
        names = ", ".join(a.name for a in config.pool.agents)
        print(
            f"sale-ray: serving http://{sc.host}:{port}/v1 (models: sale, {names}); Ctrl-C stops",
            file=sys.stderr,
        )
        try:
            _wait()
        finally:
            if svc.started:
                asyncio.run(svc.close())
    return 0


def _service(config: Any) -> Any:
    """The running service ``service.name``, or one started for this command (not detached:
    it ends with it; ``svc.started`` says which)."""
    from ..service.handle import up
    from .deployment import serve_config

    return asyncio.run(up(serve_config(config), detached=False))


@contextmanager
def _serving(address: str | None, apps: list[str]) -> Iterator[None]:
    """Ray connected (or started) for a serving command, and cleaned up as on Ctrl-C when it
    ends: the Serve it started is shut down, or only ``apps`` are deleted from a Serve someone
    else runs; then the local Ray it started is stopped."""
    from ray import serve

    from ..runtime import connect
    from .deployment import running_port

    started = connect(address)
    # orchestrators stop with SIGTERM: clean up as on Ctrl-C (Serve, then the Ray we started).
    # Installed after ray.init, which sets a SIGTERM handler of its own that aborts.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    owned = running_port() is None  # a Serve someone else runs is left running
    try:
        yield
    except KeyboardInterrupt:
        pass
    finally:
        if owned:
            serve.shutdown()
        else:
            for name in apps:
                serve.delete(name)
        if started:
            import ray

            ray.shutdown()


def _wait() -> None:
    while True:
        time.sleep(3600)


def add_serve_llm_parser(subparsers: Any) -> None:
    """Register ``serve-llm`` on the ``sale-ray`` command line."""
    p = subparsers.add_parser(
        "serve-llm",
        help="serve each model of an LLM pool file as an OpenAI-compatible Ray Serve route",
    )
    p.add_argument(
        "--config", required=True, help="Serve config of LLM pool apps (cluster/serve_llm.yaml)"
    )
    p.add_argument(
        "--only", nargs="+", default=None, metavar="NAME", help="serve these models only"
    )
    p.add_argument("--host", default=None, help="bind address (default: http_options.host)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default: http_options.port)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start local)")
    p.set_defaults(func=cmd_serve_llm)


def cmd_serve_llm(args: argparse.Namespace) -> int:

    from ..config import ServeConfig
    from .deployment import start_serve
    from .llm_pool import deploy, load_llm_pool

    pool = load_llm_pool(args.config)
    apps = pool.select(args.only)  # an unknown name fails here, before anything starts
    http = pool.http_options
    host = args.host or http.host
    # Serve's own deadline must not cut a route's streams short
    timeout_s = http.request_timeout_s or max(a.args.request_timeout_s for a in apps)
    sc = ServeConfig(host=host, port=args.port or http.port, request_timeout_s=timeout_s)
    if host not in LOOPBACK:
        print(
            f"sale-ray: warning: binding {host}: the model routes take no key and are "
            "reachable from the network",
            file=sys.stderr,
        )
    with _serving(args.address, [a.name for a in apps]):
        port = start_serve(sc, proxy_location=pool.proxy_location)
        routes = deploy(apps)
        for name, route in routes.items():
            print(f"sale-ray: {name}: http://{host}:{port}{route}/v1", file=sys.stderr)
        print("sale-ray: serving; Ctrl-C stops", file=sys.stderr)
        _wait()
    return 0
