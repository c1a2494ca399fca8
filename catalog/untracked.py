"""A stage run that records nothing, for the CLI's ``--no-track``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from catalog.artifacts import ArtifactRef


class NullStageRun:
    """A stand-in for :class:`StageRun` that records nothing (the CLI's ``--no-track``).

    Usable directly as a context manager, so ``with tracked_or_null as run:`` reads the same
    either way.
    """

    mlflow_run_id: str | None = None
    catalog_run_id: str | None = None
    url: str | None = None

    def __enter__(self) -> NullStageRun:
        return self

    def __exit__(self, *_exc: object) -> None:
        return None

    def set_tag(self, key: str, value: Any) -> None:
        """Do nothing."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Do nothing."""

    def log_metrics(
        self,
        metrics: Mapping[str, float],
        step: int | None = None,
        *,
        model_id: str | None = None,
        dataset: ArtifactRef | None = None,
    ) -> None:
        """Do nothing."""

    def logged_model_id(self, ref: ArtifactRef) -> str | None:
        """None: nothing is tracked."""
        return None

    def log_text(self, text: str, artifact_file: str) -> None:
        """Do nothing."""

    def log_dict(self, d: Mapping[str, Any], artifact_file: str) -> None:
        """Do nothing."""

    def use(self, ref: ArtifactRef, *, context: str = "training") -> None:
        """Do nothing."""

    def produce(self, ref: ArtifactRef, *, log_files: bool = True, max_file_bytes: int = 8 * 2**20) -> None:
        """Do nothing."""
