"""Promotion in one place: register, gate, promote, roll back and redeploy.

Every decision about which model is the ``champion`` and which model is served goes through here:

- the evaluate step of ``pretrain/nightly`` and ``rlhf/adhoc`` (:func:`evaluate_and_gate`): evaluate
  the candidate against the champion, register it as a new version with alias ``challenger``, attach
  the verdict and the model card, and move ``champion`` only when every gate passed;
- a stage of the night that failed its own rules (:func:`reject_at_stage`): registered, nothing moves;
- ``nightshift promote`` and ``deploy/promote`` (:func:`promote`): a version made champion by hand,
  then served;
- ``nightshift rollback`` and ``deploy/rollback`` (:func:`rollback`): the previous champion again,
  or without registry history the previous deployment's model;
- ``nightshift serve`` without a model and ``deploy/redeploy`` (:func:`redeploy`): the active
  deployment's model again, after a restart of the stack.

The dashboard (which loads neither torch nor Ray) moves the alias with the same
:class:`catalog.registry.Registry` calls and asks Prefect for ``deploy/promote`` to roll the model
out, which comes back here. Rollouts themselves are ``serving.deploy``'s.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from catalog.artifacts import ArtifactRef, open_artifact
from catalog.db import session_scope
from catalog.lineage import open_recorded
from catalog.memo import Memo
from catalog.models import Artifact
from catalog.registry import Registry, RegistryError
from catalog.verdict import Verdict
from core.config import nightshift_home
from core.config_base import ConfigError
from core.train_config import REGISTRY_URI, registry_model
from serving.deploy import (
    DeployError,
    DeployResult,
    active_deployment,
    deploy_model,
    deployment_source,
    earlier_deployment,
    endpoint_url,
)
from training.eval.stages import evaluate_stage, record_in_registry
from training.stage_cache import cached

if TYPE_CHECKING:
    from collections.abc import Sequence

    from catalog.registry import ModelVersionInfo
    from core.config import Config
    from training.eval.evaluate import RewardFn
    from training.eval.tasks import TaskItem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateResult:
    report: ArtifactRef | None  # the eval_report artifact (None: a stage of the night failed its rules)
    verdict: Verdict
    version: str  # the candidate's registry version
    promoted: bool  # champion now points at it
    champion_before: str | None  # the champion's version before this decision
    model_name: str = "nightshift-gpt"  # the registered model

    def markdown(self) -> str:
        """The verdict as Markdown, headed by the registry decision (for the Prefect UI)."""
        decision = (
            f"**Promoted**: `{self.model_name}` v{self.version} is now `champion`"
            if self.promoted
            else f"**Not promoted**: v{self.version} stays `challenger`; the champion "
            f"(v{self.champion_before or '-'}) and the served model are unchanged"
        )
        if self.report is None:
            return f"# Gate verdict\n\n{decision}\n\n{self.verdict.to_markdown()}"
        report_md = (self.report.path / "REPORT.md").read_text()
        return f"# Gate verdict\n\n{decision}\n\n{self.verdict.to_markdown()}\n\n---\n\n{report_md}"


def registry_for(cfg: Config) -> Registry:
    """The registered model of ``serve.registered_model`` in the config's MLflow."""
    return Registry(cfg.tracking.mlflow_uri, name=cfg.serve.registered_model)


def version_artifact(registry: Registry, version: str) -> Path:
    """A local directory holding a version's ``model`` artifact (cached under registry-cache/)."""
    return registry.model_artifact_path(version, nightshift_home() / "registry-cache")


def champion_artifact(cfg: Config, registry: Registry) -> tuple[ModelVersionInfo | None, Path | None]:
    """The champion version and a local directory holding its ``model`` artifact (or ``None``s)."""
    champ = registry.champion()
    if champ is None:
        return None, None
    return champ, version_artifact(registry, champ.version)


def evaluate_and_gate(
    cfg: Config,
    run: Any,
    candidate: ArtifactRef,
    candidate_uri: str,
    *,
    tokens: ArtifactRef | None = None,
    tasks: Sequence[TaskItem] | None = None,
    reward_fn: RewardFn | None = None,
    reference: ArtifactRef | None = None,
    who: str = "evaluate",
) -> GateResult:
    """Evaluate ``candidate`` against the champion, register it, promote it if the gates pass.

    Args:
        cfg: the pipeline config (``eval`` for the gates, ``serve.registered_model``, tracking).
        run: the evaluate stage's run.
        candidate: the candidate ``model`` artifact.
        candidate_uri: its logged MLflow model (``models:/<model_id>``), registered as a version.
        tokens: held-out tokens for perplexity.
        tasks: verifiable task items; reward_fn: a reward model; reference: for KL.
        who: recorded as the promoter.
    """
    registry = registry_for(cfg)
    champ, champ_path = champion_artifact(cfg, registry)
    report_ref, verdict = evaluate_stage(
        cfg,
        run,
        candidate,
        champion=champ_path,
        tokens=tokens,
        tasks=tasks,
        reward_fn=reward_fn,
        reference=reference,
    )
    version = registry.register(candidate_uri).version  # linked to the run that logged the model
    promoted = record_in_registry(
        registry, version, candidate, report_ref, catalog_url=cfg.tracking.catalog_url, who=who
    )
    run.log_params({"registry_version": version, "champion_before": champ.version if champ else "-"})
    log.info("v%s: %s (%s)", version, verdict.summary(), "promoted" if promoted else "not promoted")
    return GateResult(
        report_ref, verdict, version, promoted, champ.version if champ else None, cfg.serve.registered_model
    )


