"""The registry conventions against a real MLflow server: challenger, promote, rollback, attachments."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import mlflow.artifacts
import pytest
import torch
from mlflow import MlflowClient

from catalog.artifacts import ArtifactRef, open_artifact
from catalog.registry import CHALLENGER, CHAMPION, MAX_DESCRIPTION, Registry, RegistryError
from core.model_config import ModelConfig
from gpt.model import GPT
from gpt.model_io import load_model, save_model
from gpt.tokenizer import train_tokenizer
from training.mlflow_model import log_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def logged(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, ArtifactRef]]:
    """Three small models, each logged by its own run (with a val_loss metric) as an MLflow model."""
    root = tmp_path_factory.mktemp("registry-models")
    tok = train_tokenizer(["the cat sat on the mat by the door. " * 40], vocab_size=300)
    client = MlflowClient(mlflow_server)
    exp = client.create_experiment(f"registry-{uuid.uuid4().hex[:8]}")
    out = []
    for seed in range(3):
        torch.manual_seed(seed)
        ref = save_model(
            GPT(ModelConfig(n_layer=1, n_head=1, n_embd=16, block_size=16, vocab_size=320)), tok, root=root
        )
        run = client.create_run(exp)
        client.log_metric(run.info.run_id, "val_loss", 4.0 - seed)
        out.append((log_model(ref, run_id=run.info.run_id, tracking_uri=mlflow_server), ref))
        client.set_terminated(run.info.run_id)
    return out


@pytest.fixture
def registry(mlflow_server: str) -> Registry:
    return Registry(mlflow_server, name=f"nightshift-gpt-{uuid.uuid4().hex[:8]}")


def test_register_promote_and_roll_back(registry: Registry, logged: list[tuple[str, ArtifactRef]]) -> None:
    (uri1, ref1), (uri2, _), _ = logged
    assert registry.champion() is None and registry.challenger() is None and registry.history() == []
    v1 = registry.register(uri1)
    assert (v1.version, v1.aliases, v1.source) == ("1", (CHALLENGER,), uri1)
    assert v1.artifact_sha256 == ref1.sha256 and v1.artifact_uri == str(ref1.path)
    assert v1.metrics == {"val_loss": 4.0} and v1.run_id and v1.model_id == uri1.removeprefix("models:/")
    assert registry.register(uri1).version == "1"  # a retried task does not add a version
    with pytest.raises(RegistryError, match="no champion to roll back"):
        registry.rollback(who="ops")

    first = registry.promote("1", who="nightly", reason="gates passed")
    assert set(first.aliases) == {CHALLENGER, CHAMPION} and first.previous_champion is None
    v2 = registry.register(uri2)
    assert v2.version == "2" and registry.challenger().version == "2" and registry.champion().version == "1"

    second = registry.promote(2, who="alice", report="## Gate verdict: PASSED\n")
    assert registry.champion().version == "2" and second.previous_champion == "1"
    assert second.tags["nightshift.promoted_by"] == "alice" and second.tags["nightshift.promoted_at"]
    assert registry.promote("2", who="alice").version == "2"  # already champion: nothing moves

    back = registry.rollback(who="bob", reason="bad answers")
    assert back.version == "1" and registry.champion().version == "1"
    assert registry.get("2").tags["nightshift.rolled_back_by"] == "bob"
    with pytest.raises(RegistryError, match="was the first champion"):
        registry.rollback(who="bob")
    assert [(e["action"], e["version"], e["from"], e["who"]) for e in registry.history()] == [
        ("promote", "1", None, "nightly"),
        ("promote", "2", "1", "alice"),
        ("rollback", "1", "2", "bob"),
    ]

    with pytest.raises(RegistryError, match=r"no version '9'; versions: 1, 2"):
        registry.promote("9", who="x")
    with pytest.raises(RegistryError, match="not a logged model URI"):
        registry.register("runs:/abc/model")
    promotion = _model_file(registry, second.model_id, "PROMOTION.md")
    assert promotion == "## Gate verdict: PASSED\n"


def _model_file(registry: Registry, model_id: str, name: str) -> str:
    location = registry.client.get_logged_model(model_id).artifact_location
    path = mlflow.artifacts.download_artifacts(
        artifact_uri=f"{location}/nightshift/{name}", tracking_uri=registry.tracking_uri
    )
    return Path(path).read_text()


def test_verdict_and_model_card_are_attached(
    registry: Registry, logged: list[tuple[str, ArtifactRef]]
) -> None:
    v = registry.register(logged[0][0])
    registry.attach_verdict(
        v.version,
        passed=False,
        summary="FAILED: 1 of 5 rule(s) failed",
        markdown="## Gate verdict: FAILED\n",
        metrics={"perplexity": 12.5, "task_accuracy": 0.25},
        report_sha256="ab" * 32,
    )
    info = registry.get(v.version)
    assert info.gate == "failed" and info.tags["nightshift.gate_summary"].startswith("FAILED")
    assert info.eval_metrics == {"perplexity": 12.5, "task_accuracy": 0.25}
    assert info.tags["nightshift.eval_report_sha256"] == "ab" * 32
    assert _model_file(registry, v.model_id, "GATE_VERDICT.md") == "## Gate verdict: FAILED\n"

    card = "# Model card: test\n\n" + "\n".join(f"- line {i} of a long card" for i in range(400))
    registry.attach_model_card(v.version, card)
    info = registry.get(v.version)
    assert info.description.startswith("# Model card: test") and len(info.description) <= MAX_DESCRIPTION
    assert "MODEL_CARD.md" in info.description  # points at the full card
    assert _model_file(registry, v.model_id, "MODEL_CARD.md") == card
    registry.attach_model_card(v.version, "# short card\n")
    assert registry.get(v.version).description == "# short card\n"


def test_model_artifact_path_finds_or_downloads_the_weights(
    registry: Registry, logged: list[tuple[str, ArtifactRef]], mlflow_server: str, tmp_path: Path
) -> None:
    uri, ref = logged[0]
    v = registry.register(uri)
    assert (
        registry.model_artifact_path(v.version, tmp_path / "cache") == ref.path
    )  # still where it was published

    # A version whose published directory is gone (another machine, a cleaned disk): fetched from MLflow.
    moved = tmp_path / "moved" / ref.path.name
    shutil.copytree(ref.path, moved)
    client = MlflowClient(mlflow_server)
    run = client.create_run(client.get_logged_model(uri.removeprefix("models:/")).experiment_id)
    moved_uri = log_model(open_artifact(moved), run_id=run.info.run_id, tracking_uri=mlflow_server)
    shutil.rmtree(moved)
    v2 = registry.register(moved_uri)
    path = registry.model_artifact_path(v2.version, tmp_path / "cache")
    assert path == tmp_path / "cache" / ref.sha256[:16]
    assert open_artifact(path, kind="model").sha256 == ref.sha256
    model, _, _ = load_model(path)
    assert model.cfg.n_embd == 16
    assert registry.model_artifact_path(v2.version, tmp_path / "cache") == path  # cached
    assert json.loads((path / "artifact.json").read_text())["kind"] == "model"
