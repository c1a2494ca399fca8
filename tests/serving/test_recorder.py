"""The recorder: one bad record fails only its own request, on SQLite and on Postgres."""

from __future__ import annotations

from concurrent.futures import Future

import pytest
from sqlalchemy import func, select

from catalog.db import migrate, session_scope
from catalog.models import USER_CHARS, Artifact, Completion
from serving.recorder import Recorder


def _row(cid: str, model_id: int, **kw) -> dict:
    return {
        "id": cid, "model_artifact_id": model_id, "endpoint": "completions", "prompt": "p",
        "response": "r", "prompt_tokens": 1, "completion_tokens": 1, **kw,
    }  # fmt: skip


def test_a_failing_row_fails_only_its_request(any_db_url: str) -> None:
    migrate(any_db_url)
    with session_scope(any_db_url) as s:
        art = Artifact(kind="model", sha256="c" * 64, uri="file:///m", size_bytes=1, meta={})
        s.add(art)
        s.flush()
        model_id = art.id
    rec = Recorder(any_db_url)
    try:
        bad = [_row("bad-endpoint", model_id, endpoint="nope")]  # a CHECK constraint, on both databases
        if any_db_url.startswith("postgresql"):
            # What used to fail whole batches on Postgres: a value longer than its column.
            bad.append(_row("long-user", model_id, user="u" * (USER_CHARS + 1)))
        good = [[_row(f"ok-{i}", model_id, user="n" * USER_CHARS)] for i in range(4)]
        batch = [(rows, Future()) for rows in [good[0], good[1], *([r] for r in bad), good[2], good[3]]]
        rec._write(batch)  # one shared transaction, as the writer thread forms under load
        outcomes = [fut.exception(timeout=5) for _, fut in batch]
        assert [e is None for e in outcomes] == [True, True, *([False] * len(bad)), True, True]
        assert rec.failures == len(bad)
        with session_scope(any_db_url) as s:
            assert s.scalar(select(func.count()).select_from(Completion)) == 4
    finally:
        rec.close()


def test_the_writer_thread_counts_a_lone_failure(catalog_url: str) -> None:
    rec = Recorder(catalog_url)
    try:
        fut = rec.record([_row("orphan", 999)])  # no such model artifact: a foreign key
        with pytest.raises(Exception, match="FOREIGN KEY"):
            fut.result(timeout=10)
        assert rec.failures == 1
    finally:
        rec.close()
