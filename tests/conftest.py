"""Shared fixtures: one local Ray cluster per test session, started only if a test asks."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@pytest.fixture(scope="session")
def ray_cluster():
    """A private local Ray (loopback, no dashboard), shared by every integration test."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            object_store_memory=200 * 1024**2,
        )
    yield ray
    ray.shutdown()


def require_models(*models: str) -> None:
    """Skip when local weights are missing — or fail, under ``make test``.

    ``make test`` fetches every model the suite needs and sets ``SALE_RAY_REQUIRE_MODELS=1``, so a
    missing model there means set-up broke, and a silent skip would hide it.
    """
    from sale_ray.agents import catalog

    missing = [m for m in models if not catalog.model_status(m).assembled]
    if not missing:
        return
    reason = f"local weights missing: run `sale-ray models fetch {' '.join(missing)}`"
    if os.environ.get("SALE_RAY_REQUIRE_MODELS") == "1":
        pytest.fail(
            f"{reason} (SALE_RAY_REQUIRE_MODELS=1: make test fetched them, so this is a bug)"
        )
    pytest.skip(reason)


def require_browser() -> str:
    """The system Chromium's path; skip when there is none — or fail, under ``make test``.

    ``make test`` installs Chromium from the OS packages (``make browser``) and sets
    ``SALE_RAY_REQUIRE_BROWSER=1``, so a missing browser there means set-up broke (for example
    a non-root user without apt), and a silent skip would hide it.
    """
    from tests.browser import chromium_binary

    path = chromium_binary()
    if path:
        return path
    reason = "no chromium on PATH: run `make browser` (Debian: `apt-get install chromium`)"
    if os.environ.get("SALE_RAY_REQUIRE_BROWSER") == "1":
        pytest.fail(
            f"{reason} (SALE_RAY_REQUIRE_BROWSER=1: make test installs it unless it cannot, "
            "see its message above)"
        )
    pytest.skip(reason)


def own_service(config, name: str, state_dir):
    """``config`` with a service of its own (``name``), its ledger and log under ``state_dir``:
    a test's Serve replicas then never attach to another test's service, and nothing is
    written into the checkout."""
    from sale_ray.service.config import ServiceConfig

    svc = ServiceConfig(
        name=name,
        log_uri=str(state_dir / "log"),
        ledger_uri=str(state_dir / "ledger.json"),
    )
    return config.model_copy(update={"service": svc})


def stop_service(name: str) -> None:
    """``sale-ray down`` for a test's service, if it is up (replicas start theirs detached)."""
    import asyncio

    from sale_ray.service.handle import ServiceNotFound, down

    try:
        asyncio.run(down(name))
    except ServiceNotFound:
        pass
