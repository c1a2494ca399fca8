"""Sources of the ingest stage: resolve what the user named into read units, then read them safely.

Resolution (:func:`resolve_sources`) runs in the driver before Ray starts, so a missing path or a
glob that matches nothing fails at once with an error naming it. Reading (:func:`read_unit`) runs
inside Ray Data tasks and never raises for bad input: an unreadable, binary, oversized or corrupt
item becomes a *quarantine* record naming its source, the item (path, archive member or
``path:line``) and the reason, and the run goes on.

Every record a reader yields has the same columns (see :data:`RECORD_FIELDS`) so Ray Data can
put them in one Arrow block: ``kind`` is ``"doc"`` (a document), ``"quarantine"`` (a bad item) or
``"input"`` (a file or member that was read, with its sha256 and size for the manifest).
"""

from __future__ import annotations

import fnmatch
import glob
import gzip
import hashlib
import io
import json
import logging
import os
import re
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

from core.data_config import DataConfig

# fsspec and pyarrow are imported inside the functions that use them, not here: each takes a
# second or more to import, and not every user of this module needs them.

log = logging.getLogger(__name__)

RECORD_FIELDS = ("kind", "source", "item", "text", "reason", "sha256", "nbytes")
_ARCHIVE_PROTOCOLS = ("tar", "zip")
_GLOB_CHARS = re.compile(r"[*?\[]")
_CHUNK = 1 << 20
# Bytes that do not occur in text: NUL and C0 controls other than \t \n \v \f \r, and ESC is kept.
_BINARY_BYTES = bytes(set(range(32)) - {9, 10, 11, 12, 13, 27})


