"""``sale-ray up`` / ``status`` / ``down``: the long-lived service from the command line.

``up`` needs a Ray cluster that outlives the command: ``--address`` (or ``RAY_ADDRESS``), else
the one ``ray start`` runs on this machine, else it starts one itself (``ray start --head`` on
127.0.0.1, no dashboard) and says so; ``down --stop-ray`` stops that again. Every door run on
this machine afterwards (``sale-ray run``, ``sale-ray serve``, ``ray job submit``) finds the
cluster and attaches to the service by name (docs/service.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def add_service_parsers(sub: Any) -> None:
    """Register ``up``, ``status`` and ``down`` on the main parser's subcommands."""
    u = sub.add_parser("up", help="start the long-lived service (agents, auctioneer, memory)")
    u.add_argument("--config", help="YAML config (default: the embedded local pool)")
    u.add_argument("--name", help="service name (default: service.name, 'default')")
    u.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS / local)")
    u.add_argument("--num-cpus", type=int, help="CPUs of a head node this command starts")
    u.set_defaults(func=cmd_up)
    s = sub.add_parser("status", help="the service's agents, money and counters")
    s.add_argument("--name", default="default", help="service name")
    s.add_argument("--address", help="Ray cluster address")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_status)
    d = sub.add_parser("down", help="stop the service (ledger and log are flushed first)")
    d.add_argument("--name", default="default", help="service name")
    d.add_argument("--address", help="Ray cluster address")
    d.add_argument(
        "--stop-ray",
        action="store_true",
        help="then run `ray stop`, which stops EVERY Ray cluster on this machine",
    )
    d.set_defaults(func=cmd_down)


def _ray_bin() -> str:
    here = Path(sys.executable).parent / "ray"  # the venv's, whatever PATH says
    return str(here) if here.exists() else "ray"


def start_head(num_cpus: int | None = None) -> None:
    """``ray start --head`` on 127.0.0.1 without dashboard or usage stats."""
    cmd = [
        _ray_bin(),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--num-cpus={num_cpus or max(2, os.cpu_count() or 2)}",
    ]
    # loopback sockets for every Ray process, and one auth mode for the head and its clients
    # (this process and later doors inherit it): see the README's job recipe
    for k, v in (("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0"), ("RAY_AUTH_MODE", "disabled")):
        os.environ.setdefault(k, v)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
    if r.returncode != 0:
        from ..errors import InfraError

        raise InfraError(f"ray start failed ({r.returncode}): {r.stderr.strip()[-500:]}")


def _connect(address: str | None, *, start: bool = False, num_cpus: int | None = None) -> None:
    import ray

    from ..runtime import local_cluster

    address = address or os.environ.get("RAY_ADDRESS") or local_cluster()
    if address is None:
        if not start:
            from .handle import ServiceNotFound

            raise ServiceNotFound("no Ray cluster runs on this machine: nothing is up")
        print("sale-ray: starting a Ray head node on 127.0.0.1 (ray start --head)", file=sys.stderr)
        start_head(num_cpus)
        address = "auto"
    ray.init(address=address, log_to_driver=False)


def cmd_up(args: argparse.Namespace) -> int:
    from ..config import load_config
    from .handle import status, up

    config = load_config(args.config)
    _connect(args.address, start=True, num_cpus=args.num_cpus)
    name = args.name or config.service.name
    asyncio.run(up(config, name=name, detached=True))
    st = asyncio.run(status(name))
    print(_render(st))
    print(f"sale-ray: service {name!r} is up; `sale-ray down --name {name}` stops it")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from .handle import status

    _connect(args.address)
    st = asyncio.run(status(args.name))
    print(json.dumps(st, indent=2, default=str) if args.json else _render(st))
    return 0 if all(v == "alive" for v in st["agents"].values()) else 3


def cmd_down(args: argparse.Namespace) -> int:
    from .handle import down

    _connect(args.address)
    out = asyncio.run(down(args.name))
    print(f"sale-ray: service {out['name']!r} stopped ({len(out['agents'])} agents)")
    if args.stop_ray:
        import ray

        ray.shutdown()
        subprocess.run([_ray_bin(), "stop"], capture_output=True, timeout=120)
    return 0


def _render(st: dict[str, Any]) -> str:
    lines = [f"service {st['name']!r}"]
    width = max(len(a) for a in st["agents"]) if st["agents"] else 5
    for agent, state in st["agents"].items():
        lines.append(f"  agent {agent:<{width}}  {state}")
    budget = "no budget" if st["budget_usd"] is None else f"budget ${st['budget_usd']:.6g}"
    lines.append(
        f"  spent ${st['spent_usd']:.6g} ({budget}); in flight {st['in_flight']}, "
        f"queued {st['queued']}"
    )
    c = st["counts"]
    lines.append("  auctions " + ", ".join(f"{k} {v}" for k, v in c.items()))
    lines.append(f"  policies {', '.join(st['policies'])}")
    lines.append(f"  ledger {st['ledger_uri']}; log {st['log_uri']}")
    return "\n".join(lines)
