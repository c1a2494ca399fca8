"""Registry decisions that change what is served: promote a version by hand, roll the champion back.

``deploy/promote`` and ``nightshift promote`` move the registry's ``champion`` alias to a version
(with the version's gate report attached as the reason) and roll its model out;
``deploy/rollback`` and ``nightshift rollback`` move ``champion`` back to the previous champion
and roll that out. Without a registry history (a model served by hand), rollback falls back to
the previous *deployment*.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from serving.deploy import DeployError, DeployResult, deploy_model
from serving.deploy import rollback as rollback_deployment
from training.eval.promotion import registry_for, version_artifact

if TYPE_CHECKING:
    from training.config import Config

log = logging.getLogger(__name__)


def _serve_version(cfg: Config, registry, version: str, who: str) -> DeployResult:
    path = version_artifact(registry, version)
    reg = {"name": registry.name, "version": str(version)}
    return deploy_model(cfg, str(path), created_by=who, alias="champion", registry=reg)


def promote(cfg: Config, version: str | int, *, who: str, reason: str = "") -> DeployResult:
    """Make ``version`` the champion (its gate report attached) and serve it.

    Raises:
        catalog.registry.RegistryError: no such version, or it is not ready.
        DeployError: the rollout failed (the alias has moved; the previous model keeps serving).
    """
    registry = registry_for(cfg)
    info = registry.get(version)
    report = None
    verdict = info.tags.get("nightshift.gate_summary") or info.gate
    if verdict:
        report = (
            f"# Promoted by hand\n\nGate verdict of v{info.version}: {verdict}\n\nReason: {reason or '-'}\n"
        )
    registry.promote(info.version, who=who, report=report, reason=reason or "promoted by hand")
    return _serve_version(cfg, registry, info.version, who)


def rollback(cfg: Config, *, who: str, reason: str = "") -> DeployResult:
    """Move ``champion`` back to the previous champion and serve it; without registry history,
    serve the previous deployment's model instead.

    Raises:
        DeployError: there is nothing to roll back to.
    """
    from catalog.registry import RegistryError

    registry = registry_for(cfg)
    try:
        current = registry.champion()
    except Exception as e:  # no registered model yet, or no MLflow: only deployments to go by
        log.info("no registry to roll back (%s); rolling back the deployment", e)
        current = None
    if current is not None and current.previous_champion:
        try:
            restored = registry.rollback(who=who, reason=reason or "rollback")
        except RegistryError as e:
            raise DeployError(str(e)) from e
        return _serve_version(cfg, registry, restored.version, who)
    return rollback_deployment(cfg, created_by=who)