class SourceError(ValueError):
    """A source that does not exist or expands to no files; raised before any work starts."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} source problem(s):\n{lines}")


def _record(
    kind: str, source: str, item: str, *, text: str = "", reason: str = "", sha256: str = "", nbytes: int = 0
) -> dict[str, Any]:
    return {
        "kind": kind,
        "source": source,
        "item": item,
        "text": text,
        "reason": reason,
        "sha256": sha256,
        "nbytes": nbytes,
    }


def quarantine(source: str, item: str, reason: str) -> dict[str, Any]:
    """A quarantine record for one bad item."""
    return _record("quarantine", source, item, reason=reason)


# ---------------------------------------------------------------------------------------------
# resolution (driver)
# ---------------------------------------------------------------------------------------------


def file_kind(name: str) -> str:
    """``text``, ``jsonl``, ``parquet``, ``tar`` or ``zip`` from a file name."""
    low = name.lower()
    if low.endswith((".jsonl", ".jsonl.gz", ".ndjson")):
        return "jsonl"
    if low.endswith(".parquet"):
        return "parquet"
    if low.endswith((".tar.gz", ".tgz", ".tar")):
        return "tar"
    if low.endswith(".zip"):
        return "zip"
    return "text"


def matches(rel: str, patterns: list[str]) -> bool:
    """Whether a relative path matches one of the include globs (``*.txt`` matches at any depth)."""
    p = PurePosixPath(rel)
    return any(p.match(pat) or fnmatch.fnmatch(rel, pat) for pat in patterns)


def _unit(
    source: str, url: str, kind: str, member_glob: str | None = None, data: bytes | None = None
) -> dict[str, Any]:
    return {"source": source, "url": url, "kind": kind, "member_glob": member_glob, "data": data}


def _list_archive(url: str, kind: str) -> list[str]:
    """Member names of an archive (for a member glob that must match something)."""
    import fsspec

    with fsspec.open(url, "rb") as f:
        if kind == "zip":
            return [i.filename for i in zipfile.ZipFile(f).infolist() if not i.is_dir()]
        with tarfile.open(fileobj=f, mode="r|*") as tf:
            return [m.name for m in tf if m.isfile()]


def resolve_sources(sources: list[str], cfg: DataConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Expand sources into read units, in a deterministic order.

    Args:
        sources: paths, directories, globs, archives, ``tar://member-glob::archive`` URLs, fsspec URLs.
        cfg: the data config (``include`` filters files found in directories and archives).

    Returns:
        ``(units, quarantined)``: one unit per file or archive, and quarantine records for
        archives that could not even be listed.

    Raises:
        SourceError: listing every source that is missing or matches no files.
    """
    import fsspec

    units: list[dict[str, Any]] = []
    early_quarantine: list[dict[str, Any]] = []
    problems: list[str] = []
    if not sources:
        raise SourceError(["no sources given; pass paths, globs or URLs (or set data.sources)"])
    for source in sources:
        expanded = os.path.expanduser(os.path.expandvars(source))
        proto, _, rest = expanded.partition("://")
        if "://" in expanded and proto in _ARCHIVE_PROTOCOLS and "::" in rest:
            member_glob, archive = rest.split("::", 1)
            if "://" not in archive:
                archive = os.path.abspath(archive)
                if not os.path.exists(archive):
                    problems.append(f"{source}: archive {archive} does not exist; check the path")
                    continue
            try:
                names = _list_archive(archive, proto)
            except Exception as e:  # noqa: BLE001 - a broken archive is quarantined, not fatal
                early_quarantine.append(quarantine(source, archive, f"broken_archive: {e}"))
                continue
            if not any(matches(n, [member_glob]) for n in names):
                problems.append(
                    f"{source}: no member of {archive} matches '{member_glob}' "
                    f"({len(names)} members, e.g. {names[:3]}); fix the member glob"
                )
                continue
            units.append(_unit(source, archive, proto, member_glob))
            continue
        if "://" in expanded and proto != "file" or "::" in expanded:
            fs, path = fsspec.core.url_to_fs(expanded)
            if _GLOB_CHARS.search(path):
                found = sorted(fs.glob(path))
                found = [p for p in found if fs.isfile(p)]
            elif fs.isdir(path):
                found = sorted(p for p in fs.find(path) if matches(p[len(path) :].lstrip("/"), cfg.include))
            elif fs.exists(path):
                found = [path]
            else:
                problems.append(f"{source}: not found; check the URL (and credentials for remote storage)")
                continue
            if not found:
                problems.append(f"{source}: matches no files; check the glob or the include patterns")
                continue
            # memory:// lives in this process only; Ray workers cannot see it, so its bytes travel
            # with the unit (it is small by nature).
            inline = "memory" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
            for p in found:
                data = fs.cat_file(p) if inline else None
                units.append(_unit(source, fs.unstrip_protocol(p), file_kind(p), data=data))
            continue
        local = expanded[len("file://") :] if expanded.startswith("file://") else expanded
        local = os.path.abspath(local)
        if os.path.isdir(local):
            found = sorted(
                str(p)
                for p in Path(local).rglob("*")
                if p.is_file() and matches(p.relative_to(local).as_posix(), cfg.include)
            )
            if not found:
                problems.append(f"{source}: directory holds no file matching include {cfg.include}")
        elif os.path.exists(local):
            found = [local]
        elif _GLOB_CHARS.search(local):
            found = sorted(p for p in glob.glob(local, recursive=True) if os.path.isfile(p))
            if not found:
                problems.append(f"{source}: glob matches no files; check the pattern")
        else:
            problems.append(f"{source}: path {local} does not exist; check the path or quote the glob")
            continue
        units.extend(_unit(source, p, file_kind(p)) for p in found)
    if problems:
        raise SourceError(problems)
    return units, early_quarantine


# ---------------------------------------------------------------------------------------------
# reading (inside the Ray Data flat_map)
# ---------------------------------------------------------------------------------------------