def tokenizer_source(cfg: Config) -> ArtifactRef | None:
    """The champion's ``model`` artifact when tonight reuses its tokenizer (``data.tokenizer: reuse``
    and a champion exists); None when the night trains its own."""
    if cfg.data.tokenizer != "reuse":
        return None
    champ, path = champion_artifact(cfg, registry_for(cfg))
    if champ is None or path is None:
        log.info("tokenize: no champion yet, so tonight trains the tokenizer (data.tokenizer: reuse)")
        return None
    return open_artifact(path, kind="model")


def cached_gate(cfg: Config, run: Any, key: str, build: Callable[[], GateResult]) -> GateResult:
    """The evaluate stage through the stage cache (:mod:`training.stage_cache`), keyed by ``key``.

    A cached verdict holds only while the registry is where that decision left it: the champion is
    the candidate it promoted, or still the champion it was measured against. A night that failed at
    ``deploy`` re-runs with its verdict instead of measuring the candidate against itself; once
    another champion has taken over, the candidate is evaluated again.
    """

    def decode(m: Memo) -> GateResult | None:
        r = m.result
        champ = registry_for(cfg).champion()
        now = champ.version if champ else None
        if (r["promoted"] and now != r["version"]) or (not r["promoted"] and now != r["champion_before"]):
            log.info(
                "evaluate: the champion moved since the cached verdict (v%s then, v%s now); evaluating again",
                r["version"] if r["promoted"] else r["champion_before"],
                now,
            )
            return None
        verdict = Verdict.from_dict(r["verdict"])
        return GateResult(
            m.refs.get("report"), verdict, r["version"], r["promoted"], r["champion_before"], r["model_name"]
        )

    def encode(g: GateResult) -> tuple[dict[str, ArtifactRef | None], dict[str, Any]]:
        rest = {
            "verdict": g.verdict.to_dict(),
            "version": g.version,
            "promoted": g.promoted,
            "champion_before": g.champion_before,
            "model_name": g.model_name,
        }
        return {"report": g.report}, rest

    return cached(cfg, run, "evaluate", key, build, encode, decode)


def reject_at_stage(cfg: Config, candidate_uri: str | None, verdict: Verdict) -> GateResult:
    """A stage of the night failed its rules (:func:`training.eval.gates.check_stage`): nothing moves.

    Its model is registered as a new version with alias ``challenger`` and the stage verdict attached,
    for anyone who wants to look at it; the champion and the served model stay.
    """
    registry = registry_for(cfg)
    champ = registry.champion()
    version = "-"
    if candidate_uri is not None:
        version = registry.register(candidate_uri).version
        registry.attach_verdict(
            version,
            passed=False,
            summary=f"stage {verdict.stage}: {verdict.summary()}",
            markdown=verdict.to_markdown(),
        )
    log.info("v%s: stage %s failed its rules: %s", version, verdict.stage, verdict.summary())
    return GateResult(
        None, verdict, version, False, champ.version if champ else None, cfg.serve.registered_model
    )


# --- by hand: promote, roll back, redeploy ---------------------------------------------------------


