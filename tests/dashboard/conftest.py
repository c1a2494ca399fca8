"""A catalog and an MLflow server filled by real tiny pipeline runs, for the dashboard's AppTests.

``filled`` (session) runs the stage functions of ``pretrain/nightly`` directly with the ``tiny``
preset (no Prefect: the flow adds nothing the dashboard reads but the flow-run id): a night that
fails in ``tokenize``, then two good ones; registers both models in the MLflow registry with aliases, and
records what serving records: a deployment, completions (two answers to one prompt from one model,
one from the other model) and an API rating. ``served`` deploys the first model on Ray Serve
with the real serving application, so the Playground and fresh Feedback pairs talk to a live model.

``dash_env`` (per test) points the dashboard at all this through the environment, the way a user
would, and clears Streamlit's caches so no test sees another's reads.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import streamlit as st
import yaml
from streamlit.testing.v1 import AppTest

from catalog.artifacts import ArtifactError
from catalog.db import session_scope
from catalog.models import Completion, Deployment, Feedback
from catalog.tracking import Tracker
from core.config import Config, load_config
from tests.conftest import free_port
from tests.flows.conftest import write_corpus
from training import stages

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
REGISTERED = "dash-test-gpt"
EXPERIMENT = "dashboard-test"
PROMPT = "to be or not to be"


@dataclass(frozen=True)
class Filled:
    """What the fixture made: where it lives and the ids tests look for."""

    root: Path
    catalog_url: str
    mlflow_uri: str
    config_path: Path
    model_paths: tuple[Path, Path]
    model_shas: tuple[str, str]
    model_ids: tuple[int, int]
    deployment_id: int
    completions: dict[str, str]  # name -> completion id


def _night(tracker: Tracker, cfg: Config, workdir: Path) -> tuple[stages.PretrainStageResult, str]:
    """One nightly run, as ``flows.pretrain.pretrain`` chains it; returns the model and its MLflow run id."""
    with tracker.pipeline("pretrain", config=cfg.to_dict(), tags={"preset": cfg.preset}) as pipe:
        with pipe.stage("ingest", config=cfg.to_dict()) as run:
            corpus = stages.ingest_stage(cfg, run)
        with pipe.stage("tokenize", config=cfg.to_dict()) as run:
            tokens = stages.tokenize_stage(cfg, run, corpus.artifact)
        with pipe.stage("pretrain", config=cfg.to_dict()) as run:
            model = stages.pretrain_stage(cfg, run, tokens.tokens, tokens.tokenizer, workdir=workdir)
            return model, run.mlflow_run_id


def _register(mlflow_uri: str, models: list[tuple[stages.PretrainStageResult, str]]) -> None:
    """Register each logged model as a version, champion = v1, challenger = v2 (what evaluation does)."""
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)
    client.create_registered_model(REGISTERED)
    for model, run_id in models:
        assert model.model_uri is not None
        client.create_model_version(
            REGISTERED, source=model.model_uri, run_id=run_id, model_id=model.model_uri.split("/")[-1]
        )
    client.set_registered_model_alias(REGISTERED, "champion", "1")
    client.set_registered_model_alias(REGISTERED, "challenger", "2")


def _serving_rows(catalog_url: str, model_ids: tuple[int, int]) -> tuple[int, dict[str, str]]:
    """A deployment of v1 and the completions and feedback serving would have recorded."""
    m1, m2 = model_ids
    rows = {
        "a1": (m1, PROMPT, "that is the question whether tis nobler in the mind"),
        "b1": (m1, PROMPT, "the night shift trains a model while the lab sleeps"),
        "a2": (m2, PROMPT, "to suffer the slings and arrows of outrageous fortune"),
        "other": (m1, "every stage writes", "an artifact with a hash"),
    }
    ids = {name: f"chatcmpl-dash{name}{'0' * 16}"[:34] for name in rows}
    with session_scope(catalog_url) as s:
        d = Deployment(
            model_artifact_id=m1,
            registry_name=REGISTERED,
            registry_version="1",
            alias="champion",
            endpoint="http://127.0.0.1:8000/v1",
            status="active",
            created_by="nightshift-deploy",
        )
        s.add(d)
        s.flush()
        for name, (model_id, prompt, response) in rows.items():
            s.add(
                Completion(
                    id=ids[name],
                    deployment_id=d.id if model_id == m1 else None,
                    model_artifact_id=model_id,
                    endpoint="chat",
                    prompt=prompt,
                    response=response,
                    prompt_tokens=5,
                    completion_tokens=10,
                )
            )
        s.flush()
        s.add(
            Feedback(kind="rating", completion_id=ids["other"], rating=1, labeller="api-user", source="api")
        )
        return d.id, ids


@pytest.fixture(scope="session")
def filled(tmp_path_factory: pytest.TempPathFactory, mlflow_server: str, ray_local: None) -> Filled:
    """A failed night, then two real tiny ones, registered and 'served' (rows), in a fresh catalog."""
    from catalog.models import Artifact

    root = tmp_path_factory.mktemp("dashboard")
    src = write_corpus(root / "src")
    catalog_url = f"sqlite:///{root / 'catalog.db'}"
    overrides = {
        "data.sources": [str(src)],
        "tracking.mlflow_uri": mlflow_server,
        "tracking.experiment": EXPERIMENT,
        "tracking.catalog_url": catalog_url,
        "tracking.artifact_root": str(root / "artifacts"),
        "ray.num_cpus": 2,
    }
    cfg = load_config("tiny", overrides)
    tracker = Tracker(tracking_uri=mlflow_server, experiment=EXPERIMENT, catalog_url=catalog_url)
    with pytest.raises(ArtifactError):  # the oldest night broke in tokenize: no corpus where it looks
        with tracker.pipeline("pretrain", config=cfg.to_dict()) as pipe, pipe.stage("tokenize") as run:
            stages.tokenize_stage(cfg, run, root / "no-such-corpus")
    night1 = _night(tracker, cfg, root / "work1")
    # The second night trains longer: a different model from the same (content-addressed) data.
    night2 = _night(tracker, load_config("tiny", {**overrides, "train.max_steps": 30}), root / "work2")
    _register(mlflow_server, [night1, night2])
    shas = (night1[0].model.sha256, night2[0].model.sha256)
    with session_scope(catalog_url) as s:
        ids = tuple(s.query(Artifact).filter_by(kind="model", sha256=sha).one().id for sha in shas)
    deployment_id, completions = _serving_rows(catalog_url, ids)  # type: ignore[arg-type]
    config_path = root / "dashboard.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "tracking": {
                    "mlflow_uri": str(mlflow_server),
                    "catalog_url": catalog_url,
                    "experiment": EXPERIMENT,
                }
            }
        )
    )
    return Filled(
        root=root,
        catalog_url=catalog_url,
        mlflow_uri=mlflow_server,
        config_path=config_path,
        model_paths=(night1[0].model.path, night2[0].model.path),
        model_shas=shas,
        model_ids=ids,  # type: ignore[arg-type]
        deployment_id=deployment_id,
        completions=completions,
    )


@pytest.fixture
def dash_env(filled: Filled, monkeypatch: pytest.MonkeyPatch) -> Filled:
    """Point the dashboard at ``filled``; nothing listens at the serving URL unless a test says so."""
    monkeypatch.setenv("NIGHTSHIFT_CONFIG", str(filled.config_path))
    monkeypatch.setenv("NIGHTSHIFT_REGISTERED_MODEL", REGISTERED)
    monkeypatch.setenv("NIGHTSHIFT_DASHBOARD_USER", "alice")
    monkeypatch.setenv("NIGHTSHIFT_SERVE_URL", f"http://127.0.0.1:{free_port()}/v1")
    monkeypatch.delenv("NIGHTSHIFT_DASHBOARD_READ_ONLY", raising=False)
    monkeypatch.delenv("NIGHTSHIFT_DASHBOARD_IDENTITY_HEADER", raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # promotions only move aliases here
    st.cache_data.clear()
    st.cache_resource.clear()
    return filled


def app() -> AppTest:
    """A fresh AppTest of the dashboard (generous timeout: the first run of a page talks to MLflow)."""
    return AppTest.from_file(str(APP), default_timeout=90)


def open_page(page: str) -> AppTest:
    """Run the app, then switch to ``views/<page>.py``; fails on any exception the page raised."""
    at = app().run()
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.fixture(scope="session")
def served(filled: Filled, serve_port: int) -> Iterator[str]:
    """The first night's model on Ray Serve (the real serving app, no auth); yields its /v1 URL."""
    from ray import serve

    from serving.app import build_app

    args = {
        "model": str(filled.model_paths[0]),
        "catalog_url": filled.catalog_url,
        "serve": {"auth": "none", "max_batch": 4, "torch_threads": 1, "replica_cpus": 0.1},
    }
    serve.run(build_app(args), name="dash-test", route_prefix="/dash-test")
    base = f"http://127.0.0.1:{serve_port}/dash-test"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{base}/health did not answer within 120 s")
        time.sleep(0.3)
    yield f"{base}/v1"
    serve.delete("dash-test")
