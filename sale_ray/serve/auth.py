"""Bearer API keys for the online endpoint.

Keys come from an environment variable (comma-separated) and/or a file (one per line, ``#``
comments), both named in :class:`~sale_ray.config.ServeConfig` — never from the config itself.
Only their sha256 digests are kept in memory; a presented key is hashed and compared with every
digest in constant time. No message, log line or exception here contains a key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from ..config import ServeConfig
from ..errors import ConfigError
from .errors import Forbidden, Unauthorized

MIN_KEY_CHARS = 16  # shorter keys are guessable; refuse to start with one


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKeys:
    """The accepted keys (as digests). ``required=False`` lets every request through."""

    def __init__(self, digests: frozenset[bytes], *, required: bool = True) -> None:
        self._digests = tuple(digests)
        self.required = required

    def __len__(self) -> int:
        return len(self._digests)

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
        keys: list[str] = []
        sources = []
        if cfg.api_keys_env:
            sources.append(f"env var {cfg.api_keys_env}")
            keys += [k.strip() for k in os.environ.get(cfg.api_keys_env, "").split(",")]
        if cfg.api_keys_file:
            path = Path(cfg.api_keys_file).expanduser()
            sources.append(f"file {path}")
            try:
                lines = path.read_text().splitlines()
            except OSError as e:
                raise ConfigError(
                    f"serve.api_keys_file {path}: cannot read ({e.strerror})"
                ) from None
            keys += [ln.split("#", 1)[0].strip() for ln in lines]
        keys = [k for k in keys if k]
        if cfg.require_auth and not keys:
            where = " or ".join(sources) or "no source configured"
            raise ConfigError(
                f"serve.require_auth is on but no API key was found ({where}); set one, e.g. "
                f"export {cfg.api_keys_env or 'SALE_RAY_API_KEYS'}=$(openssl rand -hex 24)"
            )
        return cls.from_keys(keys, required=cfg.require_auth)

    def check(self, authorization: str | None) -> None:
        """Raise :class:`Unauthorized` (no bearer key) or :class:`Forbidden` (not ours)."""
        if not self.required:
            return
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        presented = _digest(token)
        ok = False
        for d in self._digests:  # no early exit: time does not depend on which key matched
            ok |= hmac.compare_digest(presented, d)
        if not ok:
            raise Forbidden("invalid API key")