def _serve_version(cfg: Config, registry: Registry, version: str, who: str) -> DeployResult:
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
    serve the model that was served before the current one, as a new deployment.

    Raises:
        DeployError: there is nothing to roll back to.
    """
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
    return _rollback_deployment(cfg, who)


def _rollback_deployment(cfg: Config, who: str) -> DeployResult:
    cur = active_deployment(cfg)
    if cur is None:
        raise DeployError(f"no active deployment at {endpoint_url(cfg)}; nothing to roll back")
    target = earlier_deployment(cfg, cur["id"])
    if target is None:
        raise DeployError(
            f"deployment {cur['id']} is the first model served at {endpoint_url(cfg)}; "
            "there is no earlier model to roll back to"
        )
    source, reg = deployment_source(cfg, target)
    log.info("rolling back from deployment %d to the model of deployment %d", cur["id"], target)
    return deploy_model(cfg, source, created_by=who, alias="rollback", registry=reg)


def redeploy(cfg: Config, *, who: str = "nightshift") -> DeployResult:
    """Serve the active deployment's model again (after a restart of the stack).

    Raises:
        DeployError: nothing has been deployed at this endpoint yet, or its model is gone.
    """
    cur = active_deployment(cfg)
    if cur is None:
        raise DeployError(
            f"nothing has been deployed at {endpoint_url(cfg)} yet; run pretrain/nightly or "
            "`nightshift serve --model <artifact dir or models:/ URI>`"
        )
    source, reg = deployment_source(cfg, cur["id"])
    # The same registry version as before, so the dashboard and X-Nightshift-Model-Version keep it.
    return deploy_model(cfg, source, created_by=who, alias=cur["alias"], registry=reg)


# --- what RLHF starts from -------------------------------------------------------------------------


def base_model(cfg: Config, version: str | None, model_dir: str | None) -> ArtifactRef:
    """The ``model`` artifact of ``model_dir``, or of registry ``version`` (default: the champion).

    Raises:
        ValueError: no model_dir or version given and the registry has no champion yet.
    """
    if model_dir:
        return open_artifact(model_dir, kind="model")
    registry = registry_for(cfg)
    info = registry.get(version) if version else registry.champion()
    if info is None:
        raise ValueError(
            f"{registry.name} has no champion yet; pass version=<n> or model_dir=<model artifact directory>"
        )
    return open_artifact(version_artifact(registry, info.version), kind="model")


def parent_model(cfg: Config) -> ArtifactRef | None:
    """The ``model`` artifact tonight's pretraining continues from (``train.init``), or None for scratch.

    ``champion`` is the serving version (None, so scratch, before the first promotion); a registry
    URI is resolved in the config's MLflow; anything else is a model artifact directory.

    Raises:
        ConfigError: naming ``train.init`` when the model it names does not exist or does not verify.
    """
    init = cfg.train.init
    if init == "scratch":
        return None
    if init == "champion":
        champ, path = champion_artifact(cfg, registry_for(cfg))
        if champ is None or path is None:
            log.info("pretrain: no champion yet, so tonight trains from scratch (train.init: champion)")
            return None
        log.info("pretrain: continues from the champion, version %s (train.init: champion)", champ.version)
        return open_artifact(path, kind="model")
    try:
        if init.startswith(REGISTRY_URI):
            name, ref, by_alias = registry_model(init)
            registry = Registry(cfg.tracking.mlflow_uri, name=name)
            info = registry.alias(ref) if by_alias else registry.get(ref)
            if info is None:
                raise RegistryError(f"{name} has no alias {ref!r}")
            return open_artifact(version_artifact(registry, info.version), kind="model")
        return open_artifact(init, kind="model")
    except Exception as e:  # a missing version, directory or a damaged artifact: one clear problem
        raise ConfigError(
            [f"train.init: {init!r} names no usable model ({e}); use 'champion', 'scratch', a model "
             "artifact directory or models:/<name>/<version>"],
            source="pretrain inputs",
        ) from e  # fmt: skip


def recorded(cfg: Config, kind: str, sha: object) -> ArtifactRef | None:
    """The catalog's ``kind`` artifact of hash ``sha``, opened and checked; None when the catalog does
    not know it or it is gone (moved, pruned or damaged)."""
    if not isinstance(sha, str):
        return None
    with session_scope(cfg.tracking.catalog_url) as s:
        row = s.query(Artifact).filter_by(kind=kind, sha256=sha).first()
        try:
            return open_recorded(row) if row else None
        except Exception:  # moved, pruned or damaged
            log.warning("the %s artifact %s is gone", kind, sha[:16])
            return None


def corpus_sources(cfg: Config, tokens: ArtifactRef) -> set[str] | None:
    """The sha256s of the source items behind a ``tokens`` artifact (from its corpus's manifest),
    or None when the corpus is unknown or gone."""
    corpus = recorded(cfg, "corpus", tokens.metadata.get("corpus_sha256"))
    if corpus is None:
        return None
    manifest = json.loads((corpus.path / "manifest.json").read_text())
    return {src["sha256"] for src in manifest.get("sources", [])}


def replay_tokens(cfg: Config, parent: ArtifactRef | None, tokens: ArtifactRef) -> ArtifactRef | None:
    """The parent model's training tokens to mix into tonight's batches (``train.replay``), or None.

    None when there is no parent or no replay share, when the parent's tokens are gone, or when
    tonight's tokens already come from every source item the parent's did: replaying them would
    only weigh the old text twice.
    """
    if parent is None or cfg.train.replay == 0:
        return None
    old = tokens_of(cfg, parent)
    if old is None:
        log.warning("pretrain: the tokens model %s trained on are gone; no replay", parent.sha256[:16])
        return None
    if old.sha256 == tokens.sha256:
        return None
    before, now = corpus_sources(cfg, old), corpus_sources(cfg, tokens)
    if before is not None and now is not None and before <= now:
        log.info(
            "pretrain: tonight's tokens hold all %d source items of the parent's; no replay", len(before)
        )
        return None
    return old


def tokens_of(cfg: Config, model: ArtifactRef) -> ArtifactRef | None:
    """The ``tokens`` artifact a model was trained on (held-out perplexity, replay); None when unknown
    or gone."""
    return recorded(cfg, "tokens", model.metadata.get("tokens"))
