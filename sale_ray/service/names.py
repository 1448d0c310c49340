"""Where a service's actors are found: one Ray namespace, names derived from the service name."""

from __future__ import annotations

NAMESPACE = "sale-ray"  # every service's actors live here, whatever namespace the door runs in


def auctioneer_name(service: str) -> str:
    """The auctioneer actor of ``service`` (the handle every door attaches to)."""
    return f"{service}/auctioneer"


def agent_name(service: str, agent: str) -> str:
    """The actor of agent ``agent`` in ``service``."""
    return f"{service}/agent/{agent}"


def fill(template: str | None, service: str) -> str | None:
    """``template`` with ``{name}`` replaced by the service name (None stays None)."""
    return None if template is None else template.replace("{name}", service)
