"""Bearer API keys for the online endpoint.

Keys come from an environment variable (comma-separated) and/or a file, both named in
:class:`~sale_ray.config.ServeConfig` — never from the config itself. Only their sha256 digests
are kept in memory; a presented key is hashed and compared with every digest in constant time.
No message, log line or exception here contains a key.

A key file has one key per line (``#`` comments), optionally followed by its identity::

    sha256:9f86d08...   tenant=acme  allow=caller_tests   # a digest: the file holds no secret
    sha256:2c26b46...   tenant=beta  rpm=60  budget_usd=5  read=own
    my-plain-key-0123456789abcdef                           # tenant "default", no permissions

``tenant`` names who the key belongs to; ``allow`` lists its permissions (comma-separated, from
:data:`PERMISSIONS`); ``rpm`` and ``budget_usd`` are the tenant's limits, held by the service
for every replica (:mod:`sale_ray.tenants`; over them: 429 with Retry-After); ``read`` is which
auctions ``GET /v1/auctions/{id}`` shows it: ``own`` (the default) or ``all``. Keys of one
tenant should carry the same limits (the last one seen applies). Keys from the environment variable belong to tenant ``default`` and have
none. ``sale-ray serve`` prints nothing of them; ``sha256sum`` of a key gives its digest.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ServeConfig
from ..errors import ConfigError
from ..tenants import TenantLimits
from .errors import Forbidden, Unauthorized

MIN_KEY_CHARS = 16  # shorter keys are guessable; refuse to start with one
#: What a key may be allowed beyond asking for auctions. ``caller_tests``: ``POST /v1/tasks``
#: with ``tests`` of its own (code the caller wrote, run by us in the sandbox).
PERMISSIONS = frozenset({"caller_tests"})
_TENANT = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_HEX_DIGEST = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Identity:
    """Who a request is from: its key's tenant and permissions."""

    tenant: str = "default"
    permissions: frozenset[str] = field(default_factory=frozenset)
    limits: TenantLimits = field(default_factory=TenantLimits)
    read: str = "own"  # which auctions it may read: its own, or all

    def may(self, permission: str) -> bool:
        return permission in self.permissions

    def may_read(self, tenant: str | None) -> bool:
        """May it read an auction of ``tenant``? Its own, or all with ``read=all``."""
        return self.read == "all" or tenant == self.tenant


#: Requests when auth is off: nobody in particular, with no permissions and no limits; it may
#: read every auction (there is nobody to keep apart).
ANONYMOUS = Identity(tenant="anonymous", read="all")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def parse_key_line(line: str, where: str) -> tuple[bytes, Identity] | None:
    """One key-file line -> (digest, identity); None for a blank or comment line.

    ``where`` (file and line number) goes into errors; the key itself never does.
    """
    words = line.split("#", 1)[0].split()
    if not words:
        return None
    key, attrs = words[0], words[1:]
    if key.startswith("sha256:"):
        hexd = key[len("sha256:") :].lower()
        if not _HEX_DIGEST.match(hexd):
            raise ConfigError(f"{where}: 'sha256:' must be followed by 64 hex digits")
        digest = bytes.fromhex(hexd)
    else:
        if len(key) < MIN_KEY_CHARS:
            raise ConfigError(f"{where}: API key needs at least {MIN_KEY_CHARS} characters")
        digest = _digest(key)
    tenant, perms, read = "default", frozenset(), "own"
    limits: dict[str, float] = {}
    for a in attrs:
        name, eq, value = a.partition("=")
        if not eq or name not in ("tenant", "allow", "rpm", "budget_usd", "read"):
            raise ConfigError(
                f"{where}: expected tenant=NAME, allow=PERM[,PERM], rpm=N, budget_usd=X or "
                f"read=own|all, not {name!r}"
            )
        if name == "tenant":
            if not _TENANT.match(value):
                raise ConfigError(f"{where}: tenant must be 1-64 letters, digits, _ . -")
            tenant = value
        elif name in ("rpm", "budget_usd"):
            try:
                limits[name] = float(value)
            except ValueError:
                limits[name] = -1.0
            if not limits[name] > 0 or limits[name] == float("inf"):
                raise ConfigError(f"{where}: {name} must be a positive number, not {value!r}")
        elif name == "read":
            if value not in ("own", "all"):
                raise ConfigError(f"{where}: read must be 'own' or 'all', not {value!r}")
            read = value
        else:
            perms = frozenset(v for v in value.split(",") if v)
            if unknown := sorted(perms - PERMISSIONS):
                raise ConfigError(
                    f"{where}: unknown permission {unknown[0]!r} (known: {sorted(PERMISSIONS)})"
                )
    return digest, Identity(tenant, perms, TenantLimits(**limits), read)


class ApiKeys:
    """The accepted keys (as digests) and whose they are. ``required=False`` lets every request
    through as :data:`ANONYMOUS`."""

    def __init__(
        self,
        digests: frozenset[bytes] | dict[bytes, Identity],
        *,
        required: bool = True,
    ) -> None:
        ids = digests if isinstance(digests, dict) else dict.fromkeys(digests, Identity())
        self._keys = tuple(ids.items())
        self.required = required

    def __len__(self) -> int:
        return len(self._keys)

    @classmethod
    def from_keys(cls, keys: list[str], *, required: bool = True) -> ApiKeys:
        """From plain keys (tests); they must meet the same rules as configured ones."""
        for i, k in enumerate(keys):
            if len(k) < MIN_KEY_CHARS or any(c.isspace() for c in k):
                raise ConfigError(
                    f"API key #{i + 1}: needs at least {MIN_KEY_CHARS} characters and no whitespace"
                )
        return cls(frozenset(_digest(k) for k in keys), required=required)

    @classmethod
    def load(cls, cfg: ServeConfig) -> ApiKeys:
        """Read the keys ``cfg`` points at. With ``require_auth`` and no key found: ConfigError
        (the endpoint never starts open by accident)."""
        keys: dict[bytes, Identity] = {}
        sources = []
        if cfg.api_keys_env:
            sources.append(f"env var {cfg.api_keys_env}")
            env = [k.strip() for k in os.environ.get(cfg.api_keys_env, "").split(",")]
            plain = cls.from_keys([k for k in env if k], required=cfg.require_auth)
            keys.update(plain._keys)
        if cfg.api_keys_file:
            path = Path(cfg.api_keys_file).expanduser()
            sources.append(f"file {path}")
            try:
                lines = path.read_text().splitlines()
            except OSError as e:
                raise ConfigError(
                    f"serve.api_keys_file {path}: cannot read ({e.strerror})"
                ) from None
            for i, line in enumerate(lines, 1):
                if (parsed := parse_key_line(line, f"serve.api_keys_file {path}:{i}")) is not None:
                    keys[parsed[0]] = parsed[1]
        if cfg.require_auth and not keys:
            where = " or ".join(sources) or "no source configured"
            raise ConfigError(
                f"serve.require_auth is on but no API key was found ({where}); set one, e.g. "
                f"export {cfg.api_keys_env or 'SALE_RAY_API_KEYS'}=$(openssl rand -hex 24)"
            )
        return cls(keys, required=cfg.require_auth)

    def check(self, authorization: str | None) -> Identity:
        """The caller's identity; :class:`Unauthorized` (no bearer key) or :class:`Forbidden`
        (not ours)."""
        if not self.required:
            return ANONYMOUS
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        presented = _digest(token)
        found: Identity | None = None
        for d, ident in self._keys:  # no early exit: time does not depend on which key matched
            if hmac.compare_digest(presented, d):
                found = ident
        if found is None:
            raise Forbidden("invalid API key")
        return found
