"""API keys: Bearer tokens checked against sha256 digests; the keys themselves are never stored.

Keys come from ``serve.api_key_hashes`` in the config, from a digest file (one per line; default
``$NIGHTSHIFT_HOME/api-keys.sha256``, written by ``nightshift keys create``) and, as plain keys,
from ``$NIGHTSHIFT_API_KEYS`` (comma-separated; hashed on load).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

KEY_PREFIX = "ns-"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def default_key_file() -> Path:
    from training.config import nightshift_home

    return nightshift_home() / "api-keys.sha256"


def read_key_file(path: str | Path) -> list[str]:
    p = Path(path)
    if not p.is_file():
        return []
    return [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def create_key(path: str | Path | None = None) -> str:
    """Make a new key, append its digest to the key file (mode 600) and return the key (shown once)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    p = Path(path) if path else default_key_file()
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(digest(key) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return key


def collect_digests(hashes: Iterable[str], key_file: str | Path | None, env: str | None = None) -> set[str]:
    out = set(hashes)
    out.update(read_key_file(key_file or default_key_file()))
    plain = env if env is not None else os.environ.get("NIGHTSHIFT_API_KEYS", "")
    out.update(digest(k.strip()) for k in plain.split(",") if k.strip())
    return out


class KeyCheck:
    """Checks ``Authorization: Bearer <key>``; ``None`` digests means the explicit no-auth mode."""

    def __init__(self, digests: set[str] | None):
        self.digests = digests

    @property
    def enabled(self) -> bool:
        return self.digests is not None

    def check(self, header: str | None) -> str | None:
        """The problem with ``header`` (a message for the 401), or None when it is accepted."""
        if self.digests is None:
            return None
        if not header:
            return (
                "missing API key; send the header 'Authorization: Bearer <key>' "
                "(`nightshift keys create` makes one)"
            )
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return "malformed Authorization header; expected 'Bearer <key>'"
        d = digest(key.strip())
        # Compare against every digest in constant time, so timing does not reveal a near match.
        ok = False
        for known in self.digests:
            ok |= hmac.compare_digest(d, known)
        return None if ok else "invalid API key"
