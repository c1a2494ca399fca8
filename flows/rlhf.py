"""``rlhf/adhoc``: SFT → reward model → ppo|dpo|grpo on an existing model, then evaluate, gate, serve.

The base is a registry version of ``serve.registered_model`` (default: the champion) or a
``model`` artifact directory. The preference snapshot includes every human label collected
since (``/v1/feedback`` and the dashboard).
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.states import State

from catalog.artifacts import open_artifact
from flows.common import flow_config, gate_failed, pipeline_run, prefect_flow_run_url, stage_failed
from flows.tasks import deploy_task, evaluate_task, rlhf_chain
from training.eval.promotion import registry_for, version_artifact


def _base_model(cfg, version: str | None, model_dir: str | None):
    if model_dir:
        return open_artifact(model_dir, kind="model")
    registry = registry_for(cfg)
    info = registry.get(version) if version else registry.champion()
    if info is None:
        raise ValueError(
            f"{registry.name} has no champion yet; pass version=<n> or model_dir=<model artifact directory>"
        )
    return open_artifact(version_artifact(registry, info.version), kind="model")


@flow(name="rlhf", log_prints=True)
def rlhf(
    version: str | None = None,
    model_dir: str | None = None,
    preset: str = "small",
    overrides: dict[str, Any] | None = None,
) -> dict[str, str] | State:
    """RLHF on an existing model, then the same evaluate → gate → deploy tail as the nightly run.

    Args:
        version: the registry version to start from (default: the champion).
        model_dir: or a ``model`` artifact directory.
        preset: the config preset; ``rlhf.algorithm`` picks ppo, dpo or grpo.
        overrides: dotted config overrides.
    """
    cfg = flow_config(preset, overrides)
    who = prefect_flow_run_url(cfg) or "rlhf/adhoc"
    base = _base_model(cfg, version, model_dir)
    tokens = None
    if isinstance(base.metadata.get("tokens"), str):
        from catalog.db import session_scope
        from catalog.lineage import open_recorded
        from catalog.models import Artifact

        with session_scope(cfg.tracking.catalog_url) as s:
            row = s.query(Artifact).filter_by(kind="tokens", sha256=base.metadata["tokens"]).first()
            try:
                tokens = open_recorded(row) if row else None
            except Exception:  # moved, pruned or damaged: evaluate without held-out perplexity
                tokens = None
    with pipeline_run(cfg, "rlhf") as pipeline:
        sft, reward, policy, failed = rlhf_chain(cfg, pipeline, base, tokens)
        if failed is not None:
            return stage_failed(cfg, pipeline, failed)
        assert reward is not None and policy is not None
        gate = evaluate_task(
            cfg,
            pipeline,
            policy.model,
            policy.model_uri,
            tokens,
            who,
            reward_model=reward.model,
            reference=sft.model,
        )
        create_markdown_artifact(markdown=gate.markdown(), key="gate-verdict", description="Gate verdict")
        if gate.promoted and cfg.serve.deploy_stage:
            deploy_task(cfg, pipeline, policy.model, created_by=who, version=gate.version)
    if not gate.promoted:
        return gate_failed(cfg, gate)
    return {
        "base": base.sha256,
        "policy": policy.model.sha256,
        "reward_model": reward.model.sha256,
        "preferences": reward.preferences.sha256,
        "version": gate.version,
    }
