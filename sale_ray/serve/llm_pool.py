"""The pool's models as OpenAI-compatible Ray Serve deployments: one application per model at
``/llm/<name>/v1``, so agents are plain ``backend: openai`` agents whose ``base_url`` is a
Serve route, and the same pool runs against vLLM on a GPU cluster (Ray Serve LLM,
``cluster/serve_vllm.yaml``) with nothing changed but, at most, the host in those URLs.

    cluster/serve_llm.yaml       this module's apps (llama.cpp on 127.0.0.1, CPU)
    cluster/serve_vllm.yaml      the same names and routes on ray.serve.llm (vLLM, GPUs)
    cluster/pools/serve_llm.yaml the pool: every agent ``backend: openai`` at a route

Each replica of :class:`LlamaCppModel` starts its own llama.cpp server for its GGUF
(:class:`~sale_ray.agents.local.LocalModelServer`, a child process bound to 127.0.0.1 that dies
with the replica) or attaches to a running one (``attach_url``), and forwards requests to it
through :mod:`.llm_proxy`. ``ray_actor_options`` pins a replica (``num_gpus`` on a GPU node).

A Serve config file of these apps is read by :func:`load_llm_pool` (``sale-ray serve-llm``) and
by Serve itself (``serve run`` / ``serve deploy``: each app's ``args`` go to :func:`app_builder`).
See docs/serve_llm.md.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from ray import serve
from ray.serve import Application

from ..config import format_validation_error, parse_yaml
from ..errors import ConfigError, ModelServerError
from .llm_proxy import UsageLedger, create_proxy_app

log = logging.getLogger(__name__)

#: ``import_path`` of this module's builder in a Serve config file.
IMPORT_PATH = "sale_ray.serve.llm_pool:app_builder"
#: ``import_path`` of Ray Serve LLM's OpenAI builder (vLLM), the GPU cluster's counterpart.
VLLM_IMPORT_PATH = "ray.serve.llm:build_openai_app"
ROUTE_ROOT = "/llm"  # an agent's route is ROUTE_ROOT/<name>; its base_url adds /v1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ActorOptions(_Strict):
    """Ray resources of one replica (Serve's ``ray_actor_options``). Zero CPUs by default so a
    pool of models fits a 2-core machine next to the router; on a cluster reserve what the
    server uses (``num_cpus`` = ``threads``), and ``num_gpus: 1`` to pin a replica to a GPU
    node (Ray sets ``CUDA_VISIBLE_DEVICES``; a CUDA build of xllamacpp offloads to it)."""

    num_cpus: float = Field(default=0.0, ge=0, description="CPUs reserved per replica.")
    num_gpus: float = Field(default=0.0, ge=0, description="GPUs reserved per replica.")
    memory: int | None = Field(default=None, ge=0, description="Bytes of memory reserved.")
    resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources (e.g. a node label resource)."
    )

    def as_ray(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.memory is not None:
            opts["memory"] = self.memory
        if self.resources:
            opts["resources"] = dict(self.resources)
        return opts


class LlmModelSpec(_Strict):
    """One model of the pool as one Serve application (the ``args`` of :func:`app_builder`).

    Exactly one of ``model`` (a catalog name), ``model_path`` (a GGUF file) or ``attach_url``
    (a running OpenAI-compatible server) says what answers."""

    # the same rule as AgentSpec.name: it is the agent's model id and a URL path segment
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$",
        description="Model id the route answers for (the agent's `model`) and its route segment.",
    )
    model: str | None = Field(default=None, description="Catalog name of the GGUF to serve.")
    model_path: str | None = Field(default=None, description="Absolute path of a GGUF to serve.")
    attach_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^/\s]+(/\S*)?$",
        description="Base URL (…/v1) of a running OpenAI-compatible server to forward to instead "
        "of starting one.",
    )
    n_ctx: int = Field(default=4096, ge=512, description="Context per request of the server.")
    n_parallel: int = Field(
        default=2,
        ge=1,
        le=256,
        description="Requests the server decodes at once (match the agent's max_concurrency).",
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU threads of the server (default: every core the replica may use; "
        "models sharing a node should split its cores).",
    )
    start_timeout_s: float = Field(default=120.0, gt=0, description="Model load deadline.")
    request_timeout_s: float = Field(
        default=300.0, gt=0, description="Deadline of one forwarded request, streams included."
    )
    max_body_bytes: int = Field(default=4_000_000, ge=1024, description="Larger bodies: 413.")
    num_replicas: int = Field(default=1, ge=1, description="Replicas (each its own server).")
    max_ongoing_requests: int = Field(
        default=16, ge=1, description="Requests one replica holds at once (then Serve queues)."
    )
    ray_actor_options: ActorOptions = Field(
        default_factory=ActorOptions, description="Ray resources of each replica."
    )

    @model_validator(mode="after")
    def _one_source(self) -> LlmModelSpec:
        given = [f for f in ("model", "model_path", "attach_url") if getattr(self, f)]
        if len(given) != 1:
            raise ValueError(
                f"{self.name!r}: give exactly one of model, model_path, attach_url"
                f" (got {', '.join(given) or 'none'})"
            )
        if self.model is not None:
            from ..agents.catalog import get_model

            try:
                get_model(self.model)
            except ConfigError as e:
                raise ValueError(f"model: {e}") from None
        if self.model_path is not None and not Path(self.model_path).is_absolute():
            # the replica's working directory is not the caller's
            raise ValueError("model_path: must be an absolute path")
        return self


class HttpOptions(_Strict):
    """Where Serve's proxies listen (Serve's ``http_options``)."""

    host: str = Field(default="127.0.0.1", description="Bind address (loopback by default).")
    port: int = Field(default=8000, ge=1, le=65535, description="HTTP port of Serve's proxies.")
    request_timeout_s: float | None = Field(
        default=None, gt=0, description="Serve's own deadline (a backstop behind each route's)."
    )


class LlmApplication(_Strict):
    """One entry of the Serve file's ``applications``: one model at one route."""

    name: str = Field(min_length=1, description="Serve application name.")
    route_prefix: str = Field(
        pattern=r"^/\S*$", description="Route of the app: the agent's base_url is it + /v1."
    )
    import_path: Literal["sale_ray.serve.llm_pool:app_builder"] = Field(
        description="This module's builder (Ray Serve LLM files go to `serve run` instead)."
    )
    args: LlmModelSpec = Field(description="The model this application serves.")


