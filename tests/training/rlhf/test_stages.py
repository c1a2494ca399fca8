"""The tracked stages end to end: SFT → reward → PPO / DPO / GRPO, artifacts, lineage and MLflow metrics."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import torch

from catalog import db, lineage
from catalog.artifacts import open_artifact
from catalog.models import Artifact, Completion, Feedback
from catalog.untracked import NullStageRun
from core.config import Config, RayConfig, TrackingConfig
from core.rlhf_config import (
    DPOConfig,
    GRPOConfig,
    PPOConfig,
    PreferenceConfig,
    RewardConfig,
    RLHFConfig,
    SamplingConfig,
    SFTConfig,
    TaskConfig,
)
from gpt.chat import encode_chat
from gpt.model import GPT
from gpt.model_io import load_model, save_model
from training.rlhf.feedback import feedback_of
from training.rlhf.preferences import EmptyPreferencesError
from training.rlhf.stages import dpo_stage, grpo_stage, ppo_stage, reward_stage, sft_stage

from .conftest import tiny_model_config


def _config(tmp_path: Path, mlflow_uri: str = "unused", **prefs: object) -> Config:
    rlhf = RLHFConfig(
        tasks=TaskConfig(families=["copy", "max"], train_size=128, eval_size=16),
        preferences=PreferenceConfig(**prefs),
        sampling=SamplingConfig(max_new_tokens=8),
        sft=SFTConfig(steps=40, batch_size=16),
        reward=RewardConfig(steps=10, batch_size=16, eval_every=5),
        ppo=PPOConfig(iterations=2, rollout_batch=8, minibatch=8),
        dpo=DPOConfig(steps=5, batch_size=8),
        grpo=GRPOConfig(iterations=2, prompts_per_step=2, group_size=4, minibatch=8),
    )
    tracking = TrackingConfig(
        mlflow_uri=mlflow_uri,
        experiment=f"rlhf-{uuid.uuid4().hex[:8]}",
        catalog_url=f"sqlite:///{tmp_path}/catalog.db",
        artifact_root=str(tmp_path / "artifacts"),
    )
    return Config(
        seed=3, model=tiny_model_config(), rlhf=rlhf, tracking=tracking, ray=RayConfig(address="local")
    )


@pytest.fixture
def base_model(tokenizer, tmp_path: Path):
    torch.manual_seed(0)
    return save_model(GPT(tiny_model_config()), tokenizer, root=tmp_path / "base")


def test_every_stage_reads_and_writes_artifacts(base_model, tmp_path: Path) -> None:
    cfg = _config(tmp_path, use_feedback=False)
    run = NullStageRun()
    sft = sft_stage(cfg, run, base_model)
    assert sft.model.kind == "model" and sft.model.metadata["base"] == base_model.sha256
    assert {"eval_accuracy", "eval_reward", "eval_kl", "baseline_accuracy"} <= sft.metrics.keys()
    assert sft.metrics["eval_eos_frac"] > sft.metrics["baseline_eos_frac"]  # it learnt the reply format

    rm = reward_stage(cfg, run, sft.model)
    assert rm.model.kind == "reward_model" and rm.preferences is not None
    by_source = rm.preferences.metadata["pairs_by_source"]
    assert by_source["task"] == 128 and by_source["policy"] > 0  # the base policy's own mistakes
    assert rm.preferences.metadata["heldout"] == 16
    assert "heldout_accuracy" in rm.metrics

    ppo = ppo_stage(cfg, run, sft.model, rm.model)
    dpo = dpo_stage(cfg, run, sft.model, preferences=rm.preferences)
    grpo = grpo_stage(cfg, run, sft.model)
    for res, stage in ((ppo, "ppo"), (dpo, "dpo"), (grpo, "grpo")):
        policy, _, ref = load_model(res.model)
        assert ref.metadata["stage"] == stage and ref.metadata["base"] == sft.model.sha256
        assert res.metrics["eval_kl"] > 0 and "eval_accuracy" in res.metrics
        assert res.model.sha256 != sft.model.sha256
    assert ppo.model.metadata["reward_model"] == rm.model.sha256
    assert {"reward", "kl", "entropy", "clip_frac", "value_loss"} <= ppo.metrics.keys()
    assert {"margin", "reward_chosen", "heldout_accuracy"} <= dpo.metrics.keys()


def test_an_empty_preference_set_fails_before_anything_is_written(base_model, tmp_path: Path) -> None:
    cfg = _config(tmp_path, use_tasks=False, policy_samples=0)  # feedback on, but the catalog has none
    with pytest.raises(EmptyPreferencesError, match="the preference set is empty: 0 task pairs"):
        reward_stage(cfg, NullStageRun(), base_model)
    with pytest.raises(EmptyPreferencesError):
        dpo_stage(cfg, NullStageRun(), base_model)
    assert not list(Path(cfg.tracking.artifact_root).rglob("artifact.json"))  # nothing published


@pytest.mark.slow
def test_feedback_reaches_the_snapshot_with_lineage_and_metrics_reach_mlflow(
    base_model, tokenizer, tmp_path: Path, mlflow_server: str
) -> None:
    from mlflow import MlflowClient

    from catalog.tracking import Tracker

    cfg = _config(tmp_path, mlflow_server, policy_samples=0)
    db.migrate(cfg.tracking.catalog_url)
    prompt = encode_chat(tokenizer, [{"role": "user", "content": "Repeat: oak fox"}]).text
    with db.session_scope(cfg.tracking.catalog_url) as s:
        model_row = lineage.record_artifact(s, base_model)
        for cid, reply in (("chatcmpl-1", "oak fox"), ("chatcmpl-2", "fox")):
            s.add(
                Completion(
                    id=cid, model_artifact_id=model_row.id, endpoint="chat", prompt=prompt, response=reply
                )
            )
        s.flush()
        fb = Feedback(
            kind="preference", completion_id="chatcmpl-1", other_completion_id="chatcmpl-2", preferred="a"
        )
        s.add(fb)
        s.flush()
        feedback_id = fb.id

    tracker = Tracker(
        tracking_uri=mlflow_server, experiment=cfg.tracking.experiment, catalog_url=cfg.tracking.catalog_url
    )
    with tracker.pipeline("rlhf", config={}) as pipe, pipe.stage("reward") as run:
        rm = reward_stage(cfg, run, base_model)
    assert rm.preferences is not None and rm.preferences.metadata["pairs_by_source"]["feedback"] == 1
    with db.session_scope(cfg.tracking.catalog_url) as s:
        snap = s.query(Artifact).filter_by(kind="preferences", sha256=rm.preferences.sha256).one()
        assert [f.id for f in feedback_of(s, snap.id)] == [feedback_id]
        rm_row = s.query(Artifact).filter_by(kind="reward_model", sha256=rm.model.sha256).one()
        up = {a.sha256 for a in lineage.upstream(s, rm_row.id)}
        assert {base_model.sha256, rm.preferences.sha256} <= up
    client = MlflowClient(mlflow_server)
    history = client.get_metric_history(run.mlflow_run_id, "heldout_accuracy")
    assert [m.step for m in history] == [5, 10]
    assert client.get_metric_history(run.mlflow_run_id, "pairs")[0].value == 129
    assert open_artifact(rm.preferences.path, kind="preferences").sha256 == rm.preferences.sha256


def test_held_out_pairs_longer_than_the_context_are_left_out(tokenizer, tmp_path: Path) -> None:
    """A small context: the reward stage leaves out the held-out pairs that do not fit (they cannot be
    scored), as it quarantines training pairs, instead of failing when it encodes them."""
    from training.rlhf.preferences import load_preferences
    from training.rlhf.sequences import encode_reply
    from training.rlhf.tasks import tasks_from_config

    cfg = _config(tmp_path, use_feedback=False, policy_samples=0)
    splits = tasks_from_config(cfg.rlhf, cfg.seed)  # the stage's own held-out pairs
    lengths = sorted(
        max(len(encode_reply(tokenizer, p.prompt, r)[0]) for r in (p.chosen, p.rejected))
        for p in splits.eval_pairs()
    )
    block = lengths[len(lengths) // 2]  # about half of them do not fit
    cfg.model = tiny_model_config(block_size=block)
    torch.manual_seed(0)
    base = save_model(GPT(cfg.model), tokenizer, root=tmp_path / "short")
    rm = reward_stage(cfg, NullStageRun(), base)
    _, heldout = load_preferences(rm.preferences)
    assert 0 < len(heldout) < cfg.rlhf.tasks.eval_size
    for p in heldout:
        assert max(len(encode_reply(tokenizer, p.prompt, r)[0]) for r in (p.chosen, p.rejected)) <= block


def test_sft_leaves_out_the_task_examples_longer_than_the_context(tokenizer, tmp_path: Path) -> None:
    """A small context and a long task family (``help``): SFT trains on the demonstrations that fit and
    counts the rest, instead of failing; when none fits, the error names the fix."""
    from training.rlhf.sequences import encode_reply
    from training.rlhf.tasks import tasks_from_config

    cfg = _config(tmp_path, use_feedback=False, policy_samples=0)
    cfg.rlhf.tasks.families = ["copy", "help"]
    cfg.rlhf.sft.steps = 2
    demos = tasks_from_config(cfg.rlhf, cfg.seed).sft_pairs()[: cfg.rlhf.sft.max_examples]
    lengths: dict[str, list[int]] = {"copy": [], "help": []}
    prompts = []  # the held-out prompts are sampled from in the stage's evaluation: they must fit
    for (messages, reply), ex in zip(demos, tasks_from_config(cfg.rlhf, cfg.seed).train, strict=False):
        ids, start = encode_reply(tokenizer, messages, reply)
        lengths[ex.family].append(len(ids))
        prompts.append(start)
    block = max(*lengths["copy"], max(prompts) + cfg.rlhf.sampling.max_new_tokens)
    assert min(lengths["help"]) > block  # the help demonstrations are the long ones
    cfg.model = tiny_model_config(block_size=block)
    torch.manual_seed(0)
    base = save_model(GPT(cfg.model), tokenizer, root=tmp_path / "short")
    sft = sft_stage(cfg, NullStageRun(), base)
    assert sft.metrics["sft_examples_too_long"] == len(lengths["help"])

    cfg.model = tiny_model_config(block_size=min(lengths["copy"]) - 1)
    torch.manual_seed(0)
    shorter = save_model(GPT(cfg.model), tokenizer, root=tmp_path / "shorter")
    with pytest.raises(ValueError, match=r"none of the \d+ SFT examples fits the context"):
        sft_stage(cfg, NullStageRun(), shorter)
