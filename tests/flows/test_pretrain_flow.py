"""The pretrain flow on a real Prefect server, a real MLflow server and a real catalog."""

from __future__ import annotations

import math
from datetime import UTC

import httpx
import pytest
from mlflow.tracking import MlflowClient

from catalog.db import session_scope
from catalog.lineage import upstream
from catalog.models import Artifact, Deployment, LineageEdge, Run
from flows.pretrain import pretrain
from tests.flows.conftest import write_corpus

pytestmark = pytest.mark.slow


def test_pretrain_flow_tracks_every_stage(tmp_path, mlflow_server, prefect_server, serve_port):
    src = write_corpus(tmp_path / "src")
    catalog_url = f"sqlite:///{tmp_path / 'catalog.db'}"
    overrides = {
        "data.sources": [str(src)],
        "tracking.mlflow_uri": mlflow_server,
        "tracking.experiment": "flow-test",
        "tracking.catalog_url": catalog_url,
        "tracking.artifact_root": str(tmp_path / "artifacts"),
        "ray.num_cpus": 2,
        "serve.port": serve_port,
        "serve.auth": "none",
        "serve.app_name": "flow-test",
        "serve.route_prefix": "/flow-test",
    }
    state = pretrain(preset="tiny", overrides=overrides, return_state=True)
    assert state.is_completed(), state.message
    hashes = state.result()
    assert set(hashes) == {"corpus", "tokenizer", "tokens", "model", "version"}

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("flow-test")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.tags["nightshift.prefect_flow_run_id"] == str(state.state_details.flow_run_id)
    children = {r.data.tags["nightshift.stage"]: r for r in runs if r.data.tags.get("mlflow.parentRunId")}
    # Every run name carries the night: the date the flow run was scheduled for and its name.
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as prefect:
        flow_run = prefect.read_flow_run(state.state_details.flow_run_id)
    night = f"{flow_run.expected_start_time.astimezone(UTC):%Y-%m-%d} {flow_run.name}"
    assert (
        parent.info.run_name == f"pretrain {night}" and children["ingest"].info.run_name == f"ingest {night}"
    )
    assert set(children) == {"ingest", "tokenize", "pretrain", "evaluate", "deploy"}
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children.values())
    ingest_run = children["ingest"]
    assert ingest_run.data.metrics["documents_kept"] == 40  # 41 in, the exact duplicate dropped
    assert ingest_run.data.metrics["dropped.exact_duplicate"] == 1
    assert "DATACARD.md" in {a.path for a in client.list_artifacts(ingest_run.info.run_id)}
    assert children["tokenize"].inputs.dataset_inputs, "tokenize logs its corpus as an input dataset"
    pre = children["pretrain"]
    # The generated corpus draws words uniformly at random, so no model beats its unigram entropy by
    # much; what must hold is that training learned (below the uniform loss) and logged its curve.
    assert pre.data.metrics["val_loss"] < math.log(512) - 0.3
    curve = [m.value for m in client.get_metric_history(pre.info.run_id, "train_loss")]
    assert len(curve) > 1 and curve[-1] < curve[0]
    assert "samples.md" in {a.path for a in client.list_artifacts(pre.info.run_id)}

    with session_scope(catalog_url) as s:
        kinds = {a.kind for a in s.query(Artifact)}
        assert {"source", "corpus", "tokenizer", "tokens", "model"} <= kinds
        stages = {r.stage for r in s.query(Run)}
        assert {"ingest", "tokenize", "pretrain"} <= stages
        model = s.query(Artifact).filter_by(kind="model").one()
        assert model.sha256 == hashes["model"]
        # The model's lineage reaches back to the generated source files.
        sources = {a.kind for a in upstream(s, model.id)}
        assert {"tokens", "tokenizer", "corpus", "source"} <= sources
        tokens = s.query(Artifact).filter_by(kind="tokens").one()
        assert tokens.sha256 == hashes["tokens"]
        assert s.query(LineageEdge).count() >= 4
        # The deploy stage served the new model and recorded it.
        dep = s.query(Deployment).filter_by(status="active").one()
        assert (
            dep.model_artifact_id == model.id and dep.endpoint == f"http://127.0.0.1:{serve_port}/flow-test"
        )
    health = httpx.get(f"http://127.0.0.1:{serve_port}/flow-test/health", timeout=10)
    assert health.headers["x-nightshift-model"] == f"model:{hashes['model']}"


