"""The local user's API key for the served model.

The catalog keeps only the key's sha256 (``api_keys``, named ``local``, role ``admin``); the key itself
goes to a 0600 file under ``$NIGHTSHIFT_HOME`` that the stack's env file exports as
``OPENAI_API_KEY``, as a credentials file in the home directory would.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from catalog.keys import create_key, list_keys

if TYPE_CHECKING:
    from core.config import Config

LOCAL_KEY_NAME = "local"


def client_key_path(home: Path) -> Path:
    return home / "client-api-key"


def client_key(home: Path) -> str | None:
    path = client_key_path(home)
    return path.read_text().strip() if path.is_file() else None


def ensure_client_key(cfg: Config, home: Path, catalog_url: str) -> None:
    """Give the local user an API key for the served model when auth is on and it has none.

    The key is the catalog's ``local`` key (role ``admin``: the stack's owner may label anything);
    a user who already made a key by that name keeps it, and no file is written.
    """
    if cfg.serve.auth != "api_key" or client_key(home):
        return
    url = catalog_url
    if any(k.name == LOCAL_KEY_NAME for k in list_keys(url)):
        return
    key, _ = create_key(url, LOCAL_KEY_NAME, "admin")
    fd = os.open(client_key_path(home), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
