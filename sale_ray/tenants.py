"""Tenants: who a request is for, and the limits the service holds for them.

An API key (``serve.api_keys_file``) names a tenant and may give it a rate (``rpm``: auctions
and passthrough calls per minute) and a budget (``budget_usd``). The limits are enforced in the
service, not in a replica, so they hold across every replica; the spend is kept in the budget
ledger with the agents' (a restart continues it).

Budgets follow the agents' rule, reserve first: an auction reserves its pessimistic estimate
against the tenant's budget at admission and settles at its real cost, so a tenant's spend
exceeds its budget by at most one auction's underestimate. Pure asyncio-free Python, no Ray.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from .agents.quota import Budget, QuotaExhausted, TokenBucket


@dataclass(frozen=True)
class TenantLimits:
    """A tenant's limits (None: unlimited)."""

    rpm: float | None = None
    budget_usd: float | None = None


class TenantRateLimited(QuotaExhausted):
    """The tenant's requests per minute are used up; ``retry_after_s`` says when one frees."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TenantBudgetExhausted(QuotaExhausted):
    """The tenant's budget has no room for this request's reservation."""


class TenantGate:
    """One tenant's rate bucket and budget (created on the tenant's first request)."""

    def __init__(self, name: str, limits: TenantLimits, *, clock=time.monotonic) -> None:
        self.name = name
        self.limits = limits
        self.rpm = TokenBucket(limits.rpm, clock=clock) if limits.rpm else None
        self.budget = Budget(limits.budget_usd, f"tenant {name!r}")

    def update(self, limits: TenantLimits) -> None:
        """A key file edited while serving: the new limits apply, the spend stays."""
        if limits == self.limits:
            return
        if limits.rpm != self.limits.rpm:
            self.rpm = TokenBucket(limits.rpm) if limits.rpm else None
        self.budget.limit = limits.budget_usd
        self.limits = limits

    def admit(self, estimate_usd: float) -> float:
        """Take one request and reserve ``estimate_usd``; returns the amount reserved. Raises
        :class:`TenantRateLimited` or :class:`TenantBudgetExhausted` (nothing taken)."""
        if self.rpm is not None:
            wait = self.rpm.reserve(1, 0.0)
            if wait is None:
                need = 1 - self.rpm.level
                retry = max(1, math.ceil(need / self.rpm.rate))
                raise TenantRateLimited(
                    f"tenant {self.name!r}: {self.limits.rpm:g} requests/min used up", retry
                )
        why = self.budget.refusal(estimate_usd, hard=True)
        if why:
            if self.rpm is not None:
                self.rpm.adjust(-1)  # the request was not served: give its token back
            raise TenantBudgetExhausted(why)
        self.budget.reserve(estimate_usd)
        return estimate_usd

    def settle(self, reserved_usd: float, actual_usd: float) -> None:
        self.budget.settle(reserved_usd, actual_usd)
