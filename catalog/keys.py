"""Named API keys with a role, kept in the catalog as sha256 digests (the keys themselves never are).

``nightshift keys create|list|revoke`` and the serving replicas (``serving/auth.py``) share these
functions. A key is ``ns-`` plus 43 URL-safe characters; it is shown once, when created.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from catalog.db import migrate, session_scope
from catalog.models import KEY_NAME_CHARS, KEY_ROLES, ApiKey, utcnow

KEY_PREFIX = "ns-"
_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._@-]{{0,{KEY_NAME_CHARS - 1}}}")


class KeyProblem(ValueError):
    """A key command that cannot be done (bad name or role, a name in use, no such key)."""


@dataclass(frozen=True)
class KeyInfo:
    """A key as the catalog knows it (never the key itself)."""

    id: str
    name: str
    role: str
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def digest(key: str) -> str:
    """The sha256 hex digest of a key: what is stored and compared."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _info(row: ApiKey) -> KeyInfo:
    return KeyInfo(row.id, row.name, row.role, row.created_at, row.revoked_at)


def create_key(catalog_url: str, name: str, role: str = "client") -> tuple[str, KeyInfo]:
    """Make a key named ``name`` with ``role``; return (the key, shown once, and its record).

    Raises:
        KeyProblem: the name is malformed or already used, or the role is unknown.
    """
    problems = []
    if not _NAME.fullmatch(name):
        problems.append(
            f"name {name!r}: use 1-{KEY_NAME_CHARS} letters, digits and . _ @ - (starting with a letter or "
            "digit); it becomes the labeller name of this key's feedback"
        )
    if role not in KEY_ROLES:
        problems.append(f"role {role!r}: use one of {', '.join(KEY_ROLES)}")
    if problems:
        raise KeyProblem("; ".join(problems))
    migrate(catalog_url)
    key = new_key()
    with session_scope(catalog_url) as s:
        if s.scalars(select(ApiKey).where(ApiKey.name == name)).first() is not None:
            raise KeyProblem(f"a key named {name!r} exists; revoke it or pick another name")
        row = ApiKey(id="key_" + secrets.token_hex(8), name=name, role=role, digest=digest(key))
        s.add(row)
        s.flush()
        return key, _info(row)


def list_keys(catalog_url: str) -> list[KeyInfo]:
    """Every key, oldest first, revoked ones included."""
    migrate(catalog_url)
    with session_scope(catalog_url) as s:
        return [_info(r) for r in s.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id))]


def revoke_key(catalog_url: str, name_or_id: str) -> KeyInfo:
    """Revoke a key by name or id (a second revoke keeps the first time).

    Raises:
        KeyProblem: no key has that name or id.
    """
    migrate(catalog_url)
    with session_scope(catalog_url) as s:
        row = s.scalars(select(ApiKey).where((ApiKey.name == name_or_id) | (ApiKey.id == name_or_id))).first()
        if row is None:
            raise KeyProblem(f"no key named {name_or_id!r}; `nightshift keys list` shows them")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
        s.flush()
        return _info(row)


def lookup(catalog_url: str, key_digest: str) -> KeyInfo | None:
    """The active key whose digest is ``key_digest``, or None (unknown or revoked)."""
    with session_scope(catalog_url) as s:
        row = s.scalars(select(ApiKey).where(ApiKey.digest == key_digest)).first()
        return _info(row) if row is not None and row.revoked_at is None else None
