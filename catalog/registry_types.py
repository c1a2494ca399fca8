"""Names and value types of the registry conventions (see :mod:`catalog.registry`)."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field

MODEL_NAME = "nightshift-gpt"
CHALLENGER = "challenger"
CHAMPION = "champion"
TAG_ARTIFACT_SHA = "nightshift.artifact_sha256"
TAG_ARTIFACT_URI = "nightshift.artifact_uri"
TAG_PREVIOUS = "nightshift.previous_champion"
TAG_PROMOTED_BY = "nightshift.promoted_by"
TAG_PROMOTED_AT = "nightshift.promoted_at"
TAG_PROMOTION_REASON = "nightshift.promotion_reason"
TAG_ROLLED_BACK_BY = "nightshift.rolled_back_by"
TAG_ROLLED_BACK_AT = "nightshift.rolled_back_at"
TAG_GATE = "nightshift.gate"  # "passed" or "failed"
TAG_GATE_SUMMARY = "nightshift.gate_summary"
TAG_EVAL_REPORT = "nightshift.eval_report_sha256"
TAG_EVAL_METRICS = "nightshift.eval_metrics"  # JSON object of the candidate's evaluation metrics
TAG_HISTORY = "nightshift.champion_history"  # on the registered model: JSON list of alias moves
ATTACH_DIR = "nightshift"  # folder of the logged model's artifacts that holds our Markdown
MAX_DESCRIPTION = 4500  # MLflow stores descriptions in a 5000-character column
MAX_HISTORY = 100
LOGGED_MODEL_URI = re.compile(r"^models:/(m-[0-9a-f]+)$")


class RegistryError(ValueError):
    """A registry request that cannot be carried out; the message says what to do instead."""


def utc_timestamp() -> str:
    """Now, as the registry tags record it: ``2026-12-07T15:36:39Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class ModelVersionInfo:
    """A registered version with what the platform needs to know about it."""

    name: str
    version: str
    source: str  # models:/<model_id>
    run_id: str | None
    model_id: str | None
    status: str
    aliases: tuple[str, ...]
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # latest metrics of the run that logged it
    description: str = ""

    @property
    def uri(self) -> str:
        """``models:/<name>/<version>``, loadable with ``mlflow.pyfunc.load_model``."""
        return f"models:/{self.name}/{self.version}"

    @property
    def artifact_sha256(self) -> str | None:
        """The hash of the nightshift ``model`` artifact this version holds."""
        return self.tags.get(TAG_ARTIFACT_SHA)

    @property
    def artifact_uri(self) -> str | None:
        """Where the ``model`` artifact was published when it was logged (a local path or URL)."""
        return self.tags.get(TAG_ARTIFACT_URI)

    @property
    def previous_champion(self) -> str | None:
        """The version that was champion before this one was promoted (None if it was the first)."""
        return self.tags.get(TAG_PREVIOUS) or None

    @property
    def gate(self) -> str | None:
        """``passed`` or ``failed`` once a verdict is attached."""
        return self.tags.get(TAG_GATE)

    @property
    def eval_metrics(self) -> dict[str, float]:
        """The candidate metrics of the attached evaluation (empty before one is attached)."""
        return json.loads(self.tags.get(TAG_EVAL_METRICS, "{}"))
