"""Tracker against a real MLflow server: nesting, params, metrics, inputs, outputs, failures."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mlflow import MlflowClient

from catalog import db, lineage
from catalog.artifacts import ArtifactRef, publish
from catalog.models import LineageEdge, Run
from catalog.tracking import (
    TAG_CATALOG_RUN,
    TAG_FLOW_RUN,
    TAG_PARENT,
    Tracker,
    flatten_params,
    night_label,
)
from catalog.untracked import NullStageRun

pytestmark = pytest.mark.slow


def _ref(root: Path, kind: str, files: dict[str, bytes]) -> ArtifactRef:
    with publish(kind, root=root) as st:
        for rel, data in files.items():
            (st.path / rel).parent.mkdir(parents=True, exist_ok=True)
            (st.path / rel).write_bytes(data)
    assert st.ref is not None
    return st.ref


@pytest.fixture
def tracker(mlflow_server: str, catalog_url: str) -> Tracker:
    return Tracker(
        tracking_uri=mlflow_server, experiment=f"test-{uuid.uuid4().hex[:8]}", catalog_url=catalog_url
    )


def _artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for info in client.list_artifacts(run_id, path):
        out |= _artifact_paths(client, run_id, info.path) if info.is_dir else {info.path}
    return out


def test_flatten_params() -> None:
    flat = flatten_params(
        {"model": {"n_layer": 2, "dims": [1, 2]}, "lr": 1e-3, "path": None, "s": "x" * 7000}
    )
    assert flat["model.n_layer"] == "2" and flat["model.dims"] == "[1, 2]" and flat["lr"] == "0.001"
    assert flat["path"] == "None"
    assert len(flat["s"]) == 6000 and flat["s"].endswith("...[truncated]")


def test_null_stage_run_records_nothing(tmp_path: Path) -> None:
    ref = _ref(tmp_path, "corpus", {"a.txt": b"a"})
    with NullStageRun() as run:
        run.use(ref)
        run.log_params({"a": {"b": 1}})
        run.log_metrics({"loss": 1.0}, step=1)
        run.log_text("x", "x.md")
        run.produce(ref)
    assert run.mlflow_run_id is None and run.url is None


def test_pipeline_and_stages(tracker: Tracker, mlflow_server: str, catalog_url: str, tmp_path: Path) -> None:
    corpus = _ref(tmp_path, "corpus", {"shard-0.txt": b"some text"})
    tokens = _ref(tmp_path, "tokens", {"train.bin": b"\x00" * 64, "big/val.bin": b"\x01" * 4096})
    config = {"preset": "tiny", "model": {"n_layer": 2, "n_embd": 32}}
    with tracker.pipeline(
        "nightly", config=config, prefect_flow_run_id="flow-123", tags={"who": "test"}
    ) as pipe:
        pipe.set_tag("nightshift.note", "hello")
        with pipe.stage("tokenize", config={"vocab_size": 512, "blob": "y" * 9000}) as st:
            st.use(corpus)
            for step in range(3):
                st.log_metrics({"loss": 3.0 - step}, step=step)
            st.log_text("# Data card\n", "DATACARD.md")
            st.log_dict({"docs": 1}, "stats.json")
            st.produce(tokens, max_file_bytes=1024)
        pipe.log_metrics({"total_s": 1.5})

    client = MlflowClient(mlflow_server)
    parent = client.get_run(pipe.mlflow_run_id)
    child = client.get_run(st.mlflow_run_id)
    assert parent.info.status == child.info.status == "FINISHED"
    assert parent.data.tags[TAG_FLOW_RUN] == "flow-123" and parent.data.tags["who"] == "test"
    assert parent.data.tags[TAG_CATALOG_RUN] == pipe.catalog_run_id
    assert parent.data.params["model.n_layer"] == "2" and parent.data.metrics["total_s"] == 1.5
    assert child.data.tags[TAG_PARENT] == pipe.mlflow_run_id
    assert child.data.tags["mlflow.runName"] == f"tokenize {night_label()}"  # the night: date (+ flow run)
    assert parent.info.run_name.startswith("nightly ") and child.data.tags["nightshift.stage"] == "tokenize"
    nested = client.search_runs([tracker.experiment_id], f"tags.`{TAG_PARENT}` = '{pipe.mlflow_run_id}'")
    assert [r.info.run_id for r in nested] == [st.mlflow_run_id]
    assert child.data.params["vocab_size"] == "512" and len(child.data.params["blob"]) == 6000
    assert [m.value for m in client.get_metric_history(st.mlflow_run_id, "loss")] == [3.0, 2.0, 1.0]
    assert child.data.tags["nightshift.output.tokens"] == tokens.sha256

    (dataset_input,) = child.inputs.dataset_inputs
    assert dataset_input.dataset.name == "corpus" and dataset_input.dataset.digest == corpus.sha256[:16]
    assert corpus.uri in dataset_input.dataset.source
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"

    files = _artifact_paths(client, st.mlflow_run_id)
    assert {"DATACARD.md", "stats.json", "tokens/artifact.json", "tokens/train.bin"} <= files
    assert "tokens/big/val.bin" not in files  # over max_file_bytes
    assert "config.json" in _artifact_paths(client, pipe.mlflow_run_id)
    assert pipe.url == f"{mlflow_server}/#/experiments/{tracker.experiment_id}/runs/{pipe.mlflow_run_id}"
    assert pipe.stage_url("tokenize") == st.url and st.url.endswith(st.mlflow_run_id)
    assert pipe.stage_url("never-ran") is None

    with db.session_scope(catalog_url) as s:
        prow, srow = s.get(Run, pipe.catalog_run_id), s.get(Run, st.catalog_run_id)
        assert prow.mlflow_run_id == pipe.mlflow_run_id and prow.prefect_flow_run_id == "flow-123"
        assert prow.config == config and prow.status == "completed" and prow.ended_at is not None
        assert srow.parent_id == prow.id and srow.mlflow_run_id == st.mlflow_run_id
        assert srow.status == "completed" and srow.config["vocab_size"] == 512
        assert [a.sha256 for a in lineage.inputs_of(s, srow.id)] == [corpus.sha256]
        assert [a.sha256 for a in lineage.outputs_of(s, srow.id)] == [tokens.sha256]
        assert s.query(LineageEdge).count() == 2


def test_failing_stage_marks_both_failed(tracker: Tracker, mlflow_server: str, catalog_url: str) -> None:
    with pytest.raises(RuntimeError, match="boom"), tracker.pipeline("nightly", config={}) as pipe:
        with pipe.stage("pretrain") as st:
            raise RuntimeError("boom")
    client = MlflowClient(mlflow_server)
    for run in (st, pipe):
        info = client.get_run(run.mlflow_run_id)
        assert info.info.status == "FAILED" and "boom" in info.data.tags["nightshift.error"]
    with db.session_scope(catalog_url) as s:
        for run in (st, pipe):
            row = s.get(Run, run.catalog_run_id)
            assert row.status == "failed" and "RuntimeError: boom" in row.error and row.ended_at is not None


def test_standalone_stage_and_attach(tracker: Tracker, mlflow_server: str, catalog_url: str) -> None:
    with tracker.standalone_stage("evaluate", config={"n": 3}) as st:
        st.log_metrics({"acc": 0.5})
    client = MlflowClient(mlflow_server)
    child = client.get_run(st.mlflow_run_id)
    parent = client.get_run(child.data.tags[TAG_PARENT])
    assert parent.info.run_name == child.info.run_name == f"evaluate {night_label()}"
    assert parent.info.status == "FINISHED" and parent.data.tags["nightshift.standalone"] == "true"

    with tracker.pipeline("nightly", config={}) as pipe:
        again = tracker.attach(pipe.catalog_run_id)
        assert again.mlflow_run_id == pipe.mlflow_run_id
        with again.stage("ingest") as st2:
            pass
    assert client.get_run(st2.mlflow_run_id).data.tags[TAG_PARENT] == pipe.mlflow_run_id
    with pytest.raises(ValueError, match="no tracked pipeline"):
        tracker.attach("missing")


def test_stages_in_threads(tracker: Tracker, catalog_url: str, tmp_path: Path) -> None:
    # Prefect tasks may run stages concurrently in worker threads: no shared active-run state.
    refs = [_ref(tmp_path, "shard", {"x.txt": str(i).encode()}) for i in range(4)]
    with tracker.pipeline("fanout", config={}) as pipe:

        def work(i: int) -> str:
            with pipe.stage(f"part-{i}", config={"i": i}) as st:
                st.use(refs[i])
                st.log_metrics({"i": float(i)})
                st.produce(refs[(i + 1) % 4], log_files=False)
            return st.catalog_run_id

        with ThreadPoolExecutor(4) as pool:
            ids = list(pool.map(work, range(4)))
    with db.session_scope(catalog_url) as s:
        rows = [s.get(Run, i) for i in ids]
        assert all(r.status == "completed" and r.parent_id == pipe.catalog_run_id for r in rows)
        assert s.query(LineageEdge).count() == 8
