"""Migrations: up to head, down to base, up again, on SQLite and on a real Postgres."""

from __future__ import annotations

from datetime import UTC

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.exc import IntegrityError

from catalog import db
from catalog.models import Artifact, Base, LineageEdge, Run

TABLES = {
    "artifacts",
    "runs",
    "lineage_edges",
    "deployments",
    "completions",
    "feedback",
    "preference_feedback",
    "api_keys",
}


def _tables(url: str) -> set[str]:
    return set(inspect(db.get_engine(url)).get_table_names())


def test_upgrade_downgrade_upgrade(any_db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert db.current_revision(any_db_url) is None
    db.migrate(any_db_url)
    assert TABLES <= _tables(any_db_url)
    assert db.current_revision(any_db_url) == db.head_revision()
    assert "ix_lineage_edges_artifact_id_direction" in {
        ix["name"] for ix in inspect(db.get_engine(any_db_url)).get_indexes("lineage_edges")
    }

    # A second migrate at head must not run Alembic at all.
    def _boom(*_args: object) -> None:
        raise AssertionError("migrate() at head ran a migration")

    monkeypatch.setattr(db, "_run_alembic", _boom)
    db.migrate(any_db_url)
    monkeypatch.undo()

    db.downgrade(any_db_url)
    assert db.current_revision(any_db_url) is None
    assert not TABLES & _tables(any_db_url)

    db.migrate(any_db_url)
    assert TABLES <= _tables(any_db_url)


def test_models_match_migration(any_db_url: str) -> None:
    db.migrate(any_db_url)
    with db.get_engine(any_db_url).connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "version_table": db.VERSION_TABLE})
        assert compare_metadata(ctx, Base.metadata) == []


def test_foreign_keys_and_checks_enforced(any_db_url: str) -> None:
    db.migrate(any_db_url)
    with pytest.raises(IntegrityError), db.session_scope(any_db_url) as s:
        s.add(LineageEdge(run_id="no-such-run", artifact_id=12345, direction="read"))
    with pytest.raises(IntegrityError), db.session_scope(any_db_url) as s:
        s.add(Run(stage="x", status="bogus"))
    with pytest.raises(IntegrityError), db.session_scope(any_db_url) as s:
        s.add(Artifact(kind="k", sha256="a" * 64, uri="file:///a", size_bytes=1, meta={}))
        s.flush()
        s.add(Artifact(kind="k", sha256="a" * 64, uri="file:///b", size_bytes=1, meta={}))
    # The failed transactions left nothing behind.
    with db.session_scope(any_db_url) as s:
        assert s.query(Artifact).count() == 0
        assert s.query(Run).count() == 0


def test_session_scope_commits_and_rolls_back(any_db_url: str) -> None:
    db.migrate(any_db_url)
    with db.session_scope(any_db_url) as s:
        run = Run(stage="ingest", config={"nested": {"a": [1, 2]}})
        s.add(run)
    with pytest.raises(RuntimeError), db.session_scope(any_db_url) as s:
        s.add(Run(stage="lost"))
        s.flush()
        raise RuntimeError("abort")
    with db.session_scope(any_db_url) as s:
        rows = s.query(Run).all()
        assert [r.stage for r in rows] == ["ingest"]
        assert rows[0].config == {"nested": {"a": [1, 2]}}
        # Timestamps come back timezone-aware UTC on both backends.
        assert rows[0].started_at.tzinfo is not None
        assert rows[0].started_at.utcoffset() == UTC.utcoffset(None)


def test_sqlite_engine_pragmas(catalog_url: str, tmp_path) -> None:
    engine = db.get_engine(catalog_url)
    assert db.get_engine(catalog_url) is engine
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == db.SQLITE_BUSY_TIMEOUT_MS
    nested = f"sqlite:///{tmp_path}/deep/er/catalog.db"
    db.migrate(nested)
    assert (tmp_path / "deep" / "er" / "catalog.db").is_file()
