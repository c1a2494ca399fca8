"""``deploy/rollback`` (and ``deploy/redeploy``): change what the endpoint serves, on demand."""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.common import flow_config, prefect_flow_run_url
from serving.deploy import redeploy_current, rollback


@flow(name="deploy", log_prints=True)
def deploy(
    action: Literal["rollback", "redeploy"] = "rollback",
    preset: str = "small",
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Roll the served model back to the previous deployment's, or redeploy the current one.

    Args:
        action: ``rollback`` serves the model that was active before the current one;
            ``redeploy`` serves the current one again (after a restart of the stack).
        preset: the config preset (its ``serve`` section says where the endpoint is).
        overrides: dotted config overrides.
    """
    cfg = flow_config(preset, overrides)
    who = prefect_flow_run_url(cfg) or f"deploy/{action}"
    res = rollback(cfg, created_by=who) if action == "rollback" else redeploy_current(cfg, created_by=who)
    get_run_logger().info("deployment %d serves model %s", res.deployment_id, res.model_sha256[:16])
    create_markdown_artifact(
        key=f"deploy-{action}",
        description=f"deploy/{action}",
        markdown=(
            f"# deploy/{action}\n\nDeployment **{res.deployment_id}** at `{res.endpoint}/v1` now serves "
            f"model `{res.model_sha256}` (replacing deployment {res.previous_id}); rollout took "
            f"{res.seconds:.1f} s."
        ),
    )
    return {"deployment_id": res.deployment_id, "model": res.model_sha256, "endpoint": res.endpoint}
