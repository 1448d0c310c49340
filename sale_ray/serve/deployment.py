"""The thin Ray Serve deployment: a replica holds a handle on the service, nothing more.

Everything the endpoint does lives in plain classes (:mod:`.gateway`, :mod:`.app`); this module
only wires them to Serve. A replica attaches to the service named ``service.name`` — starting
it (detached) when none is up, which racing replicas do safely — so every replica, and every
batch job beside them, shares one pool of agents, one set of limits, one memory and one log.
``serve.num_replicas: 2`` with local models runs one model server per agent, not per replica.

Entry points: :func:`build_app` (Python, ``sale-ray serve``) and :func:`app_builder`
(``serve run`` / ``serve deploy`` with ``import_path: sale_ray.serve.deployment:app_builder``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from ray import serve
from ray.serve import Application

from ..config import SaleConfig, ServeConfig, embedded_default, load_config

log = logging.getLogger(__name__)
PROXY_TIMEOUT_MARGIN_S = 10.0  # Serve's own 408 is a backstop behind the app's deadline


@serve.deployment(name="SaleGateway")
@serve.ingress()
class SaleGateway:
    """One replica: a gateway over the shared service (attached at replica start)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._config = serve_config(SaleConfig.model_validate(config))

    async def __serve_build_asgi_app__(self) -> FastAPI:
        from ..service.handle import ServiceMetrics, up
        from .app import create_app
        from .auth import ApiKeys
        from .gateway import Gateway

        keys = ApiKeys.load(self._config.serve)  # before any model starts: fail fast
        svc = await up(self._config)  # the running service, or started here (once)
        info = await svc.describe()
        # one set of metrics in the service: /metrics is the same from every replica
        metrics = ServiceMetrics(svc)
        gateway = Gateway(
            info["agents"], info["prices"], self._config, service=svc, metrics=metrics
        )
        # Serve cancels a handler whose client left: no need to watch the connection here
        return create_app(gateway, keys, watch_disconnect=False)


def serve_config(config: SaleConfig) -> SaleConfig:
    """The config a service started for serving runs: Serve runs callers' code and tests
    (``/v1/tasks``), so ``sandbox.serve_require`` becomes required."""
    return config.model_copy(update={"sandbox": config.sandbox.for_serve()})


def deployment_options(sc: ServeConfig) -> dict[str, Any]:
    """Serve options from the ``serve:`` section (backpressure answers with Retry-After)."""
    return {
        "num_replicas": sc.num_replicas,
        "max_ongoing_requests": sc.max_ongoing_requests,
        "max_queued_requests": sc.max_queued_requests,
        "backpressure_config": {
            "status_code": sc.overload_status,
            "retry_after_s": sc.retry_after_s,
        },
        "ray_actor_options": {"num_cpus": sc.num_cpus},
    }


def build_app(config: SaleConfig) -> Application:
    """The Serve application for ``config`` (its pool, its ``serve:`` limits)."""
    opts = deployment_options(config.serve)
    return SaleGateway.options(**opts).bind(config.model_dump(mode="json"))


def app_builder(args: dict[str, Any]) -> Application:
    """``serve run`` / ``serve deploy`` builder. ``args``: ``config`` (path of a sale-ray YAML;
    absolute, since the builder may run in another directory) and/or ``sale_ray`` (the same
    config inline; wins over the file)."""
    unknown = set(args) - {"config", "sale_ray"}
    if unknown:
        raise ValueError(f"app_builder: unknown args {sorted(unknown)}; use config / sale_ray")
    config = load_config(Path(args["config"]).expanduser()) if args.get("config") else None
    if args.get("sale_ray") is not None:
        config = SaleConfig.model_validate(args["sale_ray"])
    return build_app(config or embedded_default())


def running_port() -> int | None:
    """HTTP port of the Serve instance already running on this cluster, if any."""
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    return None if client is None else int(client.http_config.port)


def start_serve(sc: ServeConfig, *, proxy_location: str | None = None) -> int:
    """Start Serve's proxy on ``sc.host:sc.port`` (an explicit port: Serve never reports 0) and
    return the port. If Serve already runs, its options stay as they are (Serve cannot change
    them live): the port it listens on is returned, and a different one is logged.
    ``proxy_location``: Serve's (``EveryNode``, its default, or ``HeadOnly``)."""
    port = running_port()
    if port is not None:
        if port != sc.port:
            log.warning(
                "Serve already runs on port %d; serve.port %d is not applied", port, sc.port
            )
        return port
    serve.start(
        proxy_location=proxy_location,
        http_options={
            "host": sc.host,
            "port": sc.port,
            "request_timeout_s": sc.request_timeout_s + PROXY_TIMEOUT_MARGIN_S,
        },
    )
    return sc.port


# --- Serve's floor, for benchmarks/serve_overhead.py --------------------------------------------
def echo_app() -> FastAPI:
    """The trivial app: ``POST /echo`` returns its body. Same app under uvicorn and Serve."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/echo")
    async def echo(request: Request) -> Response:
        return Response(await request.body(), media_type="application/json")

    return app


@serve.deployment(name="Echo", ray_actor_options={"num_cpus": 0})
@serve.ingress(echo_app)
class Echo:
    """``echo_app`` as a Serve deployment."""