def test_a_worse_candidate_is_rejected_and_a_better_one_served(
    tmp_path, mlflow_server, prefect_server, serve_port
):
    """Three nights on one registry: a champion, a far shorter-trained candidate (rejected, the
    served model does not change), then a longer-trained one (promoted and served)."""
    from catalog.registry import Registry

    src = write_corpus(tmp_path / "src")
    base = {
        "data.sources": [str(src)],
        "tracking.mlflow_uri": mlflow_server,
        "tracking.experiment": "gate-test",
        "tracking.catalog_url": f"sqlite:///{tmp_path / 'catalog.db'}",
        "tracking.artifact_root": str(tmp_path / "artifacts"),
        "ray.num_cpus": 2,
        "serve.port": serve_port,
        "serve.auth": "none",
        "serve.app_name": "gate-test",
        "serve.route_prefix": "/gate-test",
        "serve.registered_model": "gate-test-gpt",
        # Each night trains its own model (a warm start would continue the champion, as in
        # tests/nightshift/test_nights.py), so a short night is a weaker candidate.
        "train.init": "scratch",
    }
    url = f"http://127.0.0.1:{serve_port}/gate-test/health"
    registry = Registry(mlflow_server, name="gate-test-gpt")

    first = pretrain(preset="tiny", overrides={**base, "train.max_steps": 30}, return_state=True)
    assert first.is_completed(), first.message
    champion = first.result()
    assert registry.champion().version == champion["version"]
    assert httpx.get(url, timeout=10).headers["x-nightshift-model"] == f"model:{champion['model']}"

    worse = pretrain(preset="tiny", overrides={**base, "train.max_steps": 2}, return_state=True)
    assert worse.is_failed() and worse.name == "GateFailed", worse
    assert "perplexity" in worse.message.lower() and "keeps serving" in worse.message
    assert registry.champion().version == champion["version"]
    assert httpx.get(url, timeout=10).headers["x-nightshift-model"] == f"model:{champion['model']}"
    rejected = registry.challenger()
    assert rejected.gate == "failed" and rejected.version != champion["version"]

    better = pretrain(preset="tiny", overrides={**base, "train.max_steps": 60}, return_state=True)
    assert better.is_completed(), better.message
    new = better.result()
    assert registry.champion().version == new["version"] != champion["version"]
    health = httpx.get(url, timeout=10)
    assert health.headers["x-nightshift-model"] == f"model:{new['model']}"
    assert health.headers["x-nightshift-model-version"] == new["version"]


def test_a_night_that_failed_at_deploy_resumes_there(
    tmp_path, mlflow_server, prefect_server, serve_port, monkeypatch
):
    """A night fails at deploy (injected); run again, it reuses every stage before deploy from the
    catalog's stage memos (no retraining, no second verdict) and serves the model it promoted."""
    import flows.tasks
    from catalog.registry import Registry

    src = write_corpus(tmp_path / "src")
    overrides = {
        "data.sources": [str(src)],
        "tracking.mlflow_uri": mlflow_server,
        "tracking.experiment": "resume-test",
        "tracking.catalog_url": f"sqlite:///{tmp_path / 'catalog.db'}",
        "tracking.artifact_root": str(tmp_path / "artifacts"),
        "ray.num_cpus": 2,
        "serve.port": serve_port,
        "serve.auth": "none",
        "serve.app_name": "resume-test",
        "serve.route_prefix": "/resume-test",
        "serve.registered_model": "resume-test-gpt",
    }
    real_deploy = flows.tasks.deploy_stage

    def broken_deploy(*args, **kwargs):
        raise RuntimeError("injected: the Serve rollout failed")

    monkeypatch.setattr(flows.tasks, "deploy_stage", broken_deploy)
    failed = pretrain(preset="tiny", overrides=overrides, return_state=True)
    assert failed.is_failed() and "injected" in failed.message, failed
    monkeypatch.setattr(flows.tasks, "deploy_stage", real_deploy)
    registry = Registry(mlflow_server, name="resume-test-gpt")
    version = registry.champion().version  # evaluate promoted it before deploy failed

    again = pretrain(preset="tiny", overrides=overrides, return_state=True)
    assert again.is_completed(), again.message
    out = again.result()
    assert out["version"] == version == registry.champion().version
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("resume-test")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    first_id, second_id = (str(s.state_details.flow_run_id) for s in (failed, again))

    def stages(flow_run_id):
        return {
            r.data.tags["nightshift.stage"]: r
            for r in runs
            if r.data.tags.get("mlflow.parentRunId") and _flow_run_of(client, r) == flow_run_id
        }

    first, second = stages(first_id), stages(second_id)
    for name in ("ingest", "tokenize", "pretrain", "evaluate"):
        assert second[name].data.tags.get("nightshift.cached_from") == first[name].info.run_id, name
        assert second[name].data.metrics["cached"] == 1.0
    assert "nightshift.cached_from" not in second["deploy"].data.tags
    health = httpx.get(f"http://127.0.0.1:{serve_port}/resume-test/health", timeout=10)
    assert health.headers["x-nightshift-model"] == f"model:{out['model']}"


def _flow_run_of(client, run):
    """The Prefect flow run of a stage's MLflow run (tagged on its parent)."""
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    return parent.data.tags.get("nightshift.prefect_flow_run_id")
