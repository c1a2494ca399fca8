"""Writing one file so that readers see the old content or the new, never a part (for every layer)."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: str | Path, data: str | bytes, *, sync: bool = False) -> Path:
    """Write ``data`` to a hidden sibling of ``path`` and rename it into place.

    Args:
        sync: fsync the file before the rename, so that it survives a machine crash too.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        if sync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    return path
