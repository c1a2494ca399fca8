"""Local services off loopback: refused without auth; with it, MLflow and Prefect answer only
credentials (real servers, started from their infra/local scripts on loopback)."""

from __future__ import annotations

import base64

import pytest

from core.config import ConfigError, load_config
from nightshift import stack
from nightshift.services import free_port_overrides, http_json, launch, stop, wait_healthy


def test_a_host_off_loopback_needs_every_service_to_have_auth():
    with pytest.raises(ConfigError) as e:
        load_config("tiny", {"stack.host": "0.0.0.0"})
    text = str(e.value)
    for needed in ("stack.mlflow_auth: true", "stack.prefect_auth: true", "stack.dashboard_identity_header"):
        assert needed in text
    cfg = load_config(
        "tiny",
        {
            "stack.host": "10.1.2.3",
            "stack.mlflow_auth": True,
            "stack.prefect_auth": True,
            "stack.dashboard_identity_header": "X-Forwarded-User",
        },
    )
    services = stack._services(cfg, stack.nightshift_home(), stack.REPO_ROOT)
    # The dashboard stays on loopback behind the proxy; the header is what it trusts.
    assert services["dashboard"].env["DASHBOARD_HOST"] == "127.0.0.1"
    assert services["dashboard"].env["NIGHTSHIFT_DASHBOARD_IDENTITY_HEADER"] == "X-Forwarded-User"


@pytest.mark.slow
def test_mlflow_and_prefect_answer_only_credentials(tmp_path, monkeypatch):
    monkeypatch.setenv("NIGHTSHIFT_HOME", str(tmp_path))
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-client"))
    cfg = load_config(
        "tiny", {**free_port_overrides(), "stack.mlflow_auth": True, "stack.prefect_auth": True}
    )
    home = stack.nightshift_home()
    for sub in ("stack", "logs"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    stack._ensure_server_auth(cfg, home)
    services = stack._services(cfg, home, stack.REPO_ROOT)
    names = ("mlflow", "prefect-server")
    try:
        pids = {n: launch(home, services[n]) for n in names}
        for n in names:
            wait_healthy(home, services[n], pids[n], 120)
        env = stack.stack_env(cfg)
        mlflow = f"{env['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/experiments/search"
        assert http_json(mlflow, body={"max_results": 1})[0] == 401
        good = "Basic " + base64.b64encode(f"admin:{env['MLFLOW_TRACKING_PASSWORD']}".encode()).decode()
        assert http_json(mlflow, body={"max_results": 1}, headers={"Authorization": good})[0] == 200
        prefect = f"{env['PREFECT_API_URL']}/flows/filter"
        assert http_json(prefect, body={})[0] == 401
        auth = "Basic " + base64.b64encode(env["PREFECT_API_AUTH_STRING"].encode()).decode()
        assert http_json(prefect, body={}, headers={"Authorization": auth})[0] == 200
    finally:
        for n in names:
            stop(home, n)
