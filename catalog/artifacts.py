"""Content-addressed artifacts: written to a staging directory, hashed, renamed into place, verified on read.

An artifact is a directory holding its content files and ``artifact.json``, an index that
records the kind, each file's sha256 and size, and free metadata. The artifact's identity is
the sha256 over the sorted ``(relative path, file sha256)`` pairs, so the same content always
gets the same hash, wherever and whenever it was written. ``artifact.json`` itself is not part
of the hash (it holds the hash).

The root may also be an object store URL (``s3://bucket/prefix``, see :mod:`catalog.storage`): the
artifact is staged and hashed locally as usual, its content files are uploaded to
``<root>/<kind>/<sha256[:16]>/`` and ``artifact.json`` goes up last, as the commit marker (an upload
cut short leaves no index, so it is never opened). The local copy stays in the artifact cache, so
``ArtifactRef.path`` is always a local directory; ``ArtifactRef.uri`` is the URL.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

from catalog.storage import ObjectStore, cache_dir, cached_location, is_url, join

log = logging.getLogger(__name__)

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

    ``root`` may be an object store URL (``s3://bucket/prefix``): the artifact is staged and hashed
    in the local cache, uploaded (content files first, ``artifact.json`` last) and kept in the
    cache; the ref's ``path`` is the cached copy and its ``uri`` the URL. Publishing content that
    is already there uploads nothing (only what an interrupted upload left missing).

    The caller writes files under ``staging.path`` and may fill ``staging.metadata``; after the
    block, ``staging.ref`` holds the published :class:`ArtifactRef`.
    """
    if (root is None) == (dest is None):
        raise ValueError("publish() takes exactly one of root= and dest=")
    if dest is not None and is_url(dest):
        raise ValueError(
            f"publish(dest={dest!r}): dest must be a local directory; to publish to object storage "
            "give the URL as the root (tracking.artifact_root), where artifacts are stored by hash"
        )
    if root is not None and is_url(root):
        with _publish_remote(kind, str(root)) as staging:
            yield staging
        return
    parent = Path(root) / kind if root is not None else Path(dest).resolve().parent
    with _staged(kind, parent) as staging:
        yield staging
        tmp = staging.path
        files, sha = _content(staging)
        _write_synced(tmp / INDEX, _index_bytes(_index_dict(staging, sha, files)))
        final = parent / sha[:16] if root is not None else Path(dest).resolve()
        if root is not None:
            # Content-addressed: an intact copy is never replaced. When the content is already there
            # (or two writers race on it), the rename fails and the one copy that won is kept: a
            # reader never sees the path missing. A damaged copy at the address is replaced by this
            # freshly staged one, so a re-run repairs it instead of failing on it every time.
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.exists():
                    raise
                try:
                    staging.ref = open_artifact(final, kind=kind, expected_sha256=sha)
                except ArtifactError as e:
                    log.warning(
                        "replacing the corrupt artifact at %s with a freshly staged copy: %s", final, e
                    )
                    replace_dir(tmp, final)
                    staging.ref = ArtifactRef(kind, final, sha, staging.metadata, files)
                else:
                    shutil.rmtree(tmp)
                return
            fsync_path(parent)
        else:
            replace_dir(tmp, final)
        staging.ref = ArtifactRef(kind=kind, path=final, sha256=sha, metadata=staging.metadata, files=files)


