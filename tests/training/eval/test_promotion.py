"""The nightly decision end to end: a worse candidate is rejected and the champion stays; a better one
is promoted; rollback returns to the previous champion. Real MLflow server, registry and catalog."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from catalog.artifacts import ArtifactRef
from catalog.registry import CHALLENGER, CHAMPION, Registry
from catalog.tracking import Tracker
from core.config import Config, TrackingConfig
from gpt.model_io import save_model
from training.eval.stages import evaluate_stage, record_in_registry
from training.mlflow_model import log_model

from .conftest import LMData, Models, data_config, eval_config, train

pytestmark = pytest.mark.slow


def test_worse_candidate_rejected_better_promoted(
    lm_data: LMData, models: Models, mlflow_server: str, catalog_url: str, tmp_path: Path
) -> None:
    stronger = save_model(
        train(lm_data.tokens, 200), lm_data.tokenizer.path / "tokenizer.json", root=tmp_path
    )
    tracker = Tracker(
        tracking_uri=mlflow_server, experiment=f"nightly-{uuid.uuid4().hex[:8]}", catalog_url=catalog_url
    )
    tracking = TrackingConfig(
        mlflow_uri=mlflow_server, catalog_url=catalog_url, artifact_root=str(tmp_path / "arts")
    )
    cfg = Config(seed=1, data=data_config(), eval=eval_config(red_team=False), tracking=tracking)
    registry = Registry(mlflow_server, name=f"nightshift-gpt-{uuid.uuid4().hex[:8]}")

    def night(candidate: ArtifactRef) -> tuple[str, bool]:
        """What the nightly flow does after training: log, register, evaluate, decide."""
        with tracker.pipeline("nightly", config={}) as pipe:
            with pipe.stage("pretrain") as st:
                st.produce(candidate, log_files=False)
                version = registry.register(
                    log_model(candidate, run_id=st.mlflow_run_id, tracking_uri=mlflow_server)
                )
            champion = registry.champion()
            champion_path = (
                registry.model_artifact_path(champion.version, tmp_path / "cache") if champion else None
            )
            with pipe.stage("evaluate") as st:
                report_ref, _ = evaluate_stage(
                    cfg, st, candidate, champion=champion_path, tokens=lm_data.tokens
                )
        promoted = record_in_registry(
            registry, version.version, candidate, report_ref, catalog_url=catalog_url
        )
        return version.version, promoted

    assert night(models.strong) == ("1", True)  # the first champion: absolute thresholds only
    first = registry.get("1")
    assert first.gate == "passed" and CHAMPION in first.aliases
    assert "previous champion" not in first.description and "## Lineage" in first.description
    # The evaluation's metrics are the logged model's too (its page, the registry version's metrics).
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server)
    model_id = client.get_model_version(registry.name, "1").source.removeprefix("models:/")
    logged = client.get_logged_model(model_id)
    on_model = {m.key: m for m in logged.metrics}
    assert on_model["gate.passed"].value == 1.0 and any("perplexity" in k for k in on_model)
    assert on_model["gate.passed"].dataset_name == "tokens"  # measured on the held-out tokens

    assert night(models.weak) == ("2", False)  # far fewer steps: rejected
    rejected = registry.get("2")
    assert rejected.gate == "failed" and "perplexity" in rejected.tags["nightshift.gate_summary"]
    assert rejected.aliases == (CHALLENGER,) and registry.champion().version == "1"  # serving unchanged
    assert rejected.eval_metrics["perplexity"] > first.eval_metrics["perplexity"]

    assert night(stronger) == ("3", True)  # better than the champion: promoted
    champion = registry.champion()
    assert champion.version == "3" and champion.previous_champion == "1"
    assert champion.tags["nightshift.promotion_reason"] == "gates passed"
    assert "previous champion: v1" in champion.description

    assert registry.rollback(who="on-call").version == "1"
    assert [e["action"] for e in registry.history()] == ["promote", "promote", "rollback"]
