"""Errors of the online endpoint, and :func:`to_http`: the ONE place an exception becomes an
HTTP status, an OpenAI-style error body and headers.

Bodies look like OpenAI's (``{"error": {"message", "type", "param", "code"}}``) so the official
client raises its usual exceptions. Messages never contain a request's input values or a key:
validation errors name the field and the rule only; unexpected exceptions answer a generic
500 and are logged by type and message (our own messages never carry secrets).
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from ..admission import Overloaded, UnknownName
from ..agents.quota import BudgetExhausted, QuotaExhausted
from ..config import format_validation_error
from ..errors import (
    InfraError,
    MalformedOutput,
    ModelError,
    ModelTimeout,
    SaleRayError,
    TruncatedOutput,
    UserError,
)
from ..tenants import TenantBudgetExhausted

log = logging.getLogger(__name__)


class HTTPProblem(SaleRayError):
    """An error that already knows its answer; ``headers`` ride along with the response."""

    status = 500
    type = "server_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.param = param
        self.code = code
        self.headers = headers or {}


class Unauthorized(HTTPProblem):
    """No bearer key (or not a bearer scheme)."""

    status, type = 401, "authentication_error"


class Forbidden(HTTPProblem):
    """A bearer key that is not one of ours, or not allowed what it asked."""

    status, type = 403, "permission_error"


class NotFound(HTTPProblem):
    """Unknown model or auction id."""

    status, type = 404, "not_found_error"


class PayloadTooLarge(HTTPProblem):
    """The request body is over ``serve.max_body_bytes``."""

    status, type = 413, "invalid_request_error"


class InvalidRequest(HTTPProblem):
    """A well-formed body that breaks a rule; ``param`` names the field."""

    status, type = 422, "invalid_request_error"


class ContextTooLong(HTTPProblem):
    """A conversation over ``serve.max_conversation_tokens`` (OpenAI answers the same 400,
    code ``context_length_exceeded``, when messages do not fit a model's context)."""

    status, type = 400, "invalid_request_error"


class RequestTimeout(HTTPProblem):
    """The request ran past ``serve.request_timeout_s``; its model calls were cancelled."""

    status, type = 408, "timeout_error"


class UpstreamFailed(HTTPProblem):
    """The models could not produce an answer (no valid bid, a failed or cut execution)."""

    status, type = 502, "upstream_error"


class ClientGone(HTTPProblem):
    """The client disconnected; nobody reads this answer (nginx's 499, for the metrics)."""

    status, type = 499, "client_closed_request"


def to_http(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]]:
    """``(status, body, headers)`` for any exception raised while answering a request."""
    status, etype, param, code, headers = 500, "server_error", None, None, {}
    if isinstance(exc, HTTPProblem):
        status, etype, param, code, headers = exc.status, exc.type, exc.param, exc.code, exc.headers
        message = str(exc)
    elif isinstance(exc, QuotaExhausted):  # an agent's RPM / TPM / budget: try again later
        status, etype, message = 429, "rate_limit_exceeded", str(exc)
        budget = isinstance(exc, BudgetExhausted | TenantBudgetExhausted)
        code = "insufficient_quota" if budget else None
        headers = {"retry-after": str(int(getattr(exc, "retry_after_s", 1)))}
    elif isinstance(exc, Overloaded):
        status, etype, message = 503, "overloaded", str(exc)
        headers = {"retry-after": "1"}
    elif isinstance(exc, UnknownName):
        status, etype, message = 404, "invalid_request_error", str(exc)
    elif isinstance(exc, ValidationError):
        errs = exc.errors(include_input=False, include_url=False)
        status, etype = 422, "invalid_request_error"
        param = ".".join(str(x) for x in errs[0]["loc"]) if errs and errs[0]["loc"] else None
        message = format_validation_error(exc)
    elif isinstance(exc, TimeoutError | ModelTimeout):
        status, etype, message = 504, "upstream_timeout", f"model did not answer in time: {exc}"
    elif isinstance(exc, TruncatedOutput | MalformedOutput | ModelError):
        status, etype, message = 502, "upstream_error", f"{type(exc).__name__}: {exc}"
    elif isinstance(exc, UserError):
        status, etype, message = 400, "invalid_request_error", str(exc)
    elif isinstance(exc, InfraError):
        status, etype, message = 503, "unavailable", f"{type(exc).__name__}: {exc}"
    else:
        # Not ours: its text may hold anything (a URL with a token, a request body), so only
        # its type and where it was raised are logged, and the client gets a generic message.
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb else "?"
        log.error("unexpected %s while answering a request (at %s)", type(exc).__name__, where)
        message = "internal error"
    if status == 401:
        headers = {**headers, "www-authenticate": 'Bearer realm="sale-ray"'}
    body = {"error": {"message": message[:2000], "type": etype, "param": param, "code": code}}
    return status, body, headers
