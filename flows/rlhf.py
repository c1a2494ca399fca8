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

from flows.common import flow_config, gate_failed, pipeline_run, prefect_flow_run_url, stage_failed
from flows.tasks import deploy_task, evaluate_task, rlhf_chain
from release.promotion import base_model, tokens_of


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
    base = base_model(cfg, version, model_dir)
    tokens = tokens_of(cfg, base)
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
