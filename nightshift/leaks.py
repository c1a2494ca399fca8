"""Looking for secrets where they must never be: every store of the local stack, byte for byte.

:func:`scan` searches, for each secret given (the database password, API keys, S3 keys):

- every table of the catalog, MLflow's and Prefect's databases (params, tags, flow-run parameters,
  logs, artifacts' metadata: every column, as text);
- every object of the artifact store and MLflow's artifact store when they are S3 (``s3_prefixes``);
- every file under ``$NIGHTSHIFT_HOME`` (logs, artifacts, MLflow's and Prefect's SQLite files, Ray's
  session logs) except the secret files themselves, which are where secrets belong.

It answers where each one was found (never the secret itself), so a test or a bench can require none.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from catalog.storage import ObjectStore

# SQLAlchemy is imported inside the functions that use it, not here: it takes a second or more
# to import, and not every user of this module needs it.

# The files under $NIGHTSHIFT_HOME that hold secrets on purpose (0600), and the Postgres cluster
# (its catalog holds only a SCRAM verifier of the password, but its files are not ours to read).
SECRET_FILES = (
    "postgres-password",
    "pgpass",
    "client-api-key",
    "ray-auth-token",
    "env",
    "prefect-auth-string",
    "mlflow-admin-password",
    "mlflow-flask-secret",
    "mlflow/basic_auth.ini",
)
_MAX_FILE = 512 * 2**20


@dataclass(frozen=True)
class Hit:
    """A secret (by its label, never its value) found somewhere."""

    secret: str
    where: str


def _needles(secrets: dict[str, str]) -> list[tuple[str, bytes]]:
    return [(label, value.encode()) for label, value in secrets.items() if value and len(value) >= 8]


def scan_files(home: Path, secrets: dict[str, str], skip: Iterable[Path] = ()) -> list[Hit]:
    """Every file under ``home`` but the secret files and ``skip`` (directories or files)."""
    needles = _needles(secrets)
    skipped = {(home / rel).resolve() for rel in SECRET_FILES} | {Path(p).resolve() for p in skip}
    hits = []
    for root, dirs, files in os.walk(home):
        here = Path(root).resolve()
        dirs[:] = [d for d in dirs if (here / d) not in skipped]
        for name in files:
            path = here / name
            if path in skipped or path.is_symlink() or not path.is_file() or path.stat().st_size > _MAX_FILE:
                continue
            try:
                data = path.read_bytes()
            except OSError:
                continue
            hits += [Hit(label, str(path)) for label, n in needles if n in data]
    return hits


def scan_database(url: str, secrets: dict[str, str], name: str) -> list[Hit]:
    """Every column of every table of the database at ``url``, as text."""
    from sqlalchemy import MetaData, create_engine, select

    needles = [(label, n.decode()) for label, n in _needles(secrets)]
    engine = create_engine(url)
    hits = []
    try:
        meta = MetaData()
        meta.reflect(engine)
        with engine.connect() as conn:
            for table in meta.sorted_tables:
                for row in conn.execute(select(table)):
                    text = " ".join(str(v) for v in row)
                    hits += [Hit(label, f"{name}.{table.name}") for label, n in needles if n in text]
    finally:
        engine.dispose()
    return sorted(set(hits), key=lambda h: (h.secret, h.where))


def scan_objects(prefixes: Sequence[str], secrets: dict[str, str]) -> list[Hit]:
    """Every object under each ``s3://bucket/prefix`` (fsspec; credentials from the environment)."""
    needles = _needles(secrets)
    hits = []
    for prefix in prefixes:
        store = ObjectStore(prefix)
        for rel in store.sizes():
            data = store.read(rel)
            hits += [Hit(label, f"{prefix}/{rel}") for label, n in needles if n in data]
    return hits


def scan(
    home: Path,
    secrets: dict[str, str],
    *,
    databases: dict[str, str] | None = None,
    s3_prefixes: Sequence[str] = (),
    skip: Iterable[Path] = (),
) -> list[Hit]:
    """All of the above: files under ``home``, each of ``databases`` (name -> URL), each S3 prefix."""
    hits = scan_files(home, secrets, skip)
    for name, url in (databases or {}).items():
        hits += scan_database(url, secrets, name)
    return hits + scan_objects(s3_prefixes, secrets)
