"""The local user's API key for the served model.

The server keeps only the key's sha256 (in the key file); the key itself goes to a 0600 file under
``$NIGHTSHIFT_HOME`` that the stack's env file exports as ``OPENAI_API_KEY``, as a credentials file
in the home directory would.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.config import Config


def client_key_path(home: Path) -> Path:
    return home / "client-api-key"


def client_key(home: Path) -> str | None:
    path = client_key_path(home)
    return path.read_text().strip() if path.is_file() else None


def ensure_client_key(cfg: Config, home: Path) -> None:
    """Give the local user an API key for the served model when auth is on and none exists.

    The server keeps only the key's sha256 (in the key file); the key itself goes to a 0600 file
    under ``$NIGHTSHIFT_HOME`` that the env file exports as ``OPENAI_API_KEY``, as a credentials
    file in the home directory would.
    """
    from serving.auth import collect_digests, create_key

    if cfg.serve.auth != "api_key" or client_key(home):
        return
    if collect_digests(cfg.serve.api_key_hashes, cfg.serve.api_key_file):  # the user manages keys
        return
    key = create_key(cfg.serve.api_key_file)
    fd = os.open(client_key_path(home), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