@contextmanager
def _staged(kind: str, parent: Path) -> Iterator[Staging]:
    """A hidden staging directory under ``parent``; removed when the block raises."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".staging-{kind}-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        yield Staging(kind=kind, path=tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _sync_tree(root: Path) -> None:
    """fsync every file and directory under ``root``, so the rename that publishes it never makes
    visible a name whose content a machine crash could still lose."""
    for p in sorted(root.rglob("*"), key=lambda p: -len(p.parts)):
        fsync_path(p)
    fsync_path(root)


def _content(staging: Staging) -> tuple[dict[str, dict[str, Any]], str]:
    """The staged files' index and the artifact's identity hash (the files fsynced first)."""
    _sync_tree(staging.path)
    files = _index(staging.path)
    if not files:
        raise ArtifactError(
            f"{staging.kind} artifact staged at {staging.path} holds no files; nothing to publish"
        )
    return files, _identity(files)


def _index_dict(staging: Staging, sha: str, files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"kind": staging.kind, "sha256": sha, "files": files, "metadata": staging.metadata}


def open_artifact(
    path: str | Path, kind: str | None = None, verify: bool = True, expected_sha256: str | None = None
) -> ArtifactRef:
    """Read an artifact's index and (by default) check every file against its recorded hash.

    ``expected_sha256`` is the hash the catalog recorded for this address: an index that names
    another (a different artifact copied there, or an index rewritten to match changed files) is
    refused too, not only files that disagree with their own index.

    ``path`` is a directory, its ``file://`` URI, or an object store URL
    (``s3://bucket/prefix/<kind>/<sha256[:16]>``): any ``ArtifactRef.uri`` the catalog recorded.
    A URL is fetched into the artifact cache first (into a temporary directory, renamed into
    place once complete), unless the cache already holds that exact index.

    Raises:
        ArtifactError: naming the artifact and the first file that is missing, extra or changed.
    """
    if is_url(path):
        return _expect(_open_remote(str(path), kind, verify), expected_sha256, str(path))
    if isinstance(path, str) and path.startswith("file://"):
        path = url2pathname(urlsplit(path).path)
    path = Path(path)
    index_path = path / INDEX
    if not index_path.is_file():
        raise ArtifactError(f"{path} is not an artifact (no {INDEX}); was it published by nightshift?")
    index = _parse_index(index_path.read_bytes(), str(index_path))
    if kind is not None and index.get("kind") != kind:
        raise ArtifactError(f"{path} is a '{index.get('kind')}' artifact, expected '{kind}'")
    _expect_index(index, expected_sha256, str(path))
    if verify:
        actual = {p.relative_to(path).as_posix() for p in _content_files(path)}
        _check_files(str(path), path, actual, index)
    return _ref_from_index(index, path, cached_location(path))


def _expect_index(index: dict[str, Any], expected: str | None, where: str) -> None:
    if expected is not None and index.get("sha256") != expected:
        raise ArtifactError(
            f"{where} holds artifact {str(index.get('sha256'))[:16]}, but the catalog recorded "
            f"{expected[:16]} for it; it was replaced or tampered with, re-run the stage that wrote it"
        )


def _expect(ref: ArtifactRef, expected: str | None, where: str) -> ArtifactRef:
    _expect_index({"sha256": ref.sha256}, expected, where)
    return ref


def _parse_index(raw: bytes, where: str) -> dict[str, Any]:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{where} is corrupt ({e}); re-run the stage that wrote it") from e


def _check_files(where: str, root: Path, actual: set[str], index: dict[str, Any]) -> None:
    """Compare the files present (``actual``) and their hashes under ``root`` with the index."""
    files = index["files"]
    for rel in sorted(set(files) | actual):
        if rel not in actual:
            raise ArtifactError(f"{where}: file {rel} is missing; the artifact is incomplete")
        if rel not in files:
            raise ArtifactError(f"{where}: file {rel} is not part of the artifact; remove it or re-publish")
        if file_sha256(root / rel) != files[rel]["sha256"]:
            raise ArtifactError(
                f"{where}: file {rel} does not match its recorded sha256; the artifact is corrupt, "
                "re-run the stage that wrote it"
            )
    if _identity(files) != index["sha256"]:
        raise ArtifactError(f"{where}: {INDEX} is inconsistent with its file list")


# --- object storage ----------------------------------------------------------------------------------


def _ref_from_index(index: dict[str, Any], path: Path, location: str | None) -> ArtifactRef:
    return ArtifactRef(
        kind=index["kind"],
        path=path,
        sha256=index["sha256"],
        metadata=index.get("metadata", {}),
        files=index["files"],
        location=location,
    )


def _write_synced(path: Path, raw: bytes) -> None:
    with open(path, "wb") as f:
        f.write(raw)
        f.flush()
        os.fsync(f.fileno())


def _index_bytes(index: dict[str, Any]) -> bytes:
    return json.dumps(index, indent=2, sort_keys=True).encode()


def _install(tmp: Path, final: Path, raw: bytes) -> None:
    """Rename a complete local copy (index ``raw``) into the cache.

    An intact copy already there (the same index, every hash checked) is kept, so a reader of it
    never sees the path go missing; a damaged or different one is replaced only at the end.
    """
    try:
        os.rename(tmp, final)
        fsync_path(final.parent)
        return
    except OSError:
        if not final.exists():
            raise
    try:
        intact = (final / INDEX).read_bytes() == raw and open_artifact(final) is not None
    except (OSError, ArtifactError):
        intact = False
    if intact:
        shutil.rmtree(tmp)
    else:
        replace_dir(tmp, final)


def _remote_index(store: ObjectStore) -> bytes | None:
    try:
        return store.read(INDEX)
    except FileNotFoundError:
        return None


def _same_content(raw: bytes, sha: str, files: dict[str, dict[str, Any]]) -> bool:
    try:
        index = json.loads(raw)
    except ValueError:
        return False
    return isinstance(index, dict) and index.get("sha256") == sha and index.get("files") == files


@contextmanager
def _publish_remote(kind: str, root: str) -> Iterator[Staging]:
    base = join(root, kind)
    parent = cache_dir(base)
    with _staged(kind, parent) as staging:
        yield staging
        tmp = staging.path
        files, sha = _content(staging)
        url = join(base, sha[:16])
        raw = _index_bytes(_index_dict(staging, sha, files))
        store = ObjectStore(url)
        existing = _remote_index(store)
        if existing is not None and _same_content(existing, sha, files):
            # Same content already published: keep its index (and metadata); upload only what an
            # interrupted or tampered-with upload left missing, then the index again, last.
            raw = existing
            present = store.sizes()
            todo = [rel for rel in sorted(files) if present.get(rel) != files[rel]["size"]]
        else:
            todo = sorted(files)
        _write_synced(tmp / INDEX, raw)
        if todo:
            store.put(tmp, todo)
            store.put(tmp, [INDEX])  # last: the commit marker readers look for
        final = parent / sha[:16]
        _install(tmp, final, raw)
        index = json.loads(raw)
        staging.ref = ArtifactRef(
            kind=kind, path=final, sha256=sha, metadata=index.get("metadata", {}), files=files, location=url
        )


def _open_remote(url: str, kind: str | None, verify: bool) -> ArtifactRef:
    final = cache_dir(url)
    url = cached_location(final) or url.rstrip("/")  # normalised: no trailing or doubled slashes
    store = ObjectStore(url)
    raw = _remote_index(store)
    if raw is None:
        raise ArtifactError(
            f"{url} is not an artifact (no {INDEX}): it was never published there or its upload did not "
            "finish; re-run the stage that writes it"
        )
    index = _parse_index(raw, f"{url}/{INDEX}")
    if kind is not None and index.get("kind") != kind:
        raise ArtifactError(f"{url} is a '{index.get('kind')}' artifact, expected '{kind}'")
    cached = final / INDEX
    if cached.is_file() and cached.read_bytes() == raw:
        try:
            return open_artifact(final, kind=kind, verify=verify)
        except ArtifactError as e:
            log.warning("cached copy of %s is damaged (%s); downloading it again", url, e)
    files = index["files"]
    present = store.sizes()
    present.pop(INDEX, None)
    for rel in sorted(set(files) | set(present)):
        if rel not in present:
            raise ArtifactError(f"{url}: file {rel} is missing; the artifact is incomplete")
        if rel not in files:
            raise ArtifactError(f"{url}: file {rel} is not part of the artifact; remove it or re-publish")
        if present[rel] != files[rel]["size"]:
            raise ArtifactError(
                f"{url}: file {rel} has {present[rel]} bytes, {INDEX} records {files[rel]['size']}; the "
                "artifact is corrupt, re-run the stage that wrote it"
            )
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".download-{final.name}-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        store.get(tmp, sorted(files))
        if verify:
            _check_files(url, tmp, set(files), index)
        _write_synced(tmp / INDEX, raw)  # byte-identical to the store's, so the cache check above matches
        _install(tmp, final, raw)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _ref_from_index(index, final, url)
