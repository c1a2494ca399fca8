"""The MLflow model-registry conventions: one registered model, aliases ``challenger`` and ``champion``.

Conventions:
    * Every candidate becomes a new version of ``nightshift-gpt`` (its source is the logged model,
      ``models:/<model_id>``) and takes the alias ``challenger``. Registering the same logged model
      again returns the existing version, so a retried task does not add versions.
    * ``champion`` is the version that serves. :meth:`Registry.promote` moves it and records on the
      new champion who promoted it, when, why, and which version was champion before
      (``nightshift.previous_champion``); :meth:`Registry.rollback` moves it back to that version.
      Every move is also appended to the registered model's ``nightshift.champion_history`` tag.
    * The gate verdict and the model card are attached to a version as tags and as Markdown files
      in the logged model's artifacts (``nightshift/GATE_VERDICT.md``, ``nightshift/MODEL_CARD.md``);
      the card is also the version's description, which the MLflow UI renders.

Only :class:`~mlflow.MlflowClient` calls with an explicit tracking URI are used; nothing touches
the global tracking URI or the fluent API.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from catalog.artifacts import INDEX

# Re-exported: the names and value types of the conventions live in registry_types.
from catalog.registry_types import (  # noqa: F401
    ATTACH_DIR,
    CHALLENGER,
    CHAMPION,
    LOGGED_MODEL_URI,
    MAX_DESCRIPTION,
    MAX_HISTORY,
    MODEL_NAME,
    TAG_ARTIFACT_SHA,
    TAG_ARTIFACT_URI,
    TAG_EVAL_METRICS,
    TAG_EVAL_REPORT,
    TAG_GATE,
    TAG_GATE_SUMMARY,
    TAG_HISTORY,
    TAG_PREVIOUS,
    TAG_PROMOTED_AT,
    TAG_PROMOTED_BY,
    TAG_PROMOTION_REASON,
    TAG_ROLLED_BACK_AT,
    TAG_ROLLED_BACK_BY,
    ModelVersionInfo,
    RegistryError,
    utc_timestamp,
)

# MLflow is imported inside the functions that use it, not here: it takes a second or more to
# import, and not every user of this module needs it.

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)


class Registry:
    """The registered model ``name`` on one MLflow server.

    Args:
        tracking_uri: MLflow tracking URI (``http://127.0.0.1:5000``).
        name: the registered model (default ``nightshift-gpt``).
        registry_uri: the model registry, when it is not the tracking server.
    """

    def __init__(self, tracking_uri: str, *, name: str = MODEL_NAME, registry_uri: str | None = None) -> None:
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.name = name
        self.client: MlflowClient = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)

    # --- reading ------------------------------------------------------------------------------

    def _ensure_model(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(
                self.name,
                description="The nightshift GPT: `champion` serves, `challenger` is the latest candidate.",
            )
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise

    def _info(self, mv: ModelVersion, *, metrics: bool = True) -> ModelVersionInfo:
        run_metrics: dict[str, float] = {}
        if metrics and mv.run_id:
            try:
                run_metrics = dict(self.client.get_run(mv.run_id).data.metrics)
            except Exception:  # the run may have been deleted; the version is still valid
                log.warning("run %s of %s v%s is gone; no metrics", mv.run_id, self.name, mv.version)
        # The REST API does not return model_id; the source URI holds it.
        m = LOGGED_MODEL_URI.match(mv.source or "")
        return ModelVersionInfo(
            name=mv.name,
            version=str(mv.version),
            source=mv.source or "",
            run_id=mv.run_id,
            model_id=mv.model_id or (m.group(1) if m else None),
            status=mv.status,
            aliases=tuple(mv.aliases or ()),
            tags=dict(mv.tags or {}),
            metrics=run_metrics,
            description=mv.description or "",
        )

    def versions(self) -> list[ModelVersionInfo]:
        """Every version, oldest first (without run metrics, which take one request each)."""
        found = self.client.search_model_versions(f"name = '{self.name}'")
        infos = [self._info(mv, metrics=False) for mv in sorted(found, key=lambda v: int(v.version))]
        if not infos:
            return infos
        # A search returns versions without their aliases; the registered model holds them.
        by_version: dict[str, list[str]] = {}
        for alias, version in (self.client.get_registered_model(self.name).aliases or {}).items():
            by_version.setdefault(str(version), []).append(alias)
        return [
            dataclasses.replace(v, aliases=tuple(sorted(by_version.get(v.version, ()))))
            if not v.aliases
            else v
            for v in infos
        ]

    def get(self, version: str | int) -> ModelVersionInfo:
        """One version, with its run's metrics.

        Raises:
            RegistryError: no such version; the message lists the versions there are.
        """
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version(self.name, str(version))
        except MlflowException as e:
            if e.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise
            have = ", ".join(v.version for v in self.versions()) or "none"
            raise RegistryError(f"{self.name} has no version {version!r}; versions: {have}") from None
        return self._info(mv)

    def alias(self, alias: str) -> ModelVersionInfo | None:
        """The version an alias points at, or None when the alias (or the model) does not exist."""
        from mlflow.exceptions import MlflowException

        try:
            aliases = self.client.get_registered_model(self.name).aliases
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        version = aliases.get(alias)
        return self.get(version) if version is not None else None

    def champion(self) -> ModelVersionInfo | None:
        """The serving version, or None before the first promotion."""
        return self.alias(CHAMPION)

    def challenger(self) -> ModelVersionInfo | None:
        """The latest registered candidate, or None."""
        return self.alias(CHALLENGER)

    def history(self) -> list[dict[str, Any]]:
        """Every champion move, oldest first: ``{"action", "version", "from", "who", "at", "reason"}``."""
        from mlflow.exceptions import MlflowException

        try:
            tags = self.client.get_registered_model(self.name).tags
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return []
            raise
        return json.loads(tags.get(TAG_HISTORY, "[]"))

    # --- writing ------------------------------------------------------------------------------

    def register(
        self,
        model_uri: str,
        *,
        run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        alias: str | None = CHALLENGER,
    ) -> ModelVersionInfo:
        """Register a logged model as a new version and point ``alias`` (``challenger``) at it.

        Args:
            model_uri: ``models:/<model_id>``, as :func:`training.mlflow_model.log_model` returns it.
            run_id: the run that logged it (default: the logged model's source run).
            tags: extra version tags.
            alias: the alias to set (None: none).

        Returns:
            The version (an existing one when this logged model is already registered).

        Raises:
            RegistryError: ``model_uri`` is not a logged model's URI.
        """
        m = LOGGED_MODEL_URI.match(model_uri)
        if m is None:
            raise RegistryError(
                f"model_uri {model_uri!r} is not a logged model URI; "
                "pass what training.mlflow_model.log_model returned (models:/m-...)"
            )
        model_id = m.group(1)
        self._ensure_model()
        existing = [v for v in self.versions() if v.source == model_uri]
        if existing:
            version = existing[0].version
            log.info("%s is already %s v%s", model_uri, self.name, version)
        else:
            logged = self.client.get_logged_model(model_id)
            version_tags = {**self._artifact_tags(model_id, logged.tags), **(tags or {})}
            mv = self.client.create_model_version(
                self.name,
                source=model_uri,
                run_id=run_id or logged.source_run_id,
                tags=version_tags,
                model_id=model_id,
            )
            version = str(mv.version)
            log.info("registered %s as %s v%s", model_uri, self.name, version)
        if alias:
            self.client.set_registered_model_alias(self.name, alias, version)
        return self.get(version)

    def _artifact_tags(self, model_id: str, logged_tags: Mapping[str, str]) -> dict[str, str]:
        """The model artifact's hash and original location, from the logged model's ``MLmodel``."""
        out = {}
        if TAG_ARTIFACT_SHA in logged_tags:
            out[TAG_ARTIFACT_SHA] = logged_tags[TAG_ARTIFACT_SHA]
        entry = self._mlmodel_artifact(model_id)
        if entry is not None:
            out[TAG_ARTIFACT_URI] = str(entry.get("uri", ""))
        return out

    def _mlmodel_artifact(self, model_id: str) -> dict[str, Any] | None:
        """The ``model`` entry of the pyfunc flavour's artifacts in the logged model's ``MLmodel``."""
        import mlflow.artifacts

        location = self.client.get_logged_model(model_id).artifact_location
        with tempfile.TemporaryDirectory(prefix="nightshift-registry-") as tmp:
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{location}/MLmodel", dst_path=tmp, tracking_uri=self.tracking_uri
            )
            spec = yaml.safe_load(Path(path).read_text())
        return spec.get("flavors", {}).get("python_function", {}).get("artifacts", {}).get("model")

    def promote(
        self, version: str | int, *, who: str, report: str | None = None, reason: str = ""
    ) -> ModelVersionInfo:
        """Point ``champion`` at ``version``, remembering the previous champion for a rollback.

        Args:
            version: the version to serve.
            who: the person or flow that decided (recorded on the version and in the history).
            report: the gate report (Markdown) behind the decision; attached as ``PROMOTION.md``.
            reason: free text, e.g. ``"gates passed"`` or ``"manual override after review"``.

        Returns:
            The new champion.

        Raises:
            RegistryError: no such version, or it is not READY.
        """
        target = self.get(version)
        if target.status != "READY":
            raise RegistryError(
                f"{self.name} v{target.version} is {target.status}, not READY; it cannot serve"
            )
        current = self.champion()
        if current is not None and current.version == target.version:
            log.info("%s v%s is already champion", self.name, target.version)
            return target
        now = utc_timestamp()
        tags = {
            TAG_PREVIOUS: current.version if current else "",
            TAG_PROMOTED_BY: who,
            TAG_PROMOTED_AT: now,
            TAG_PROMOTION_REASON: reason,
        }
        # Tags first, alias last: if anything fails in between, the champion has not moved.
        for k, v in tags.items():
            self.client.set_model_version_tag(self.name, target.version, k, v)
        if report:
            self.attach_text(target.version, report, "PROMOTION.md")
        self.client.set_registered_model_alias(self.name, CHAMPION, target.version)
        self._record("promote", target.version, current.version if current else None, who, now, reason)
        log.info(
            "%s champion: v%s -> v%s (%s)",
            self.name,
            current.version if current else "-",
            target.version,
            who,
        )
        return self.get(target.version)

    def rollback(self, *, who: str, reason: str = "") -> ModelVersionInfo:
        """Move ``champion`` back to the version that was champion before the current one.

        Returns:
            The restored champion.

        Raises:
            RegistryError: there is no champion, or it was the first one (nothing to return to).
        """
        current = self.champion()
        if current is None:
            raise RegistryError(f"{self.name} has no champion to roll back; promote a version first")
        previous = current.previous_champion
        if previous is None:
            raise RegistryError(
                f"{self.name} v{current.version} was the first champion; there is nothing to roll back to. "
                "Promote another version by hand instead"
            )
        target = self.get(previous)
        now = utc_timestamp()
        self.client.set_model_version_tag(self.name, current.version, TAG_ROLLED_BACK_BY, who)
        self.client.set_model_version_tag(self.name, current.version, TAG_ROLLED_BACK_AT, now)
        self.client.set_registered_model_alias(self.name, CHAMPION, target.version)
        self._record("rollback", target.version, current.version, who, now, reason)
        log.info("%s champion rolled back: v%s -> v%s (%s)", self.name, current.version, target.version, who)
        return self.get(target.version)

    def _record(
        self, action: str, version: str, previous: str | None, who: str, at: str, reason: str
    ) -> None:
        events = self.history()
        events.append(
            {"action": action, "version": version, "from": previous, "who": who, "at": at, "reason": reason}
        )
        self.client.set_registered_model_tag(self.name, TAG_HISTORY, json.dumps(events[-MAX_HISTORY:]))

    # --- attachments --------------------------------------------------------------------------

    def attach_text(self, version: str | int, text: str, file_name: str) -> str:
        """Store ``text`` as ``nightshift/<file_name>`` in the version's logged model artifacts.

        Versions without a logged model fall back to the source run's artifacts
        (``registry/v<version>/<file_name>``).

        Returns:
            The artifact path it was written to.
        """
        info = self.get(version)
        with tempfile.TemporaryDirectory(prefix="nightshift-registry-") as tmp:
            path = Path(tmp) / file_name
            path.write_text(text, encoding="utf-8")
            if info.model_id:
                self.client.log_model_artifact(info.model_id, str(path), ATTACH_DIR)
                return f"models:/{info.model_id}/{ATTACH_DIR}/{file_name}"
            if info.run_id:
                self.client.log_artifact(info.run_id, str(path), f"registry/v{info.version}")
                return f"runs:/{info.run_id}/registry/v{info.version}/{file_name}"
        raise RegistryError(f"{self.name} v{info.version} has neither a logged model nor a run to attach to")

    def attach_verdict(
        self,
        version: str | int,
        *,
        passed: bool,
        summary: str,
        markdown: str | None = None,
        metrics: Mapping[str, float] | None = None,
        report_sha256: str | None = None,
    ) -> None:
        """Attach a gate verdict: tags ``nightshift.gate`` (passed/failed), its summary, the metrics
        and the ``eval_report`` hash, plus ``GATE_VERDICT.md`` when ``markdown`` is given."""
        v = str(version)
        tags = {TAG_GATE: "passed" if passed else "failed", TAG_GATE_SUMMARY: summary[:5000]}
        if metrics is not None:
            tags[TAG_EVAL_METRICS] = json.dumps({k: float(x) for k, x in metrics.items()}, sort_keys=True)
        if report_sha256:
            tags[TAG_EVAL_REPORT] = report_sha256
        for k, val in tags.items():
            self.client.set_model_version_tag(self.name, v, k, val)
        if markdown:
            self.attach_text(v, markdown, "GATE_VERDICT.md")

    def attach_model_card(self, version: str | int, markdown: str) -> None:
        """Make ``markdown`` the version's description (cut to fit) and store it as ``MODEL_CARD.md``."""
        v = str(version)
        where = self.attach_text(v, markdown, "MODEL_CARD.md")
        description = markdown
        if len(description) > MAX_DESCRIPTION:
            description = (
                markdown[: MAX_DESCRIPTION - 200].rsplit("\n", 1)[0] + f"\n\n… the full card is `{where}`."
            )
        self.client.update_model_version(self.name, v, description=description)

    def model_artifact_path(self, version: str | int, cache_dir: str | Path) -> Path:
        """A local directory holding the version's ``model`` artifact (to load or evaluate it).

        The directory it was published in is used when it still exists with the same hash;
        otherwise the copy inside the logged model is downloaded to ``cache_dir/<sha256[:16]>``.
        Callers verify it with ``open_artifact`` (``load_model`` does).
        """
        import mlflow.artifacts

        info = self.get(version)
        sha = info.artifact_sha256
        local = Path(info.artifact_uri) if info.artifact_uri and "://" not in info.artifact_uri else None
        if local is not None and (local / INDEX).is_file():
            if json.loads((local / INDEX).read_text()).get("sha256") == sha:
                return local
        if not info.model_id:
            raise RegistryError(
                f"{self.name} v{info.version} has no logged model to download the artifact from"
            )
        entry = self._mlmodel_artifact(info.model_id)
        if entry is None or "path" not in entry:
            raise RegistryError(f"{self.name} v{info.version}: its MLmodel holds no 'model' artifact")
        dest = Path(cache_dir) / (sha[:16] if sha else info.model_id)
        if (dest / INDEX).is_file():
            return dest
        location = self.client.get_logged_model(info.model_id).artifact_location
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Downloaded next to its destination and renamed: a reader never sees a partial copy.
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".download-") as tmp:
            got = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{location}/{entry['path']}", dst_path=tmp, tracking_uri=self.tracking_uri
            )
            Path(got).rename(dest)
        return dest
