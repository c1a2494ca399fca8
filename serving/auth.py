"""API keys: who sends a request, from its Bearer key; the keys themselves are never stored.

Keys live in the catalog (``api_keys``: a name, a role, the sha256 digest; ``nightshift keys
create|list|revoke``). A replica looks a key's digest up there and keeps the answer for
``serve.key_cache_s`` seconds, so a revoked key stops working within that time, without a restart.

Static keys, for a deployment without a catalog, come from ``serve.api_key_hashes``, a digest file
(``serve.api_key_file``, default ``$NIGHTSHIFT_HOME/api-keys.sha256``) and, as plain keys,
``$NIGHTSHIFT_API_KEYS`` (comma-separated; hashed on load). They act as ``client`` keys named
``static-<digest[:8]>`` and are revoked only by removing them and restarting.
"""

from __future__ import annotations

import hmac
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from catalog.keys import digest, lookup
from core.config import nightshift_home

__all__ = ["Identity", "KeyCheck", "collect_digests", "default_key_file", "digest", "read_key_file"]

MISSING = (
    "missing API key; send the header 'Authorization: Bearer <key>' (`nightshift keys create --name NAME` "
    "makes one)"
)


@dataclass(frozen=True)
class Identity:
    """The key a request came with: its id (recorded with completions and feedback), name and role."""

    id: str
    name: str
    role: str

    @property
    def labels_any(self) -> bool:
        """Labeller and admin keys may label any completion; client keys only those they received."""
        return self.role in ("labeller", "admin")


def static_identity(key_digest: str) -> Identity:
    return Identity(id=f"static-{key_digest[:16]}", name=f"static-{key_digest[:8]}", role="client")


def default_key_file() -> Path:
    return nightshift_home() / "api-keys.sha256"


def read_key_file(path: str | Path) -> list[str]:
    p = Path(path)
    if not p.is_file():
        return []
    return [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def collect_digests(hashes: Iterable[str], key_file: str | Path | None, env: str | None = None) -> set[str]:
    """The static keys' digests: config, digest file and ``$NIGHTSHIFT_API_KEYS``."""
    out = set(hashes)
    out.update(read_key_file(key_file or default_key_file()))
    plain = env if env is not None else os.environ.get("NIGHTSHIFT_API_KEYS", "")
    out.update(digest(k.strip()) for k in plain.split(",") if k.strip())
    return out


class AuthProblem(Exception):
    """A request without a usable key; the message is the 401's."""


class KeyCheck:
    """Turns ``Authorization: Bearer <key>`` into an :class:`Identity`.

    Args:
        digests: static keys' digests; ``None`` is the explicit no-auth mode (every request anonymous).
        catalog_url: where named keys live (None: static keys only).
        cache_s: how long a catalog answer (a key, or no such key) is kept.
    """

    def __init__(self, digests: set[str] | None, catalog_url: str | None = None, cache_s: float = 5.0):
        self.digests = digests
        self.catalog_url = catalog_url
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, Identity | None]] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.digests is not None

    def digest_of(self, header: str | None) -> str:
        """The digest of the header's key. Raises AuthProblem for a missing or malformed header."""
        if not header:
            raise AuthProblem(MISSING)
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise AuthProblem("malformed Authorization header; expected 'Bearer <key>'")
        return digest(key.strip())

    def cached(self, key_digest: str) -> Identity | None | bool:
        """A static key's identity or a cached catalog answer; ``False``: the catalog must be asked."""
        assert self.digests is not None
        # Compare against every static digest in constant time, so timing does not reveal a near match.
        ok = False
        for known in self.digests:
            ok |= hmac.compare_digest(key_digest, known)
        if ok:
            return static_identity(key_digest)
        if self.catalog_url is None:
            return None
        with self._lock:
            hit = self._cache.get(key_digest)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        return False

    def lookup(self, key_digest: str) -> Identity | None:
        """Ask the catalog (blocking: call it from a worker thread) and cache the answer."""
        assert self.catalog_url is not None
        info = lookup(self.catalog_url, key_digest)
        ident = Identity(info.id, info.name, info.role) if info is not None else None
        with self._lock:
            if len(self._cache) > 10_000:  # a flood of random keys must not grow it without end
                self._cache.clear()
            self._cache[key_digest] = (time.monotonic() + self.cache_s, ident)
        return ident