class LlmPoolConfig(_Strict):
    """A Serve config file of LLM pool applications: the subset of Serve's schema that
    ``sale-ray serve-llm`` honours (``serve run`` reads the same file with all of Serve's)."""

    proxy_location: Literal["EveryNode", "HeadOnly"] = Field(
        default="EveryNode",
        description="Where Serve runs proxies: every node with a replica (an agent there "
        "reaches its model at 127.0.0.1), or the head node only.",
    )
    http_options: HttpOptions = Field(default_factory=HttpOptions, description="Serve's proxies.")
    applications: list[LlmApplication] = Field(min_length=1, description="One per model.")

    @model_validator(mode="after")
    def _unique(self) -> LlmPoolConfig:
        for what in ("name", "route_prefix"):
            seen = [getattr(a, what) for a in self.applications]
            dupes = sorted({v for v in seen if seen.count(v) > 1})
            if dupes:
                raise ValueError(f"applications: {what} repeated: {dupes}")
        models = [a.args.name for a in self.applications]
        dupes = sorted({m for m in models if models.count(m) > 1})
        if dupes:
            raise ValueError(f"applications: args.name repeated: {dupes}")
        return self

    def select(self, names: list[str] | None) -> list[LlmApplication]:
        """The applications serving the models ``names`` (all when None); unknown: ConfigError."""
        if not names:
            return list(self.applications)
        known = {a.args.name: a for a in self.applications}
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise ConfigError(f"no application serves {unknown}; known: {sorted(known)}")
        return [known[n] for n in names]


def load_llm_pool(path: str | Path) -> LlmPoolConfig:
    """Read a Serve config file of LLM pool apps; errors name the file and the field."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    data = parse_yaml(text, str(p))
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    try:
        return LlmPoolConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{p}: {format_validation_error(e)}") from None


@serve.deployment(name="LlamaCppModel")
@serve.ingress()
class LlamaCppModel:
    """One replica: a llama.cpp server for one GGUF (or an attached server) and the proxy app
    in front of it. ``stats()`` (through a handle) returns the replica's :class:`UsageLedger`."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self._spec = LlmModelSpec.model_validate(spec)
        self._ledger = UsageLedger()
        self._server: Any = None

    async def __serve_build_asgi_app__(self) -> FastAPI:
        s = self._spec
        if s.attach_url is not None:
            upstream = s.attach_url
        else:  # loading blocks for seconds: off the replica's event loop
            self._server = await asyncio.to_thread(self._start_server)
            upstream = self._server.base_url
        return create_proxy_app(
            upstream,
            s.name,
            ledger=self._ledger,
            request_timeout_s=s.request_timeout_s,
            max_body_bytes=s.max_body_bytes,
            on_shutdown=self._stop_server,
        )

    def _start_server(self) -> Any:
        from ..agents.catalog import model_path
        from ..agents.local import LocalModelServer

        s = self._spec
        # a replica never pip-installs weights: a missing model names the fetch command
        path = Path(s.model_path) if s.model_path else model_path(s.model, install=False)
        server = LocalModelServer(
            path,
            n_ctx=s.n_ctx,
            n_parallel=s.n_parallel,
            threads=s.threads,
            name=s.name,  # llama.cpp's alias: its /v1/models shows the route's model id
            start_timeout_s=s.start_timeout_s,
        )
        server.start()
        log.info("llm pool: %s served by llama.cpp pid %s", s.name, server.pid)
        return server

    async def _stop_server(self) -> None:
        if self._server is not None:
            await asyncio.to_thread(self._server.stop)
            self._server = None

    def check_health(self) -> None:
        """Serve's health check: a replica whose server died is replaced (a new server)."""
        if self._server is not None and not self._server.running:
            raise ModelServerError(f"llama.cpp server of {self._spec.name} is not running")

    def stats(self) -> dict[str, int]:
        """Requests forwarded and the tokens the upstream reported, since the replica started."""
        return self._ledger.snapshot()


def build_app(spec: LlmModelSpec) -> Application:
    """The Serve application of one model (its replicas, concurrency and resources)."""
    return LlamaCppModel.options(
        num_replicas=spec.num_replicas,
        max_ongoing_requests=spec.max_ongoing_requests,
        ray_actor_options=spec.ray_actor_options.as_ray(),
    ).bind(spec.model_dump(mode="json"))


def app_builder(args: dict[str, Any]) -> Application:
    """``serve run`` / ``serve deploy`` builder: ``args`` is one :class:`LlmModelSpec`."""
    try:
        spec = LlmModelSpec.model_validate(args)
    except ValidationError as e:
        raise ConfigError(f"llm pool app args: {format_validation_error(e)}") from None
    return build_app(spec)


def deploy(apps: list[LlmApplication]) -> dict[str, str]:
    """Deploy ``apps`` on the running Serve, one after the other (each waits until its model
    has loaded, so a small machine never loads two at once); returns model id -> route."""
    routes = {}
    for app in apps:
        serve.run(build_app(app.args), name=app.name, route_prefix=app.route_prefix)
        routes[app.args.name] = app.route_prefix
    return routes
