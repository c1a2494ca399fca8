"""Lineage: record runs, artifacts and edges; walk a completion back to its source data."""

from __future__ import annotations

from pathlib import Path

import pytest

from catalog import db, lineage
from catalog.artifacts import ArtifactRef, publish
from catalog.models import Completion, Deployment, Feedback


def _ref(root: Path, kind: str, content: str) -> ArtifactRef:
    with publish(kind, root=root) as st:
        (st.path / "data.txt").write_text(content)
        st.metadata["content"] = content
    assert st.ref is not None
    return st.ref


def _build_graph(url: str, root: Path) -> dict[str, object]:
    """sources → ingest → corpus → tokenize → tokens+tokenizer → pretrain → model → completion."""
    refs = {name: _ref(root, kind, name) for name, kind in [
        ("src_a", "source"), ("src_b", "source"), ("corpus", "corpus"), ("tokens", "tokens"),
        ("tokenizer", "tokenizer"), ("model", "model"), ("unrelated", "source"),
    ]}  # fmt: skip
    with db.session_scope(url) as s:
        art = {name: lineage.record_artifact(s, ref) for name, ref in refs.items()}
        pipe = lineage.start_run(s, "nightly", prefect_flow_run_id="flow-1", config={"preset": "tiny"})
        runs = {}
        for stage, reads, writes in [
            ("ingest", ["src_a", "src_b"], ["corpus"]),
            ("tokenize", ["corpus"], ["tokens", "tokenizer"]),
            ("pretrain", ["tokens", "tokenizer"], ["model"]),
        ]:
            run = lineage.start_run(s, stage, parent_id=pipe.id, mlflow_run_id=f"mlflow-{stage}")
            for name in reads:
                lineage.add_edge(s, run.id, art[name].id, "read")
            for name in writes:
                lineage.add_edge(s, run.id, art[name].id, "wrote")
            lineage.finish_run(s, run.id, "completed")
            runs[stage] = run
        dep = Deployment(
            model_artifact_id=art["model"].id,
            registry_name="nightshift-gpt",
            registry_version="1",
            alias="champion",
            endpoint="http://127.0.0.1:8000/v1",
            created_by="test",
        )
        s.add(dep)
        s.flush()
        s.add(
            Completion(
                id="cmpl-1",
                deployment_id=dep.id,
                model_artifact_id=art["model"].id,
                endpoint="chat",
                prompt="hi",
                response="hello",
                params={"temperature": 0.7},
                prompt_tokens=1,
                completion_tokens=1,
                user="alice",
            )
        )
        s.add(
            Completion(
                id="cmpl-2",
                model_artifact_id=art["model"].id,
                endpoint="completions",
                prompt="a",
                response="b",
            )
        )
        s.flush()
        s.add(
            Feedback(
                kind="preference",
                completion_id="cmpl-1",
                other_completion_id="cmpl-2",
                preferred="a",
                labeller="bob",
                source="dashboard",
            )
        )
    return {"refs": refs, "art": art, "runs": runs, "pipe": pipe}


def test_record_artifact_is_get_or_create(any_db_url: str, tmp_path: Path) -> None:
    db.migrate(any_db_url)
    ref = _ref(tmp_path, "corpus", "x")
    with db.session_scope(any_db_url) as s:
        first = lineage.record_artifact(s, ref)
    with db.session_scope(any_db_url) as s:
        again = lineage.record_artifact(s, ref)
        assert again.id == first.id
        assert (again.kind, again.sha256, again.uri, again.size_bytes) == ("corpus", ref.sha256, ref.uri, 1)
        assert again.meta == {"content": "x"}
        run = lineage.start_run(s, "ingest")
        e1 = lineage.add_edge(s, run.id, again.id, "wrote")
        e2 = lineage.add_edge(s, run.id, again.id, "wrote")
        assert e1.id == e2.id
        with pytest.raises(ValueError, match="direction"):
            lineage.add_edge(s, run.id, again.id, "sideways")
        with pytest.raises(ValueError, match="status"):
            lineage.finish_run(s, run.id, "running")


def test_lineage_queries_and_trace(any_db_url: str, tmp_path: Path) -> None:
    db.migrate(any_db_url)
    g = _build_graph(any_db_url, tmp_path)
    art, runs = g["art"], g["runs"]
    with db.session_scope(any_db_url) as s:
        assert [r.stage for r in lineage.producers_of(s, art["corpus"].id)] == ["ingest"]
        assert {a.kind for a in lineage.inputs_of(s, runs["pretrain"].id)} == {"tokens", "tokenizer"}
        assert [a.kind for a in lineage.outputs_of(s, runs["ingest"].id)] == ["corpus"]
        assert lineage.producers_of(s, art["src_a"].id) == []

        ups = {a.id for a in lineage.upstream(s, art["model"].id)}
        expected = {art[n].id for n in ("tokens", "tokenizer", "corpus", "src_a", "src_b")}
        assert ups == expected

        trace = lineage.trace_completion(s, "cmpl-1")
        assert trace.model.id == art["model"].id
        assert trace.deployment is not None and trace.deployment.alias == "champion"
        assert {a.id for a in trace.sources} == {art["src_a"].id, art["src_b"].id}
        assert [r.stage for r in trace.runs] == ["pretrain", "tokenize", "ingest"]  # nearest first
        assert all(r.parent_id == g["pipe"].id and r.status == "completed" for r in trace.runs)
        assert trace.runs[0].mlflow_run_id == "mlflow-pretrain" and trace.runs[0].ended_at is not None
        assert trace.completion.params == {"temperature": 0.7}
        with pytest.raises(ValueError, match="cmpl-missing"):
            lineage.trace_completion(s, "cmpl-missing")


def test_upstream_is_cycle_safe(any_db_url: str, tmp_path: Path) -> None:
    db.migrate(any_db_url)
    with db.session_scope(any_db_url) as s:
        a = lineage.record_artifact(s, _ref(tmp_path, "model", "a"))
        b = lineage.record_artifact(s, _ref(tmp_path, "model", "b"))
        r1, r2 = lineage.start_run(s, "sft"), lineage.start_run(s, "dpo")
        lineage.add_edge(s, r1.id, b.id, "read")
        lineage.add_edge(s, r1.id, a.id, "wrote")
        lineage.add_edge(s, r2.id, a.id, "read")
        lineage.add_edge(s, r2.id, b.id, "wrote")
        graph = lineage.upstream_graph(s, a.id)
        assert [x.id for x in graph.artifacts] == [b.id]
        assert {r.id for r in graph.runs} == {r1.id, r2.id}
        assert graph.sources == []
