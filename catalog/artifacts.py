"""Content-addressed artifacts: written to a staging directory, hashed, renamed into place, verified on read.

An artifact is a directory holding its content files and ``artifact.json``, an index that
records the kind, each file's sha256 and size, and free metadata. The artifact's identity is
the sha256 over the sorted ``(relative path, file sha256)`` pairs, so the same content always
gets the same hash, wherever and whenever it was written. ``artifact.json`` itself is not part
of the hash (it holds the hash).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INDEX = "artifact.json"
_CHUNK = 1 << 20


class ArtifactError(RuntimeError):
    """An artifact is missing, of the wrong kind, or its files do not match their recorded hashes."""


@dataclass(frozen=True)
class ArtifactRef:
    """A published, verified artifact."""

    kind: str
    path: Path
    sha256: str
    metadata: dict[str, Any] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    location: str | None = None  # where it lives when that is not a local directory (e.g. a source URL)

    @property
    def uri(self) -> str:
        return self.location or self.path.resolve().as_uri()

    @property
    def size_bytes(self) -> int:
        if self.files:
            return sum(f["size"] for f in self.files.values())
        return int(self.metadata.get("bytes") or 0)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _content_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.relative_to(root).as_posix() != INDEX)


def _identity(files: dict[str, dict[str, Any]]) -> str:
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel}\0{files[rel]['sha256']}\n".encode())
    return h.hexdigest()


def _index(root: Path) -> dict[str, dict[str, Any]]:
    return {
        p.relative_to(root).as_posix(): {"sha256": file_sha256(p), "size": p.stat().st_size}
        for p in _content_files(root)
    }


@dataclass
class Staging:
    """A directory being filled; becomes an artifact when the ``publish`` block exits cleanly."""

    kind: str
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)
    ref: ArtifactRef | None = None


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's entry list, after a rename into it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_dir(staged: Path, final: Path) -> None:
    """Move a complete ``staged`` directory to ``final``, replacing what is there only at the end.

    ``os.rename`` cannot replace a non-empty directory, so an existing ``final`` is first renamed
    aside; a reader sees the old directory or the new one, never a half-written mix.
    """
    if final.exists():
        old = final.parent / f".replaced-{uuid.uuid4().hex[:12]}"
        os.rename(final, old)
        os.rename(staged, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staged, final)
    fsync_path(final.parent)


@contextmanager
def publish(kind: str, root: str | Path | None = None, dest: str | Path | None = None) -> Iterator[Staging]:
    """Stage an artifact, then hash it and rename it into place atomically.

    Exactly one of ``root`` and ``dest`` is given. With ``root`` the artifact lands at
    ``root/<kind>/<sha256[:16]>`` (same content, same place: a re-run reuses it). With ``dest``
    it lands at exactly ``dest``; an existing artifact there is replaced only after the new one
    is complete. On an exception nothing is published and the staging directory is removed.

    The caller writes files under ``staging.path`` and may fill ``staging.metadata``; after the
    block, ``staging.ref`` holds the published :class:`ArtifactRef`.
    """
    if (root is None) == (dest is None):
        raise ValueError("publish() takes exactly one of root= and dest=")
    parent = Path(root) / kind if root is not None else Path(dest).resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".staging-{kind}-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    staging = Staging(kind=kind, path=tmp)
    try:
        yield staging
        files = _index(tmp)
        if not files:
            raise ArtifactError(f"{kind} artifact staged at {tmp} holds no files; nothing to publish")
        sha = _identity(files)
        index = {"kind": kind, "sha256": sha, "files": files, "metadata": staging.metadata}
        with open(tmp / INDEX, "w") as f:
            json.dump(index, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        final = parent / sha[:16] if root is not None else Path(dest).resolve()
        if final.exists() and root is not None:
            # Same content already published: keep the existing copy after checking it.
            shutil.rmtree(tmp)
            staging.ref = open_artifact(final, kind=kind)
            return
        replace_dir(tmp, final)
        staging.ref = ArtifactRef(kind=kind, path=final, sha256=sha, metadata=staging.metadata, files=files)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def open_artifact(path: str | Path, kind: str | None = None, verify: bool = True) -> ArtifactRef:
    """Read an artifact's index and (by default) check every file against its recorded hash.

    Raises:
        ArtifactError: naming the artifact and the first file that is missing, extra or changed.
    """
    path = Path(path)
    index_path = path / INDEX
    if not index_path.is_file():
        raise ArtifactError(f"{path} is not an artifact (no {INDEX}); was it published by nightshift?")
    try:
        index = json.loads(index_path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{index_path} is corrupt ({e}); re-run the stage that wrote it") from e
    if kind is not None and index.get("kind") != kind:
        raise ArtifactError(f"{path} is a '{index.get('kind')}' artifact, expected '{kind}'")
    files = index["files"]
    if verify:
        actual = {p.relative_to(path).as_posix() for p in _content_files(path)}
        for rel in sorted(set(files) | actual):
            if rel not in actual:
                raise ArtifactError(f"{path}: file {rel} is missing; the artifact is incomplete")
            if rel not in files:
                raise ArtifactError(
                    f"{path}: file {rel} is not part of the artifact; remove it or re-publish"
                )
            if file_sha256(path / rel) != files[rel]["sha256"]:
                raise ArtifactError(
                    f"{path}: file {rel} does not match its recorded sha256; the artifact is corrupt, "
                    "re-run the stage that wrote it"
                )
        if _identity(files) != index["sha256"]:
            raise ArtifactError(f"{path}: {INDEX} is inconsistent with its file list")
    return ArtifactRef(
        kind=index["kind"], path=path, sha256=index["sha256"], metadata=index.get("metadata", {}), files=files
    )
