"""gc on a stack aged by a dozen tiny nights: what something references stays and loads, the rest goes.

The nights are the real stage functions (Ray Data ingestion, tokenizer, Lightning pretraining) on
the pass's backend (local disk, or Postgres + S3), tracked in its MLflow, registered in its registry;
a champion is promoted every fourth night and served (the deployment and completion rows the
serving app records). Then the retention rules run with small numbers so that most of it goes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from catalog.artifacts import open_artifact
from catalog.db import session_scope
from catalog.lineage import trace_completion
from catalog.models import Artifact, Completion, Deployment
from catalog.registry import Registry
from catalog.retention import Places, Retention, collect, dir_bytes
from catalog.storage import is_url
from catalog.tracking import Tracker
from core.config import load_config
from gpt.model_io import load_model
from serving.loader import fetch
from tests.flows.conftest import write_corpus
from tests.integration.conftest import Backend
from training import stages

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NIGHTS = 12
REGISTERED = "gc-test-gpt"
RULES = Retention(keep_nights=3, keep_versions=2, min_age_s=0, keep_history_nights=6)


def _artifact_exists(uri: str) -> bool:
    if is_url(uri):
        from catalog.storage import ObjectStore

        return bool(ObjectStore(uri).sizes())
    return Path(uri.removeprefix("file://")).exists()


@pytest.fixture(scope="module")
def aged(backend: Backend, tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> dict:
    root = tmp_path_factory.mktemp("aged")
    catalog_url = backend.new_catalog_url()
    experiment = f"gc-{root.name}"
    tracker = Tracker(tracking_uri=backend.mlflow_uri, experiment=experiment, catalog_url=catalog_url)
    registry = Registry(backend.mlflow_uri, name=REGISTERED)
    versions, completions = [], []
    for night in range(1, NIGHTS + 1):
        src = write_corpus(root / f"src{night}", n_docs=8, seed=night)  # new data every night
        cfg = load_config(
            "tiny",
            {
                "data.sources": [str(src)],
                "tracking.mlflow_uri": backend.mlflow_uri,
                "tracking.experiment": experiment,
                "tracking.catalog_url": catalog_url,
                "tracking.artifact_root": backend.artifact_root,
                "ray.num_cpus": 2,
                "train.max_steps": 2,
                "train.val_every": 2,
                "train.checkpoint_every": 2,
                "train.sample_prompts": [""],
            },
        )
        with tracker.pipeline("pretrain", config=cfg.to_dict()) as pipe:
            with pipe.stage("ingest") as run:
                corpus = stages.ingest_stage(cfg, run)
            with pipe.stage("tokenize") as run:
                tokens = stages.tokenize_stage(cfg, run, corpus.artifact)
            with pipe.stage("pretrain") as run:
                workdir = root / "runs" / f"pretrain-night{night:02d}"
                model = stages.pretrain_stage(cfg, run, tokens.tokens, tokens.tokenizer, workdir=workdir)
        assert model.model_uri is not None
        version = registry.register(model.model_uri).version
        versions.append(version)
        if night % 4 == 0:  # a champion every fourth night, served
            registry.promote(version, who="test", reason="aged night")
            with session_scope(catalog_url) as s:
                row = s.query(Artifact).filter_by(kind="model", sha256=model.model.sha256).one()
                for d in s.query(Deployment).filter_by(status="active"):
                    d.status = "retired"
                d = Deployment(
                    model_artifact_id=row.id,
                    registry_name=REGISTERED,
                    registry_version=version,
                    status="active",
                )
                s.add(d)
                s.flush()
                cid = f"cmpl-aged{night:02d}"
                s.add(
                    Completion(
                        id=cid, deployment_id=d.id, model_artifact_id=row.id, endpoint="completions",
                        prompt="the", response=" night", prompt_tokens=1, completion_tokens=1,
                    )
                )  # fmt: skip
                completions.append(cid)
    # Replicas cache what they serve; an old version's copy is there too.
    serve_cache = root / "serve-cache"
    for v in (versions[0], versions[-1]):
        fetch(f"models:/{REGISTERED}/{v}", tracking_uri=backend.mlflow_uri, cache_dir=serve_cache)
    places = Places(
        artifact_root=backend.artifact_root,
        checkpoints=root / "runs",
        caches=(serve_cache, root / "registry-cache"),
        mlflow_stores=backend.mlflow_stores,
    )
    before = dir_bytes(root / "runs") + dir_bytes(serve_cache)
    result = collect(catalog_url, places, RULES, registry=registry)
    return {
        "root": root,
        "catalog_url": catalog_url,
        "registry": registry,
        "versions": versions,
        "completions": completions,
        "places": places,
        "result": result,
        "before": before,
        "serve_cache": serve_cache,
    }


def test_referenced_models_still_load(aged: dict) -> None:
    registry: Registry = aged["registry"]
    v = aged["versions"]
    champion, challenger = registry.champion(), registry.challenger()
    assert champion is not None and champion.version == v[11]  # night 12 was promoted
    assert challenger is not None and challenger.version == v[11]
    # Kept: aliased, the newest two, and the deployed ones (active v12, rollback target v8).
    assert {x.version for x in registry.versions()} == {v[10], v[11], v[7]}
    assert sorted(aged["result"].versions, key=int) == sorted(set(v) - {v[10], v[11], v[7]}, key=int)
    for version in (v[10], v[11], v[7]):
        path = registry.model_artifact_path(version, aged["root"] / "load-check")
        model, tokenizer, ref = load_model(path)
        assert ref.sha256 == registry.get(version).artifact_sha256
    with session_scope(aged["catalog_url"]) as s:
        for d in s.query(Deployment).order_by(Deployment.created_at.desc()).limit(2):
            assert d.model_artifact.deleted_at is None
            open_artifact(d.model_artifact.uri, kind="model")  # on disk (or in the bucket), verified


def test_everything_unreferenced_is_gone_and_marked(aged: dict) -> None:
    result = aged["result"]
    removed = {(a["kind"], a["sha256"]) for a in result.artifacts}
    assert {"corpus", "tokens", "tokenizer", "model"} <= {k for k, _ in removed}
    with session_scope(aged["catalog_url"]) as s:
        rows = s.query(Artifact).filter(Artifact.kind != "source").all()
        for row in rows:
            if (row.kind, row.sha256) in removed:
                assert row.deleted_at is not None and row.deleted_by == "gc"
                assert not _artifact_exists(row.uri), row.uri
            else:
                assert row.deleted_at is None
                assert _artifact_exists(row.uri), row.uri
    # Checkpoints of the three kept nights only; the serve cache keeps the kept version's copy.
    left = sorted(p.name for p in (aged["root"] / "runs").iterdir() if not p.name.startswith("."))
    assert left == [f"pretrain-night{n:02d}" for n in (10, 11, 12)]
    cache = [p.name for p in aged["serve_cache"].iterdir() if not p.name.startswith(".")]
    assert cache == [f"{REGISTERED}-v{aged['versions'][-1]}"]
    assert result.freed_bytes > 0
    assert dir_bytes(aged["root"] / "runs") + dir_bytes(aged["serve_cache"]) < aged["before"]
    # The logged models of pruned versions and old nights are purged from MLflow (`mlflow gc`).
    from mlflow.exceptions import MlflowException

    assert result.logged_models and not result.notes, result.notes
    with pytest.raises(MlflowException):
        aged["registry"].client.get_logged_model(result.logged_models[0])


def test_lineage_of_a_served_completion_still_reads(aged: dict) -> None:
    first = aged["completions"][0]  # answered by night 4's champion, whose data gc removed
    with session_scope(aged["catalog_url"]) as s:
        trace = trace_completion(s, first)
        kinds = {a.kind for a in trace.lineage.artifacts}
        assert {"tokens", "tokenizer", "corpus", "source"} <= kinds
        gone = [a for a in trace.lineage.artifacts if a.deleted_at is not None]
        assert gone, "night 4's corpus and tokens were removed, yet their rows and edges stay"


def test_a_second_gc_removes_nothing(aged: dict) -> None:
    again = collect(
        aged["catalog_url"],
        aged["places"],
        RULES,
        registry=aged["registry"],
    )
    assert not again.artifacts and not again.paths and not again.versions and not again.logged_models
    assert not again.mlflow_runs


def test_mlflow_keeps_the_history_of_the_newest_nights(aged: dict) -> None:
    """Runs of nights 1-6 are gone from MLflow (keep_history_nights 6); the catalog keeps their rows."""
    from mlflow.exceptions import MlflowException

    from catalog.models import Run

    client = aged["registry"].client
    with session_scope(aged["catalog_url"]) as s:
        pipelines = s.query(Run).filter(Run.parent_id.is_(None)).order_by(Run.started_at).all()
        assert len(pipelines) == NIGHTS
        old, recent = pipelines[0], pipelines[6]
        old_ids = [old.mlflow_run_id, *(c.mlflow_run_id for c in old.children)]
        recent_id = recent.mlflow_run_id
    assert set(old_ids) <= set(aged["result"].mlflow_runs)
    for run_id in old_ids:
        with pytest.raises(MlflowException):
            client.get_run(run_id)  # purged by `mlflow gc`, not only marked deleted
    assert client.get_run(recent_id).info.lifecycle_stage == "active"
