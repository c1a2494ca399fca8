"""Artifacts, lineage and tracked stages end to end on the pass's backend (see conftest.py).

The same tests run on the embedded defaults (``make test``) and on Postgres + S3
(``make test-postgres``); on the latter they also look inside the stores: rows in the Postgres
tables, objects in the bucket, MLflow's artifacts in S3.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from catalog import lineage
from catalog.artifacts import INDEX, ArtifactRef, open_artifact, publish
from catalog.db import migrate, session_scope
from catalog.models import Artifact
from tests.integration.conftest import Backend, rows

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORDS = "the night shift trains a model while the lab sleeps and every stage writes an artifact".split()


def _key(backend: Backend, url: str) -> str:
    """The bucket key of an ``s3://<bucket>/...`` URL."""
    return url.removeprefix(f"s3://{backend.bucket}/")


def test_artifacts_publish_and_open_by_uri(backend: Backend, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("NIGHTSHIFT_ARTIFACT_CACHE", str(tmp_path / "cache-writer"))
    files = {"train-00000.bin": uuid.uuid4().bytes * 64, "meta.json": b'{"vocab_size": 512}'}

    def publish_once(n: int) -> ArtifactRef:
        with publish("tokens", root=backend.artifact_root) as st:
            for rel, data in files.items():
                (st.path / rel).write_bytes(data)
            st.metadata["attempt"] = n
        assert st.ref is not None
        return st.ref

    ref = publish_once(1)
    assert ref.uri.startswith("s3://" if backend.name == "postgres" else "file://")
    # Elsewhere (a worker on another machine): nothing cached, only the URI the catalog keeps.
    monkeypatch.setenv("NIGHTSHIFT_ARTIFACT_CACHE", str(tmp_path / "cache-reader"))
    other = open_artifact(ref.uri, kind="tokens")
    assert other.sha256 == ref.sha256 and other.uri == ref.uri
    assert {rel: (other.path / rel).read_bytes() for rel in files} == files
    again = publish_once(2)
    assert again.uri == ref.uri and again.metadata == {"attempt": 1}  # idempotent: the first one stays
    if backend.name == "postgres":
        stored = backend.objects(_key(backend, ref.uri) + "/")
        prefix = _key(backend, ref.uri)
        assert stored == {
            f"{prefix}/train-00000.bin": len(files["train-00000.bin"]),
            f"{prefix}/meta.json": len(files["meta.json"]),
            f"{prefix}/{INDEX}": stored[f"{prefix}/{INDEX}"],
        }
    else:
        assert ref.path.parent.parent == Path(backend.artifact_root)


def test_catalog_lineage(backend: Backend) -> None:
    url = backend.new_catalog_url()
    migrate(url)

    def ref(kind: str) -> ArtifactRef:
        sha = uuid.uuid4().hex * 2
        return ArtifactRef(kind, Path("/unused"), sha, location=f"{backend.artifact_root}/{kind}/{sha[:16]}")

    corpus, tokens, model = ref("corpus"), ref("tokens"), ref("model")
    with session_scope(url) as s:
        pipe = lineage.start_run(s, "nightly")
        for stage, read, wrote in (("tokenize", corpus, tokens), ("pretrain", tokens, model)):
            run = lineage.start_run(s, stage, parent_id=pipe.id)
            lineage.add_edge(s, run.id, lineage.record_artifact(s, read).id, "read")
            lineage.add_edge(s, run.id, lineage.record_artifact(s, wrote).id, "wrote")
            lineage.finish_run(s, run.id, "completed")
        lineage.finish_run(s, pipe.id, "completed")
    with session_scope(url) as s:
        model_row = s.query(Artifact).filter_by(sha256=model.sha256).one()
        assert {a.kind for a in lineage.upstream(s, model_row.id)} == {"tokens", "corpus"}
    assert rows(url, "SELECT count(*) FROM lineage_edges") == [(4,)]
    assert sorted(rows(url, "SELECT stage, status FROM runs")) == [
        ("nightly", "completed"),
        ("pretrain", "completed"),
        ("tokenize", "completed"),
    ]
    uris = {kind: uri for kind, uri in rows(url, "SELECT kind, uri FROM artifacts")}
    assert uris["model"] == model.uri
    if backend.name == "postgres":
        assert url.startswith("postgresql+psycopg://")
        # The schema is Alembic's, in its own version table, beside whatever else shares the database.
        assert rows(url, "SELECT count(*) FROM catalog_alembic_version") == [(1,)]


def _corpus(root: str, n_docs: int = 60) -> ArtifactRef:
    """A small ``corpus`` artifact, as ingest writes it (shards of JSON lines + manifest)."""
    import random

    rng = random.Random(0)
    lines = []
    for i in range(n_docs):
        text_ = " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 80))) + "."
        lines.append(json.dumps({"id": f"doc{i}", "source": f"gen/{i}.txt", "text": text_}))
    with publish("corpus", root=root) as st:
        (st.path / "shards").mkdir()
        (st.path / "shards" / "docs-00000.jsonl").write_text("\n".join(lines) + "\n")
        manifest = {"shards": [{"path": "shards/docs-00000.jsonl", "documents": n_docs}], "sources": []}
        (st.path / "manifest.json").write_text(json.dumps(manifest))
    assert st.ref is not None
    return st.ref


def test_tracked_stages_land_in_the_backend(backend: Backend, tmp_path: Path, monkeypatch) -> None:
    """tokenize → pretrain under one pipeline run: MLflow runs, catalog rows and artifacts all land in
    the pass's stores, and the model opens by its catalog URI on a machine with an empty cache."""
    from mlflow import MlflowClient

    from catalog.tracking import Tracker
    from core.config import load_config
    from gpt.model_io import load_model
    from training import stages

    monkeypatch.setenv("NIGHTSHIFT_ARTIFACT_CACHE", str(tmp_path / "cache"))
    experiment = f"integration-{uuid.uuid4().hex[:8]}"
    cfg = load_config(
        "tiny",
        {
            "tracking.mlflow_uri": backend.mlflow_uri,
            "tracking.catalog_url": backend.new_catalog_url(),
            "tracking.artifact_root": backend.artifact_root,
            "tracking.experiment": experiment,
            "train.max_steps": 4,
            "train.val_every": 2,
            "train.checkpoint_every": 4,
            "train.sample_prompts": ["The"],
        },
    )
    corpus = _corpus(cfg.tracking.artifact_root)
    tracker = Tracker(
        tracking_uri=cfg.tracking.mlflow_uri, experiment=experiment, catalog_url=cfg.tracking.catalog_url
    )
    with tracker.pipeline("nightly", config=cfg.to_dict()) as pipe:
        with pipe.stage("tokenize") as run:
            tok = stages.tokenize_stage(cfg, run, corpus)
        with pipe.stage("pretrain") as run:
            pre = stages.pretrain_stage(cfg, run, tok.tokens, tok.tokenizer, workdir=tmp_path / "work")
            pretrain_run = run.mlflow_run_id

    client = MlflowClient(backend.mlflow_uri)
    exp = client.get_experiment_by_name(experiment)
    runs = {r.info.run_name.split()[0]: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"nightly", "tokenize", "pretrain"}
    assert "val_loss" in runs["pretrain"].data.metrics
    assert runs["pretrain"].data.tags["nightshift.output.model"] == pre.model.sha256
    logged = {a.path for a in client.list_artifacts(pretrain_run, "model")}
    assert "model/artifact.json" in logged and pre.model_uri

    uris = dict(rows(cfg.tracking.catalog_url, "SELECT kind, uri FROM artifacts"))
    assert set(uris) == {"corpus", "tokenizer", "tokens", "model"}
    assert uris["model"] == pre.model.uri
    with session_scope(cfg.tracking.catalog_url) as s:
        model_id = s.query(Artifact).filter_by(kind="model").one().id
        assert {a.kind for a in lineage.upstream(s, model_id)} == {"tokens", "tokenizer", "corpus"}

    # Downstream, elsewhere: only the catalog's URI, an empty cache.
    monkeypatch.setenv("NIGHTSHIFT_ARTIFACT_CACHE", str(tmp_path / "cache-elsewhere"))
    model, _tok, ref = load_model(open_artifact(uris["model"], kind="model"))
    assert ref.sha256 == pre.model.sha256 and model.num_params() > 0

    if backend.name == "postgres":
        root = _key(backend, backend.artifact_root)
        for kind, uri in uris.items():
            assert uri.startswith(f"{backend.artifact_root}/{kind}/")
            assert f"{_key(backend, uri)}/{INDEX}" in backend.objects(f"{root}/{kind}/")
        # MLflow's own records: its runs are rows in the stack's `mlflow` database ...
        found = rows(
            backend.database("mlflow"), "SELECT run_uuid FROM runs WHERE run_uuid = :r", r=pretrain_run
        )
        assert found == [(pretrain_run,)]
        # ... and the files it was given are objects under s3://<bucket>/mlflow/.
        mlflow_objects = backend.objects(f"mlflow/{exp.experiment_id}/")
        assert f"mlflow/{exp.experiment_id}/{pretrain_run}/artifacts/model/artifact.json" in mlflow_objects
        assert any(k.endswith("model.safetensors") for k in mlflow_objects), (
            "the logged MLflow model is in S3"
        )
