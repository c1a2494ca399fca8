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


def test_a_client_that_left_does_not_stop_the_writer(catalog_url: str) -> None:
    """A request whose client disconnected while its rows waited (``asyncio.wrap_future`` cancels the
    future) is still stored, and the writer goes on: it used to die, and every later response hung."""
    import sqlite3

    migrate(catalog_url)
    with session_scope(catalog_url) as s:
        art = Artifact(kind="model", sha256="d" * 64, uri="file:///m", size_bytes=1, meta={})
        s.add(art)
        s.flush()
        model_id = art.id
    rec = Recorder(catalog_url)
    try:
        hold = sqlite3.connect(catalog_url.removeprefix("sqlite:///"))
        hold.execute("BEGIN EXCLUSIVE")  # the writer waits on the database with the row in hand
        left = rec.record([_row("left", model_id)])
        left.cancel()  # the client went away
        hold.rollback()
        hold.close()
        rec.record([_row("next", model_id)]).result(timeout=20)
        with session_scope(catalog_url) as s:
            assert sorted(s.scalars(select(Completion.id))) == ["left", "next"]
        assert rec.failures == 0
    finally:
        rec.close()


def test_feedback_rules_on_both_databases(any_db_url: str) -> None:
    """Client keys label only what they received; one label per key and target, on SQLite and Postgres."""
    from catalog.keys import create_key, digest, lookup, revoke_key
    from catalog.models import Feedback
    from serving.auth import Identity
    from serving.recorder import NotYours
    from serving.schemas import FeedbackRequest

    migrate(any_db_url)
    _, alice = create_key(any_db_url, "alice", "client")
    bob_key, bob = create_key(any_db_url, "bob", "client")
    _, lena = create_key(any_db_url, "lena", "labeller")
    with session_scope(any_db_url) as s:
        art = Artifact(kind="model", sha256="d" * 64, uri="file:///m", size_bytes=1, meta={})
        s.add(art)
        s.flush()
        s.add_all(Completion(**_row(c, art.id, key_id=alice.id)) for c in ("a1", "a2"))
    rec = Recorder(any_db_url)
    try:
        as_ = {k.name: Identity(k.id, k.name, k.role) for k in (alice, bob, lena)}
        with pytest.raises(NotYours):
            rec.add_feedback(FeedbackRequest(completion_id="a1", rating=5), as_["bob"])
        pair = {"completion_id": "a1", "other_completion_id": "a2", "preferred": "a"}
        with pytest.raises(NotYours):
            rec.add_feedback(FeedbackRequest(**pair), as_["bob"])
        assert not rec.add_feedback(FeedbackRequest(completion_id="a1", rating=1), as_["lena"]).replaced
        first = rec.add_feedback(FeedbackRequest(completion_id="a1", rating=1, user="x"), as_["alice"])
        again = rec.add_feedback(FeedbackRequest(completion_id="a1", rating=4, user="y"), as_["alice"])
        assert again.replaced and again.id == first.id and again.labeller == "alice"
        p1 = rec.add_feedback(FeedbackRequest(**pair), as_["alice"])
        flipped = {**pair, "completion_id": "a2", "other_completion_id": "a1", "preferred": "b"}
        assert rec.add_feedback(FeedbackRequest(**flipped), as_["alice"]).id == p1.id
        with session_scope(any_db_url) as s:
            rows = s.scalars(select(Feedback).order_by(Feedback.id)).all()
            assert [(r.labeller, r.kind, r.rating, r.user) for r in rows] == [
                ("lena", "rating", 1, None), ("alice", "rating", 4, "y"), ("alice", "preference", None, None),
            ]  # fmt: skip
        assert lookup(any_db_url, digest(bob_key)).name == "bob"
        revoke_key(any_db_url, "bob")
        assert lookup(any_db_url, digest(bob_key)) is None
    finally:
        rec.close()
