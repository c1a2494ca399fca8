"""Object storage for artifacts (``s3://``, ``gs://``, any fsspec URL) and its local cache.

:mod:`catalog.artifacts` publishes to a URL root by staging and hashing locally as it does for a
directory, then uploading; this module is the small part that talks to the store. Every remote
artifact also has a local copy under the cache (``$NIGHTSHIFT_ARTIFACT_CACHE``, default
``$NIGHTSHIFT_HOME/cache/artifacts``) at a path that mirrors its URL, ``<cache>/<scheme>/<bucket>/<key>``,
so an :class:`~catalog.artifacts.ArtifactRef` always has a local ``path`` to read and memory-map,
and that path maps back to the URL it came from.

Credentials and endpoints come from the store's usual environment (for S3: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` for an S3-compatible server).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# fsspec is imported inside the functions that use it, not here: it takes a second or more to
# import, and not every user of this module needs it.

# Schemes that name a local path, not an object store.
_LOCAL_SCHEMES = ("", "file", "local")


def is_url(location: str | Path) -> bool:
    """Whether ``location`` names an object store (``s3://bucket/key``) rather than a local path."""
    if isinstance(location, Path):
        return False
    scheme, sep, _ = str(location).partition("://")
    return bool(sep) and scheme.lower() not in _LOCAL_SCHEMES


def join(url: str, *parts: str) -> str:
    """``join("s3://b/root/", "model", "ab12")`` → ``"s3://b/root/model/ab12"``."""
    return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts)])


def cache_root() -> Path:
    """Where local copies of remote artifacts live (read at call time, so tests can move it)."""
    if explicit := os.environ.get("NIGHTSHIFT_ARTIFACT_CACHE"):
        return Path(explicit).expanduser().resolve()
    home = Path(os.environ.get("NIGHTSHIFT_HOME", ".nightshift")).expanduser().resolve()
    return home / "cache" / "artifacts"


def cache_dir(url: str) -> Path:
    """The local copy of the remote artifact (or prefix) at ``url``.

    Raises:
        ValueError: the URL has no bucket, or a ``.``/``..`` segment that would leave the cache.
    """
    parts = urlsplit(url.rstrip("/"))
    segments = [s for s in parts.path.split("/") if s]
    if not parts.netloc or any(s in (".", "..") for s in [parts.netloc, *segments]):
        raise ValueError(
            f"{url}: not a usable object store URL; write <scheme>://<bucket>/<prefix>, e.g. "
            "s3://nightshift/artifacts"
        )
    return cache_root() / parts.scheme / parts.netloc / Path(*segments) if segments else cache_root()


def cached_location(path: Path) -> str | None:
    """The URL a cached copy came from, or None when ``path`` is not under the cache."""
    try:
        rel = path.resolve().relative_to(cache_root())
    except ValueError:
        return None
    if len(rel.parts) < 3:
        return None
    scheme, *rest = rel.parts
    return f"{scheme}://{'/'.join(rest)}"


class ObjectStore:
    """The handful of operations artifacts need, on the fsspec filesystem of one URL."""

    def __init__(self, url: str) -> None:
        from fsspec.core import url_to_fs

        self.url = url.rstrip("/")
        try:
            self.fs, self.root = url_to_fs(self.url)
        except (ImportError, ValueError) as e:
            raise ValueError(
                f"{url}: no filesystem for this URL ({e}); install the fsspec driver for its scheme "
                "(s3fs for s3://)"
            ) from e
        self.root = self.root.rstrip("/")

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def read(self, rel: str) -> bytes:
        """The bytes of the object at ``rel`` under the URL.

        Raises:
            FileNotFoundError: no such object.
        """
        return self.fs.cat_file(self._path(rel))

    def sizes(self) -> dict[str, int]:
        """Every object under the URL, as ``{relative path: size}`` (fresh, never a cached listing)."""
        self.fs.invalidate_cache(self.root)
        try:
            found: dict[str, Any] = self.fs.find(self.root, detail=True)
        except FileNotFoundError:
            return {}
        prefix = self.root + "/"
        return {
            name[len(prefix) :]: int(info.get("size") or 0)
            for name, info in found.items()
            if name.startswith(prefix) and info.get("type", "file") == "file"
        }

    def put(self, local_root: Path, rels: Iterable[str]) -> None:
        """Upload ``local_root/<rel>`` to ``<url>/<rel>`` for each ``rel`` (in one batch)."""
        rels = list(rels)
        if rels:
            self.fs.put([str(local_root / r) for r in rels], [self._path(r) for r in rels])

    def get(self, local_root: Path, rels: Iterable[str]) -> None:
        """Download ``<url>/<rel>`` to ``local_root/<rel>`` for each ``rel``."""
        rels = list(rels)
        for rel in rels:
            (local_root / rel).parent.mkdir(parents=True, exist_ok=True)
        if rels:
            self.fs.get([self._path(r) for r in rels], [str(local_root / r) for r in rels])

    def delete(self, first: str | None = None) -> None:
        """Remove every object under the URL; ``first`` (e.g. the index, the commit marker) goes first,
        so a deletion cut short leaves something that reads as never published, not a partial artifact."""
        if first is not None:
            try:
                self.fs.rm_file(self._path(first))
            except FileNotFoundError:
                pass
        self.fs.invalidate_cache(self.root)
        try:
            self.fs.rm(self.root, recursive=True)
        except FileNotFoundError:
            pass
