"""``deploy/promote``, ``deploy/rollback`` and ``deploy/redeploy``: change what is served, on demand."""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.common import flow_config, prefect_flow_run_url
from release.promotion import promote, redeploy, rollback


@flow(name="deploy", log_prints=True)
def deploy(
    action: Literal["promote", "rollback", "redeploy"] = "rollback",
    version: str | None = None,
    reason: str = "",
    preset: str = "small",
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Promote a registry version, roll the champion back, or redeploy the current model.

    Args:
        action: ``promote`` moves ``champion`` to ``version`` and serves it; ``rollback`` moves
            ``champion`` back to the previous champion (or, without registry history, serves the
            previous deployment's model); ``redeploy`` serves the active deployment's model again
            (after a restart of the stack).
        version: the registry version to promote (``promote`` only).
        reason: why, recorded on the registry version.
        preset: the config preset (its ``serve`` section says where the endpoint is).
        overrides: dotted config overrides.
    """
    cfg = flow_config(preset, overrides)
    who = prefect_flow_run_url(cfg) or f"deploy/{action}"
    if action == "promote":
        if not version:
            raise ValueError("deploy/promote needs the parameter version (a registry version number)")
        res = promote(cfg, version, who=who, reason=reason)
    elif action == "rollback":
        res = rollback(cfg, who=who, reason=reason)
    else:
        res = redeploy(cfg, who=who)
    get_run_logger().info("deployment %d serves model %s", res.deployment_id, res.model_sha256[:16])
    create_markdown_artifact(
        key=f"deploy-{action}",
        description=f"deploy/{action}",
        markdown=(
            f"# deploy/{action}\n\nDeployment **{res.deployment_id}** at `{res.endpoint}/v1` now serves "
            f"model `{res.model_sha256}` (replacing deployment {res.previous_id}); rollout took "
            f"{res.seconds:.1f} s. Reason: {reason or '-'}"
        ),
    )
    return {"deployment_id": res.deployment_id, "model": res.model_sha256, "endpoint": res.endpoint}
