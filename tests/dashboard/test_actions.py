"""Who acts, read-only mode, and the catalog reads and label writes on SQLite and Postgres."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from catalog import lineage
from catalog.artifacts import ArtifactRef
from catalog.db import migrate, session_scope
from catalog.models import Completion, Feedback
from dashboard import actions, queries
from dashboard.settings import Settings
from tests.dashboard.conftest import Filled, open_page


def _settings(catalog_url: str = "sqlite://", **kw: object) -> Settings:
    return Settings(
        catalog_url=catalog_url, mlflow_uri="sqlite://", experiment="x", prefect_ui="http://p", **kw
    )  # type: ignore[arg-type]


def test_identity_trusts_a_header_only_when_configured() -> None:
    headers = {"x-forwarded-user": "mallory"}
    assert actions.identity(_settings(user="alice"), headers) == actions.Identity(
        "alice", "NIGHTSHIFT_DASHBOARD_USER"
    )
    proxied = _settings(user="alice", identity_header="X-Forwarded-User")
    assert actions.identity(proxied, headers).name == "mallory"
    assert actions.identity(proxied, {}).name == "alice"
    assert actions.identity(_settings(), {}).name.endswith("@local")


def test_read_only_refuses_every_action() -> None:
    ro = _settings(read_only=True)
    who = actions.Identity("alice", "test")
    with pytest.raises(actions.ReadOnlyError):
        actions.record_label(ro, who, "a", "b", "a")
    with pytest.raises(actions.ReadOnlyError):
        actions.promote(ro, who, "2", "because")
    with pytest.raises(actions.ReadOnlyError):
        actions.rollback(ro, who, "because")


@pytest.mark.slow
def test_read_only_pages_hide_the_actions(dash_env: Filled, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIGHTSHIFT_DASHBOARD_READ_ONLY", "1")
    at = open_page("feedback")
    keys = {b.key for b in at.button}
    assert not keys & {"fb_a", "fb_b", "fb_a_unsafe", "fb_b_unsafe", "fb_skip"}
    assert "labelling is switched off" in "\n".join(i.value for i in at.info)
    assert any(c.value.startswith("`chatcmpl-") for c in at.caption), "the pair is still shown"
    assert "read-only" in "\n".join(c.value for c in at.sidebar.caption)
    at.switch_page("views/models.py").run()
    assert not {"promote", "rollback", "confirm"} & {b.key for b in at.button}
    assert "promotion and rollback is switched off" in "\n".join(i.value for i in at.info)


def _ref(tmp: Path, kind: str, n: int, **meta: object) -> ArtifactRef:
    return ArtifactRef(
        kind=kind, path=tmp / f"{kind}{n}", sha256=f"{n:064x}", metadata=dict(meta), location=None
    )


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_queries_and_labels_on_both_databases(
    db: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = request.getfixturevalue("catalog_url" if db == "sqlite" else "postgres_db")
    migrate(url)
    with session_scope(url) as s:
        nights = []
        for night in range(3):
            pipe = lineage.start_run(s, "pretrain")
            ingest = lineage.start_run(s, "ingest", parent_id=pipe.id)
            train = lineage.start_run(s, "pretrain", parent_id=pipe.id)
            src = lineage.record_artifact(s, _ref(tmp_path, "source", 1, source="shakespeare.txt"))
            corpus = lineage.record_artifact(s, _ref(tmp_path, "corpus", 2))
            model = lineage.record_artifact(s, _ref(tmp_path, "model", 10 + night))
            for run, art, d in ((ingest, src, "read"), (ingest, corpus, "wrote"), (train, corpus, "read")):
                lineage.add_edge(s, run.id, art.id, d)
            lineage.add_edge(s, train.id, model.id, "wrote")
            for r in (ingest, train, pipe):
                lineage.finish_run(s, r.id, "completed" if night else "failed")
            nights.append((pipe.id, model.id))
        for i, text in enumerate(("yes", "no")):
            s.add(
                Completion(
                    id=f"c{i}", model_artifact_id=nights[-1][1], endpoint="chat", prompt="q", response=text
                )
            )
    pipes = queries.pipeline_runs(url)
    assert [p.status for p in pipes] == ["completed", "completed", "failed"]
    sl = queries.lineage_slice(url, (pipes[0].id,))
    assert {a.kind for a in sl.artifacts.values()} == {"source", "corpus", "model"}
    assert sl.usage[nights[-1][1]].completions == 2
    older = queries.collapsed(url, tuple(p.id for p in pipes[1:]))
    assert older.stage_status == {("ingest", "completed"): 1, ("ingest", "failed"): 1,
                                  ("pretrain", "completed"): 1, ("pretrain", "failed"): 1}  # fmt: skip
    assert older.kind_counts == {"source": 1, "corpus": 1, "model": 2}
    shaped = queries.downstream(url, sl.artifacts[next(iter(sl.artifacts))].id)
    assert shaped is not None
    t = queries.trace(url, "c0")
    assert t is not None and [a.meta["source"] for a in t.sources] == ["shakespeare.txt"]
    # A user's text never reaches SQL as SQL: it is only ever a bound value.
    assert queries.trace(url, "c0' OR '1'='1") is None
    (pair,) = queries.label_pairs(url, "bob")
    fid = actions.record_label(
        _settings(url), actions.Identity("bob", "test"), pair.a.id, pair.b.id, "b_unsafe"
    )
    with session_scope(url) as s:
        row = s.get(Feedback, fid)
        assert (row.preferred, row.unsafe, row.source, row.labeller) == ("a", True, "dashboard", "bob")
        assert s.scalar(select(Feedback.id).where(Feedback.labeller == "bob")) == fid
    assert queries.label_pairs(url, "bob") == [] and len(queries.label_pairs(url, "carol")) == 1
    with pytest.raises(actions.ActionError, match="not in the catalog"):
        actions.record_label(_settings(url), actions.Identity("bob", "test"), "c0", "nope", "a")
