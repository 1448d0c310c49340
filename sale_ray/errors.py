"""Typed errors, sorted by whose fault they are.

* :class:`UserError` — bad input from whoever called us (a task file, a config, an HTTP body).
  Raised with a message that names the place (file, line, field) so it can be fixed.
* :class:`ModelError` — a model misbehaved (timeout, garbage, truncated answer, HTTP error).
  Inside an auction these are *recorded* (the bid is rejected, the juror abstains) and the auction
  goes on; they are never fatal to the auctioneer.
* :class:`InfraError` — our side or the platform failed (a model server would not start, a
  checksum mismatch, the sandbox could not be set up). Raised.

No error message may contain a secret: API keys are referred to by the *name* of the environment
variable that holds them, never by value.
"""

from __future__ import annotations


class SaleRayError(Exception):
    """Base class of every error sale-ray raises on purpose."""


# --- the caller's fault ------------------------------------------------------------------------
class UserError(SaleRayError):
    """Bad input: a task, a config or a request that cannot be accepted as given."""


class TaskValidationError(UserError):
    """A task (or task file) failed validation; the message names the line and field."""


class ConfigError(UserError):
    """A configuration file or value is invalid."""


# --- the model's fault (recorded, never fatal to an auction) -----------------------------------
class ModelError(SaleRayError):
    """A model call failed or returned something unusable."""


class ModelTimeout(ModelError):
    """The model did not answer within its deadline."""


class MalformedOutput(ModelError):
    """The model answered, but not in the form we asked for (e.g. unparseable jury JSON)."""


class TruncatedOutput(ModelError):
    """The answer was cut (length limit or a stream that closed early): never a success."""


class ModelHTTPError(ModelError):
    """The model endpoint answered with an HTTP error after bounded retries."""


# --- our / the platform's fault ----------------------------------------------------------------
class InfraError(SaleRayError):
    """Something on our side failed: a server, a file, the sandbox."""


class ModelNotAvailable(InfraError):
    """A local model's weights are not installed or could not be assembled."""


class ChecksumMismatch(InfraError):
    """An assembled model file does not match its pinned sha256."""


class ModelServerError(InfraError):
    """A local model server failed to start or died."""


class SandboxError(InfraError):
    """The sandbox itself could not run (not: the sandboxed code failed)."""
