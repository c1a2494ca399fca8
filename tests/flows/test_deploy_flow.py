"""`deploy/promote`, `deploy/rollback` and `deploy/redeploy` as Prefect flows on a live Serve app."""

from __future__ import annotations

import httpx
import pytest
from mlflow import MlflowClient

from catalog.registry import Registry
from core.config import load_config
from flows.deploy import deploy
from serving.deploy import active_deployment, deploy_model
from tests.serving.conftest import make_model_artifact
from training.mlflow_model import log_model

pytestmark = pytest.mark.slow


def overrides_for(tmp_path, serve_port, mlflow_server, name):
    return {
        "serve.port": serve_port,
        "serve.auth": "none",
        "serve.app_name": name,
        "serve.route_prefix": f"/{name}",
        "serve.registered_model": name,
        "serve.torch_threads": 1,
        "tracking.catalog_url": f"sqlite:///{tmp_path}/catalog.db",
        "tracking.mlflow_uri": mlflow_server,
        "ray.num_cpus": 2,
    }


def served(endpoint: str) -> httpx.Headers:
    return httpx.get(endpoint + "/health", timeout=10).headers


def test_promote_by_hand_then_roll_the_champion_back(tmp_path, prefect_server, serve_port, mlflow_server):
    overrides = overrides_for(tmp_path, serve_port, mlflow_server, "promote-flow-test")
    client = MlflowClient(mlflow_server)
    run = client.create_run(client.create_experiment("promote-flow-test"))
    registry = Registry(mlflow_server, name="promote-flow-test")
    refs, versions = [], []
    for seed in (21, 22):
        ref = make_model_artifact(tmp_path / "art", seed=seed)
        uri = log_model(ref, run_id=run.info.run_id, tracking_uri=mlflow_server)
        refs.append(ref)
        versions.append(registry.register(uri).version)

    first = deploy(action="promote", version=versions[0], reason="first", preset="tiny", overrides=overrides)
    assert first["model"] == refs[0].sha256 and registry.champion().version == versions[0]
    second = deploy(action="promote", version=versions[1], preset="tiny", overrides=overrides)
    h = served(second["endpoint"])
    assert (
        h["x-nightshift-model"] == f"model:{refs[1].sha256}"
        and h["x-nightshift-model-version"] == versions[1]
    )

    back = deploy(action="rollback", reason="bad answers", preset="tiny", overrides=overrides)
    assert back["model"] == refs[0].sha256 and registry.champion().version == versions[0]
    assert served(back["endpoint"])["x-nightshift-model-version"] == versions[0]
    assert [h["action"] for h in registry.history()][-1] == "rollback"
    # A redeploy (after `nightshift down` and `up`) serves the same version, and says which: the
    # dashboard's Models page shows "v1", not "v?".
    again = deploy(action="redeploy", preset="tiny", overrides=overrides)
    assert served(again["endpoint"])["x-nightshift-model-version"] == versions[0]
    assert active_deployment(load_config("tiny", overrides))["registry_version"] == versions[0]


def test_without_registry_history_rollback_serves_the_previous_deployment(
    tmp_path, prefect_server, serve_port, mlflow_server
):
    overrides = overrides_for(tmp_path, serve_port, mlflow_server, "rollback-flow-test")
    cfg = load_config("tiny", overrides)
    a = make_model_artifact(tmp_path / "art", seed=11)
    b = make_model_artifact(tmp_path / "art", seed=12)
    deploy_model(cfg, a)
    second = deploy_model(cfg, b)
    state = deploy(action="rollback", preset="tiny", overrides=overrides, return_state=True)
    assert state.is_completed(), state.message
    out = state.result()
    assert out["model"] == a.sha256 and out["deployment_id"] > second.deployment_id
    assert served(second.endpoint)["x-nightshift-model"] == f"model:{a.sha256}"
    again = deploy(action="redeploy", preset="tiny", overrides=overrides)
    assert again["model"] == a.sha256