def _decode(data: bytes) -> tuple[str | None, str]:
    """Text of a document's bytes, or ``(None, reason)``."""
    if not data.strip():
        return None, "empty"
    head = data[:8192]
    if head.translate(None, _BINARY_BYTES) != head and (
        len(head) - len(head.translate(None, _BINARY_BYTES))
    ) > 0.1 * len(head):
        return None, "binary"
    if b"\x00" in data:
        return None, "nul_bytes"
    try:
        return data.decode("utf-8"), ""
    except UnicodeDecodeError as e:
        return None, f"invalid_utf8 at byte {e.start}"


def _read_bounded(f: IO[bytes], limit: int) -> bytes | None:
    """All bytes of ``f``, or None (without keeping them) if there are more than ``limit``."""
    data = f.read(limit + 1)
    if len(data) > limit:
        return None
    return data


def _text_doc(source: str, item: str, data: bytes) -> Iterator[dict[str, Any]]:
    yield _record("input", source, item, sha256=hashlib.sha256(data).hexdigest(), nbytes=len(data))
    text, reason = _decode(data)
    if text is None:
        yield quarantine(source, item, reason)
    else:
        yield _record("doc", source, item, text=text, nbytes=len(data))


def _read_jsonl(source: str, item: str, f: IO[bytes], cfg: DataConfig) -> Iterator[dict[str, Any]]:
    """One document per line; a bad line is quarantined as ``item:line``.

    Lines are read with a bounded ``readline`` so a single 200 MB line is skipped in chunks,
    never held in memory.
    """
    import orjson  # installed with Prefect; several times faster than json on long strings

    h = hashlib.sha256()
    total = 0
    limit = cfg.max_doc_bytes
    lineno = 0
    try:
        if item.lower().endswith(".gz"):
            f = gzip.GzipFile(fileobj=f)
        while True:
            line = f.readline(limit + 1)
            if not line:
                break
            lineno += 1
            h.update(line)
            total += len(line)
            where = f"{item}:{lineno}"
            if len(line) > limit and not line.endswith(b"\n"):
                while chunk := f.readline(_CHUNK):
                    h.update(chunk)
                    total += len(chunk)
                    if chunk.endswith(b"\n"):
                        break
                yield quarantine(source, where, f"too_large: line over max_doc_bytes={limit}")
                continue
            if not line.strip():
                continue
            try:
                try:
                    obj = orjson.loads(line)
                except orjson.JSONDecodeError:  # json is the judge: it accepts lone surrogates
                    obj = json.loads(line)
            except (UnicodeDecodeError, ValueError) as e:
                yield quarantine(source, where, f"invalid_json: {str(e)[:80]}")
                continue
            text = obj.get(cfg.text_field) if isinstance(obj, dict) else None
            if not isinstance(text, str):
                yield quarantine(source, where, f"missing_field: no string field '{cfg.text_field}'")
                continue
            if "\x00" in text:
                yield quarantine(source, where, "nul_bytes")
                continue
            yield _record("doc", source, where, text=text, nbytes=len(line))
    except (OSError, EOFError, ValueError) as e:
        yield quarantine(source, f"{item}:{lineno + 1}", f"unreadable: {type(e).__name__}: {e}")
    yield _record("input", source, item, sha256=h.hexdigest(), nbytes=total)


