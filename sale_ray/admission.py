"""Admission's vocabulary: how a task is to be auctioned (:class:`Job`) and why one is not.

Shared by :mod:`sale_ray.auctioneer` and :mod:`sale_ray.online`; plain data, no behaviour.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .config import SaleConfig
from .errors import SaleRayError, UserError
from .tenants import TenantLimits

BUDGET_REFUSED = "budget exhausted"  # prefix of a record's error: not done, rerun may retry it


class Overloaded(SaleRayError):
    """The admission queue is full: try again later (HTTP 429/503 with Retry-After)."""


class UnknownName(UserError):
    """A request named a policy or an agent the service does not have (HTTP 404)."""


@dataclass(frozen=True)
class Job:
    """How one task is auctioned: the policy's config, whether its verifier runs, the tenant
    its spend is attributed to, and (streaming) the handles that relay the winner's text."""

    config: SaleConfig
    auction_id: str
    evaluate: bool = True
    tenant: str = "none"
    handles: Mapping[str, Any] | None = None
    limits: TenantLimits | None = None  # the tenant's rate and budget (None: unlimited)
