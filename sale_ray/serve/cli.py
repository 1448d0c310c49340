"""``sale-ray serve``: the online endpoint on Ray Serve, bound to 127.0.0.1 by default.

    sale-ray serve [--config FILE] [--host H] [--port P] [--address RAY]

API keys come from the variable or file the config's ``serve:`` section names (default: env var
``SALE_RAY_API_KEYS``); without one it refuses to start. Ctrl-C or SIGTERM stops Serve (and the
local Ray it started).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
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
    from ..runtime import connect
    from .auth import ApiKeys
    from .deployment import build_app, running_port, start_serve

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
    started = connect(args.address)
    # orchestrators stop with SIGTERM: clean up as on Ctrl-C (Serve, then the Ray we started).
    # Installed after ray.init, which sets a SIGTERM handler of its own that aborts.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    owned = running_port() is None  # a Serve someone else runs is left running
    try:
        port = start_serve(sc)
        serve.run(build_app(config), name="sale", route_prefix="/")
        names = ", ".join(a.name for a in config.pool.agents)
        print(
            f"sale-ray: serving http://{sc.host}:{port}/v1 (models: sale, {names}); Ctrl-C stops",
            file=sys.stderr,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        if owned:
            serve.shutdown()
        else:
            serve.delete("sale")
        if started:
            import ray

            ray.shutdown()