def _read_parquet(source: str, item: str, data: bytes, cfg: DataConfig) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    yield _record("input", source, item, sha256=hashlib.sha256(data).hexdigest(), nbytes=len(data))
    try:
        pf = pq.ParquetFile(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for corrupt files
        yield quarantine(source, item, f"unreadable_parquet: {e}")
        return
    if cfg.text_field not in pf.schema_arrow.names:
        yield quarantine(
            source, item, f"missing_column: no column '{cfg.text_field}' in {pf.schema_arrow.names}"
        )
        return
    row = 0
    for batch in pf.iter_batches(columns=[cfg.text_field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            row += 1
            where = f"{item}:{row}"
            if not isinstance(text, str):
                yield quarantine(source, where, f"missing_field: '{cfg.text_field}' is not text")
            elif len(text) > cfg.max_doc_bytes:
                yield quarantine(source, where, f"too_large: over max_doc_bytes={cfg.max_doc_bytes}")
            else:
                yield _record("doc", source, where, text=text, nbytes=len(text.encode()))


def _read_member(
    source: str, item: str, size: int, f: IO[bytes], cfg: DataConfig
) -> Iterator[dict[str, Any]]:
    """Read one file-like object of any kind (a file or an archive member)."""
    kind = file_kind(item)
    if kind == "jsonl":
        yield from _read_jsonl(source, item, f, cfg)
        return
    if kind in ("tar", "zip"):
        yield quarantine(source, item, "nested_archive: archives inside archives are not read")
        return
    # Check the size before reading so an oversized file costs nothing.
    if size > cfg.max_doc_bytes:
        yield quarantine(source, item, f"too_large: {size} bytes over max_doc_bytes={cfg.max_doc_bytes}")
        return
    data = _read_bounded(f, cfg.max_doc_bytes)
    if data is None:
        yield quarantine(source, item, f"too_large: over max_doc_bytes={cfg.max_doc_bytes}")
    elif kind == "parquet":
        yield from _read_parquet(source, item, data, cfg)
    else:
        yield from _text_doc(source, item, data)


def _read_tar(unit: dict[str, Any], f: IO[bytes], cfg: DataConfig) -> Iterator[dict[str, Any]]:
    source, url = unit["source"], unit["url"]
    patterns = [unit["member_glob"]] if unit["member_glob"] else cfg.include
    name = url
    try:
        # Streaming mode: members are read in order, the archive is never seeked or fully loaded.
        with tarfile.open(fileobj=f, mode="r|*") as tf:
            for m in tf:
                if not m.isfile() or not matches(m.name, patterns):
                    continue
                name = f"{url}::{m.name}"
                fm = tf.extractfile(m)
                if fm is not None:
                    yield from _read_member(source, name, m.size, fm, cfg)
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        yield quarantine(source, name, f"broken_archive: {type(e).__name__}: {e}")


def _read_zip(unit: dict[str, Any], f: IO[bytes], cfg: DataConfig) -> Iterator[dict[str, Any]]:
    source, url = unit["source"], unit["url"]
    patterns = [unit["member_glob"]] if unit["member_glob"] else cfg.include
    try:
        zf = zipfile.ZipFile(f)
        infos = [i for i in zf.infolist() if not i.is_dir() and matches(i.filename, patterns)]
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        yield quarantine(source, url, f"broken_archive: {type(e).__name__}: {e}")
        return
    for info in infos:
        name = f"{url}::{info.filename}"
        try:
            with zf.open(info) as fm:
                # Materialise the member's records so a CRC error at its end quarantines it whole.
                records = list(_read_member(source, name, info.file_size, fm, cfg))
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
            yield quarantine(source, name, f"broken_archive: {type(e).__name__}: {e}")
            continue
        yield from records


def read_unit(unit: dict[str, Any], cfg: DataConfig) -> Iterator[dict[str, Any]]:
    """Yield ``doc``, ``quarantine`` and ``input`` records of one unit; never raises for bad input."""
    import fsspec

    source, url, kind = unit["source"], unit["url"], unit["kind"]
    try:
        opened = io.BytesIO(unit["data"]) if unit.get("data") is not None else fsspec.open(url, "rb")
        with opened as f:
            if kind == "tar":
                yield from _read_tar(unit, f, cfg)
            elif kind == "zip":
                yield from _read_zip(unit, f, cfg)
            else:
                try:
                    size = (
                        f.size if hasattr(f, "size") and f.size is not None else os.fstat(f.fileno()).st_size
                    )
                except (OSError, AttributeError, io.UnsupportedOperation):
                    size = 0
                yield from _read_member(source, url, size, f, cfg)
    except OSError as e:
        yield quarantine(source, url, f"unreadable: {type(e).__name__}: {e}")
