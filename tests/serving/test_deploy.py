"""Rollouts on a live Serve app: no downtime, catalog records, rollback, and models from the registry."""

from __future__ import annotations

import threading

import httpx
import mlflow
import pytest
from mlflow import MlflowClient

from catalog.db import session_scope
from catalog.models import Deployment
from core.config import load_config
from release.promotion import rollback
from serving.deploy import DeployError, active_deployment, deploy_model
from tests.serving.conftest import make_model_artifact
from training.mlflow_model import log_model


@pytest.fixture
def cfg(tmp_path, serve_port, mlflow_server):
    return load_config(
        "tiny",
        {
            "serve.port": serve_port,
            "serve.auth": "none",
            "serve.app_name": "deploy-test",
            "serve.route_prefix": "/deploy-test",
            "serve.torch_threads": 1,
            "tracking.catalog_url": f"sqlite:///{tmp_path}/catalog.db",
            "tracking.mlflow_uri": mlflow_server,
            "ray.num_cpus": 2,
        },
    )


def served_model(url: str) -> str:
    return httpx.get(url + "/health", timeout=10).headers["x-nightshift-model"]


def test_rollout_without_downtime_and_rollback(cfg, tmp_path):
    a = make_model_artifact(tmp_path / "art", seed=1)
    b = make_model_artifact(tmp_path / "art", seed=2)
    first = deploy_model(cfg, a, created_by="test")
    url = first.endpoint
    assert served_model(url) == f"model:{a.sha256}"

    seen: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def traffic():
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                r = c.post(
                    url + "/v1/completions",
                    json={"model": "nightshift-gpt", "prompt": "to be", "max_tokens": 4},
                )
                seen.append((r.status_code, r.headers.get("x-nightshift-model")))

    t = threading.Thread(target=traffic)
    t.start()
    try:
        second = deploy_model(cfg, b, created_by="test")
    finally:
        stop.set()
        t.join()
    assert second.previous_id == first.deployment_id
    codes = {c for c, _ in seen}
    assert codes == {200}, f"requests failed during the rollout: {codes}"
    models = [m for _, m in seen]
    assert models[-1] == f"model:{b.sha256}" or served_model(url) == f"model:{b.sha256}"
    with session_scope(cfg.tracking.catalog_url) as s:
        assert s.get(Deployment, first.deployment_id).status == "retired"
        assert s.get(Deployment, second.deployment_id).status == "active"

    back = rollback(cfg, who="test")
    assert back.model_sha256 == a.sha256 and served_model(url) == f"model:{a.sha256}"
    cur = active_deployment(cfg)
    assert cur["id"] == back.deployment_id and cur["alias"] == "rollback"


def test_serves_a_registry_alias_and_refuses_a_bad_model(cfg, tmp_path, mlflow_server):
    ref = make_model_artifact(tmp_path / "art", seed=3)
    client = MlflowClient(mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    exp = client.create_experiment("deploy-registry")
    run = client.create_run(exp)
    log_model(ref, run_id=run.info.run_id, tracking_uri=mlflow_server, registered_model_name="nightshift-gpt")
    client.set_terminated(run.info.run_id)
    version = client.get_latest_versions("nightshift-gpt")[0].version
    client.set_registered_model_alias("nightshift-gpt", "champion", version)

    res = deploy_model(cfg, "models:/nightshift-gpt@champion", created_by="test")
    h = httpx.get(res.endpoint + "/health").headers
    assert h["x-nightshift-model"] == f"model:{ref.sha256}" and h["x-nightshift-model-version"] == str(
        version
    )
    with session_scope(cfg.tracking.catalog_url) as s:
        row = s.get(Deployment, res.deployment_id)
        assert (row.registry_name, row.registry_version, row.alias) == (
            "nightshift-gpt",
            str(version),
            "champion",
        )

    broken = tmp_path / "broken"
    broken.mkdir()
    with pytest.raises(Exception, match="artifact"):
        deploy_model(cfg, str(broken))
    assert served_model(res.endpoint) == f"model:{ref.sha256}"  # the previous model keeps serving
    with pytest.raises(DeployError, match="first model"):
        rollback(cfg, who="test")
