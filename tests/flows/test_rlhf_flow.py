"""RLHF inside pretrain/nightly and as rlhf/adhoc: a label posted to /v1/feedback reaches the next
run's preference snapshot, linked to the feedback row and to the reward model that used it."""

from __future__ import annotations

import httpx
import openai
import pytest
from mlflow.tracking import MlflowClient

from catalog.db import session_scope
from catalog.lineage import inputs_of
from catalog.models import Artifact, Run
from flows.pretrain import pretrain
from flows.rlhf import rlhf
from tests.flows.conftest import write_corpus
from training.rlhf.feedback import feedback_of

pytestmark = pytest.mark.slow


def test_feedback_reaches_the_next_rlhf_snapshot(tmp_path, mlflow_server, prefect_server, serve_port):
    src = write_corpus(tmp_path / "src")
    catalog_url = f"sqlite:///{tmp_path / 'catalog.db'}"
    overrides = {
        "data.sources": [str(src)],
        "tracking.mlflow_uri": mlflow_server,
        "tracking.experiment": "rlhf-flow-test",
        "tracking.catalog_url": catalog_url,
        "tracking.artifact_root": str(tmp_path / "artifacts"),
        "ray.num_cpus": 2,
        "serve.port": serve_port,
        "serve.auth": "none",
        "serve.app_name": "rlhf-test",
        "serve.route_prefix": "/rlhf-test",
        "serve.registered_model": "rlhf-test-gpt",
        "rlhf.enabled": True,
        "rlhf.algorithm": "dpo",
        "eval.prompt_format": "chat",
        # The flow's wiring is under test, not the policy's quality: a few steps per stage.
        "rlhf.sft.steps": 30,
        "rlhf.sft.batch_size": 8,
        "rlhf.sft.warmup_steps": 3,
        "rlhf.reward.steps": 30,
        "rlhf.reward.batch_size": 8,
        "rlhf.reward.warmup_steps": 3,
        "rlhf.dpo.steps": 20,
        "rlhf.dpo.batch_size": 8,
        "rlhf.dpo.warmup_steps": 2,
    }
    night = pretrain(preset="tiny", overrides=overrides, return_state=True)
    assert night.is_completed(), night.message
    out = night.result()
    assert {"policy", "preferences"} <= set(out)
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("rlhf-flow-test")
    names = {r.data.tags.get("nightshift.stage") for r in client.search_runs([exp.experiment_id])}
    assert {"sft", "reward", "dpo", "evaluate", "deploy"} <= names
    base = f"http://127.0.0.1:{serve_port}/rlhf-test"
    assert httpx.get(base + "/health").headers["x-nightshift-model"] == f"model:{out['policy']}"

    # A user compares two answers of the served policy.
    api = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0)
    chat = api.chat.completions.create(
        model="nightshift-gpt",
        messages=[{"role": "user", "content": "Copy: red fox"}],
        n=2,
        max_tokens=8,
        seed=5,
    )
    a, b = (c.model_extra["completion_id"] for c in chat.choices)
    r = httpx.post(
        base + "/v1/feedback", json={"completion_id": a, "other_completion_id": b, "preferred": "b"}
    )
    assert r.status_code == 200, r.text
    feedback_id = r.json()["id"]

    again = rlhf(preset="tiny", overrides=overrides, return_state=True)
    assert again.is_completed() or again.name == "GateFailed", again
    snap_sha = again.result()["preferences"] if again.is_completed() else None
    with session_scope(catalog_url) as s:
        snaps = s.query(Artifact).filter_by(kind="preferences").order_by(Artifact.id).all()
        newest = snaps[-1]
        assert snap_sha in (None, newest.sha256)
        assert feedback_id in [f.id for f in feedback_of(s, newest.id)]
        # Lineage: the reward run of the adhoc RLHF read this snapshot.
        reward_runs = s.query(Run).filter_by(stage="reward").order_by(Run.started_at).all()
        assert newest.id in [x.id for x in inputs_of(s, reward_runs[-1].id)]
