"""Every dashboard page, run by Streamlit's AppTest against a catalog and MLflow filled by real runs."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from mlflow import MlflowClient
from sqlalchemy import func, select

from catalog.db import session_scope
from catalog.models import Completion, Feedback
from tests.dashboard.conftest import REGISTERED, Filled, open_page

pytestmark = pytest.mark.slow


def _texts(at, kind: str) -> str:  # noqa: ANN001 - an AppTest
    return "\n".join(str(e.value) for e in getattr(at, kind))


def _dot(at) -> str:  # noqa: ANN001
    charts = at.get("graphviz_chart")
    assert charts, "the page drew no graph"
    return charts[0].proto.spec


def test_overview_shows_runs_champion_and_serving(dash_env: Filled) -> None:
    at = open_page("overview")
    runs = at.dataframe[0].value
    assert list(runs["pipeline"]) == ["pretrain"] * 3
    assert sorted(runs["status"]) == ["✓ completed", "✓ completed", "✗ failed"]
    assert runs["stages"].iloc[0] == "✓ ingest → ✓ tokenize → ✓ pretrain"
    assert runs["stages"].iloc[-1] == "✗ tokenize"
    assert all(str(link).startswith(dash_env.mlflow_uri) for link in runs["MLflow"])
    assert "ArtifactError" in _texts(at, "code"), "the newest failure's error is shown"
    assert "v1" in _texts(at, "markdown") and "@champion" in _texts(at, "markdown")
    assert {m.label for m in at.metric} >= {"val_loss", "unigram_entropy", "active deployments"}
    assert "Down: not reachable" in _texts(at, "warning")


def test_lineage_graph_from_sources_to_feedback(dash_env: Filled) -> None:
    at = open_page("lineage")
    folded = _dot(at)
    # Folded (the default): versions sit in their model's label, serving counts in the deployment's.
    assert "v1 @champion" in folded and f"deployment #{dash_env.deployment_id}" in folded
    assert not re.search(r'"v:\d+" \[', folded), "no separate version nodes when folded"
    at.toggle(key="lineage_fold").set_value(False).run()
    dot = _dot(at)
    assert dot.count(" [label=") > folded.count(" [label=")
    for expected in ("40 source files", "ingest", "corpus", "tokenizer", "tokens", "pretrain", "model"):
        assert expected in dot, expected
    assert 'label="v1 @champion"' in dot and 'label="v2 @challenger"' in dot
    assert f"deployment #{dash_env.deployment_id}" in dot
    # Counted, not drawn one by one (other tests may serve more: count what the catalog holds now).
    with session_scope(dash_env.catalog_url) as s:
        served = s.scalar(select(func.count()).where(Completion.model_artifact_id == dash_env.model_ids[0]))
    assert served >= 3 and f'label="{served} completions"' in dot
    assert 'label="1 completion"' in dot, "the second model answered once"
    assert re.search(r"\d+ feedback", dot)
    # Both nights wrote the same corpus (content-addressed): one node, not two.
    assert dot.count('label="corpus') == 1
    # The default selection is the champion's model; its details name who wrote it and what it shaped.
    assert any(m.value.startswith("### model") for m in at.markdown)
    assert "What it shaped" in _texts(at, "markdown")


def test_lineage_collapses_filters_and_selects(dash_env: Filled) -> None:
    at = open_page("lineage")
    at.number_input(key="lineage_expanded").set_value(1).run()
    dot = _dot(at)
    # The newest night stays expanded, the older good one too (its model is the champion); the
    # oldest, failed night collapses.
    assert "1 older run ·" in dot and "tokenize ×1" in dot
    at.multiselect(key="lineage_stages").unselect("ingest").unselect("serving").run()
    dot = _dot(at)
    assert "ingest" not in dot and "source files" not in dot and "completions" not in dot
    assert "tokenize" in dot
    nodes = at.selectbox(key="lineage_node")
    run_node = next(o for o in nodes.options if o.startswith("✓ pretrain"))
    nodes.select_index(nodes.options.index(run_node)).run()
    assert not at.exception
    assert any(m.value.startswith("### ✓ completed · pretrain") for m in at.markdown)
    assert "MLflow run" in _texts(at, "markdown")
    a_year_ago = datetime.now(UTC).date() - timedelta(days=300)
    at.date_input(key="lineage_dates").set_value((a_year_ago, a_year_ago + timedelta(days=1))).run()
    assert "Nothing matches these filters." in _texts(at, "info")


def test_lineage_traces_a_completion_to_its_sources(dash_env: Filled) -> None:
    at = open_page("lineage")
    at.text_input(key="trace_id").input(dash_env.completions["a1"]).run()
    assert not at.exception
    sources = next(
        df.value for df in at.dataframe if "item" in df.value.columns and "source" in df.value.columns
    )
    assert len(sources) == 40
    assert "deployment #" in _texts(at, "markdown")
    at.text_input(key="trace_id").input("chatcmpl-nope").run()
    assert "No completion `chatcmpl-nope`" in _texts(at, "error")


def test_runs_compares_nights(dash_env: Filled) -> None:
    at = open_page("runs")
    table = at.dataframe[0].value
    assert len(table) == 2, "two nights reached pretrain"
    assert {"val_loss", "train_loss", "unigram_entropy"} <= set(table.columns)
    assert table["val_loss"].notna().all()
    charts = at.get("vega_lite_chart")
    assert len(charts) == 2, "the trend and the loss curves"
    at.selectbox(key="runs_stage").set_value("ingest").run()
    assert at.dataframe[0].value["documents_kept"].tolist() == [40.0, 40.0]


def test_models_lists_versions_and_confirms_before_promoting(dash_env: Filled) -> None:
    at = open_page("models")
    versions = at.dataframe[0].value
    assert list(versions["version"]) == ["v2", "v1"]
    assert list(versions["aliases"]) == ["@challenger", "@champion"]
    assert versions["model artifact"].tolist() == [dash_env.model_shas[1][:12], dash_env.model_shas[0][:12]]
    # The gate report of the newest version shows what its runs logged (no verdict attached here).
    assert "No gate verdict is attached to v2" in _texts(at, "info")
    metrics = next(df.value for df in at.dataframe if "metric" in df.value.columns)
    assert {"val_loss", "unigram_entropy"} <= set(metrics["metric"])
    deployments = next(df.value for df in at.dataframe if "endpoint" in df.value.columns)
    assert deployments["status"].tolist() == ["active"] and deployments["by"].tolist() == [
        "nightshift-deploy"
    ]
    at.text_input(key="promote_reason").input("v2 passed the gates").run()
    at.button(key="promote").click().run()
    assert "Move @champion from v1 to v2?" in _texts(at, "warning")
    assert "alice" in _texts(at, "warning")
    at.button(key="cancel").click().run()
    assert "Move @champion" not in _texts(at, "warning")
    client = MlflowClient(dash_env.mlflow_uri)
    assert client.get_model_version_by_alias(REGISTERED, "champion").version == "1", "cancel changed nothing"
    # Confirmed: the alias moves and the registry records who and why; rollback moves it back.
    at.button(key="promote").click().run()
    at.button(key="confirm").click().run()
    assert not at.exception
    assert "v2 is champion, promoted by alice" in _texts(at, "success")
    assert "deploy/promote -p version=2" in _texts(at, "success"), "no Prefect API: says how to roll out"
    v2 = client.get_model_version_by_alias(REGISTERED, "champion")
    assert v2.version == "2" and v2.tags["nightshift.promoted_by"] == "alice"
    assert v2.tags["nightshift.promotion_reason"] == "v2 passed the gates"
    assert at.dataframe[0].value["aliases"].tolist() == ["@challenger @champion", ""]
    at.text_input(key="rollback_reason").input("v2 answers worse").run()
    at.button(key="rollback").click().run()
    at.button(key="confirm").click().run()
    assert "v1 is champion again, rolled back by alice" in _texts(at, "success")
    assert client.get_model_version_by_alias(REGISTERED, "champion").version == "1"
    history = next(df.value for df in at.dataframe if "action" in df.value.columns)
    assert history[["action", "version", "who"]].values.tolist()[:2] == [
        ["rollback", "1", "alice"],
        ["promote", "2", "alice"],
    ]


def test_feedback_label_lands_in_catalog(dash_env: Filled) -> None:
    at = open_page("feedback")
    pair_ids = {m.value.split("`")[1] for m in at.caption if m.value.startswith("`chatcmpl-")}
    assert len(pair_ids) == 2
    # Pairs across model versions come first.
    assert dash_env.completions["a2"] in pair_ids
    a_id = next(m.value.split("`")[1] for m in at.caption if m.value.startswith("`chatcmpl-"))
    at.text_input(key="fb_note").input("more on topic").run()
    at.button(key="fb_a").click().run()
    assert not at.exception
    assert "Saved label" in _texts(at, "success")
    with session_scope(dash_env.catalog_url) as s:
        rows = s.scalars(
            select(Feedback).where(Feedback.source == "dashboard", Feedback.completion_id.in_(pair_ids))
        ).all()
        assert len(rows) == 1
        row = rows[0]
        assert (row.kind, row.preferred, row.unsafe, row.labeller) == ("preference", "a", False, "alice")
        assert row.completion_id == a_id and {row.completion_id, row.other_completion_id} == pair_ids
        assert row.note == "more on topic"
    # The labelled pair is not offered again; the next one can be marked unsafe.
    next_ids = {m.value.split("`")[1] for m in at.caption if m.value.startswith("`chatcmpl-")}
    assert next_ids and next_ids != pair_ids
    first_b = [m.value.split("`")[1] for m in at.caption if m.value.startswith("`chatcmpl-")][1]
    at.button(key="fb_b_unsafe").click().run()
    with session_scope(dash_env.catalog_url) as s:
        row = s.scalars(select(Feedback).where(Feedback.completion_id.in_(next_ids), Feedback.unsafe)).one()
        assert row.preferred == "a" and row.other_completion_id == first_b
        assert row.note == "response B marked unsafe"
    assert at.dataframe[0].value["preferred"].tolist()[:2] == ["A", "A"]


def test_playground_says_when_serving_is_down(dash_env: Filled) -> None:
    at = open_page("playground")
    assert "The served model is down" in _texts(at, "warning")
    assert at.chat_input[0].proto.disabled


def test_an_artifact_gc_removed_says_so(dash_env: Filled) -> None:
    """The lineage keeps an artifact whose files gc removed, and says when it went."""
    from catalog.models import Artifact

    with session_scope(dash_env.catalog_url) as s:
        corpus = s.query(Artifact).filter_by(kind="corpus").first()
        corpus_id = corpus.id
        corpus.deleted_at, corpus.deleted_by = datetime(2026, 12, 6, 12, 0, tzinfo=UTC), "gc"
    try:
        at = open_page("lineage")
        at.toggle(key="lineage_fold").set_value(False).run()
        assert "(deleted by gc)" in _dot(at)
        at.selectbox(key="lineage_node").set_value(f"a:{corpus_id}").run()
        assert not at.exception
        assert "deleted by gc on 2026-12-06 12:00 UTC" in _texts(at, "info")
    finally:
        with session_scope(dash_env.catalog_url) as s:
            row = s.get(Artifact, corpus_id)
            row.deleted_at = row.deleted_by = None
