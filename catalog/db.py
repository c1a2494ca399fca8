"""Engines, sessions and migrations for the catalog database (SQLite or Postgres, by URL).

The schema is owned by Alembic (``catalog/migrations``), configured here in code so no
``alembic.ini`` is needed at runtime. Call :func:`migrate` once per process before use; it is
idempotent and cheap when the database is already at head.

SQLite notes: every connection turns foreign keys on, uses WAL (readers never block the writer)
and waits up to 30 s for a lock. SQLAlchemy, not the ``sqlite3`` driver, emits ``BEGIN
IMMEDIATE`` for each transaction: the driver's legacy mode skips BEGIN before SELECT, DDL and
SAVEPOINT, which breaks savepoints and transactional DDL; IMMEDIATE takes the write lock up front
so a read-then-write transaction waits for a concurrent writer instead of failing at once with
"database is locked". The cost: transactions on one SQLite file run one at a time, so keep
sessions short (``session_scope``) and do not hold one open across long work.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

# Alembic is imported inside the functions that use it, not here: it takes a second or more to
# import, and not every user of this module needs it.

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Our own version table, so the catalog can share a Postgres database with MLflow or Prefect,
# both of which use Alembic's default ``alembic_version``.
VERSION_TABLE = "catalog_alembic_version"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Arbitrary constant key for pg_advisory_xact_lock: serialises concurrent migrate() calls.
_PG_MIGRATE_LOCK = 0x6E6967_6874

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()
_migrate_lock = threading.Lock()


def _is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_engine(url: str) -> Engine:
    parsed = make_url(url)
    database = parsed.database or ""
    in_memory = database in ("", ":memory:") or database.startswith("file::memory:")
    kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False}}
    if in_memory:
        # One shared connection, otherwise each pooled connection sees its own empty database.
        kwargs["poolclass"] = StaticPool
    else:
        Path(database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves, see module docstring
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            if not in_memory:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")  # safe with WAL, much faster commits
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def get_engine(url: str) -> Engine:
    """Return the process-wide engine for ``url``, creating it on first use.

    Args:
        url: A SQLAlchemy URL, e.g. ``sqlite:///.nightshift/catalog.db`` or
            ``postgresql+psycopg://user@host:5432/nightshift``. For SQLite the parent directory
            is created.

    Returns:
        The cached :class:`~sqlalchemy.Engine` (one per distinct URL string).
    """
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            if _is_sqlite(url):
                engine = _sqlite_engine(url)
            else:
                engine = create_engine(url, pool_pre_ping=True)
            _engines[url] = engine
        return engine


def dispose_engines() -> None:
    """Close every cached engine's connections and forget them (tests, forked workers)."""
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def _alembic_config(engine: Engine, connection: Any) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # configparser treats '%' as interpolation; URL-encoded passwords contain it.
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    cfg.attributes["connection"] = connection
    cfg.attributes["version_table"] = VERSION_TABLE
    return cfg


def current_revision(url: str) -> str | None:
    """The catalog schema revision the database is at, or None for an empty database."""
    from alembic.runtime.migration import MigrationContext

    with get_engine(url).connect() as conn:
        return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()


def head_revision() -> str:
    """The newest revision shipped in ``catalog/migrations``."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    assert head is not None, f"no migrations found in {MIGRATIONS_DIR}"
    return head


def _run_alembic(url: str, action: str, revision: str) -> None:
    from alembic import command

    engine = get_engine(url)
    with _migrate_lock, engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # Two processes migrating at once would race on CREATE TABLE; the lock is released
            # when this transaction ends.
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATE_LOCK})
        cfg = _alembic_config(engine, conn)
        getattr(command, action)(cfg, revision)


def migrate(url: str) -> None:
    """Bring the catalog schema at ``url`` up to the newest revision (``alembic upgrade head``).

    Idempotent: at head already, it returns without touching the schema.

    Args:
        url: The catalog database URL.
    """
    if current_revision(url) == head_revision():
        return
    _run_alembic(url, "upgrade", "head")


def downgrade(url: str, revision: str = "base") -> None:
    """Downgrade the catalog schema to ``revision`` (default: drop everything). Meant for tests.

    Args:
        url: The catalog database URL.
        revision: Target Alembic revision; ``"base"`` removes every catalog table.
    """
    _run_alembic(url, "downgrade", revision)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session in one transaction: committed if the block succeeds, rolled back if it raises.

    Objects stay readable after the block (``expire_on_commit=False``), so a caller can return
    the rows it created.

    Args:
        url: The catalog database URL (the schema must already be migrated).

    Yields:
        The :class:`~sqlalchemy.orm.Session`.
    """
    session = Session(get_engine(url), expire_on_commit=False)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
