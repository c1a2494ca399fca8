"""`deploy/rollback` as a Prefect flow: back to the previous model, recorded, with a run artifact."""

from __future__ import annotations

import httpx
import pytest

from flows.deploy import deploy
from serving.deploy import deploy_model
from tests.serving.conftest import make_model_artifact
from training.config import load_config

pytestmark = pytest.mark.slow


def test_rollback_flow_serves_the_previous_model(tmp_path, prefect_server, serve_port):
    overrides = {
        "serve.port": serve_port,
        "serve.auth": "none",
        "serve.app_name": "rollback-flow-test",
        "serve.route_prefix": "/rollback-flow-test",
        "serve.torch_threads": 1,
        "tracking.catalog_url": f"sqlite:///{tmp_path}/catalog.db",
        "ray.num_cpus": 2,
    }
    cfg = load_config("tiny", overrides)
    a = make_model_artifact(tmp_path / "art", seed=11)
    b = make_model_artifact(tmp_path / "art", seed=12)
    deploy_model(cfg, a)
    second = deploy_model(cfg, b)
    state = deploy(action="rollback", preset="tiny", overrides=overrides, return_state=True)
    assert state.is_completed(), state.message
    out = state.result()
    assert out["model"] == a.sha256 and out["deployment_id"] > second.deployment_id
    health = httpx.get(second.endpoint + "/health", timeout=10)
    assert health.headers["x-nightshift-model"] == f"model:{a.sha256}"
    # Redeploying keeps the same (rolled-back) model.
    again = deploy(action="redeploy", preset="tiny", overrides=overrides)
    assert again["model"] == a.sha256
