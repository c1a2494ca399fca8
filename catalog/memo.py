"""Stage memos: a stage identity → the run that produced its result, checked before it is reused.

A stage's identity (computed by the caller: :mod:`training.stage_cache`) hashes what decides its
output: the content hashes of its inputs, the config slice it reads and a code-version key. When a
night reaches a stage whose identity already produced a result, it reuses the published artifacts
instead of running the stage again. Before reuse every artifact is verified against its recorded
hash (:func:`catalog.artifacts.open_artifact`); one that fails (files gone to gc, changed or
truncated) drops the memo with a log line naming it, and the stage runs again.

Why a catalog table and not Prefect's cache policies and result persistence: the result of a stage
is a set of artifacts the catalog already owns (content-addressed, checked on read), so a memo
needs only their hashes, and their verification must happen at lookup, which a Prefect cache key
cannot express; the same memo also serves the CLI and the tests, which run stages without Prefect;
and a reused stage must still open its MLflow child run that says where the result came from, which
a cached Prefect task, whose body does not run, would not.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from catalog.artifacts import ArtifactError, ArtifactRef, open_artifact
from catalog.db import migrate, session_scope
from catalog.models import StageMemo

log = logging.getLogger(__name__)


@dataclass
class Memo:
    """A reusable stage result: its artifacts (opened and verified) and the rest of what it returned."""

    key: str
    stage: str
    run_id: str  # the catalog stage run that produced it
    mlflow_run_id: str | None
    refs: dict[str, ArtifactRef]  # by role, e.g. {"tokenizer": ..., "tokens": ...}
    result: dict[str, Any]


def recall(catalog_url: str, key: str) -> Memo | None:
    """The memo of ``key`` with every artifact verified; None when there is none or one fails.

    A memo whose artifact fails verification is removed (so the stage runs and writes a fresh one),
    and the log names the stage, the artifact and what was wrong with it.
    """
    migrate(catalog_url)
    with session_scope(catalog_url) as s:
        row = s.get(StageMemo, key)
        if row is None:
            return None
        stage, run_id, mlflow_run_id = row.stage, row.run_id, row.mlflow_run_id
        artifacts, result = dict(row.artifacts), dict(row.result)
    refs: dict[str, ArtifactRef] = {}
    for role, a in artifacts.items():
        try:
            refs[role] = open_artifact(a["uri"], kind=a["kind"], verify=True, expected_sha256=a["sha256"])
        except (ArtifactError, OSError) as e:
            log.warning(
                "cached %s result %s: its %s artifact %s failed verification (%s); running the stage again",
                stage,
                key[:16],
                role,
                a["sha256"][:16],
                e,
            )
            forget(catalog_url, key)
            return None
    return Memo(key, stage, run_id, mlflow_run_id, refs, result)


def remember(
    catalog_url: str,
    key: str,
    stage: str,
    *,
    run_id: str,
    mlflow_run_id: str | None,
    refs: dict[str, ArtifactRef | None],
    result: dict[str, Any],
) -> None:
    """Record that run ``run_id`` produced the result of ``key`` (replacing an older memo of it)."""
    artifacts = {
        role: {"kind": r.kind, "sha256": r.sha256, "uri": r.uri} for role, r in refs.items() if r is not None
    }
    with session_scope(catalog_url) as s:
        row = s.get(StageMemo, key)
        if row is None:
            s.add(
                StageMemo(
                    key=key,
                    stage=stage,
                    run_id=run_id,
                    mlflow_run_id=mlflow_run_id,
                    artifacts=artifacts,
                    result=result,
                )
            )
        else:
            row.run_id, row.mlflow_run_id, row.artifacts, row.result = (
                run_id,
                mlflow_run_id,
                artifacts,
                result,
            )


def forget(catalog_url: str, key: str) -> None:
    """Drop the memo of ``key`` (no-op when there is none)."""
    with session_scope(catalog_url) as s:
        row = s.get(StageMemo, key)
        if row is not None:
            s.delete(row)


def list_memos(catalog_url: str, stage: str | None = None) -> list[StageMemo]:
    """Every memo (of ``stage``), newest first."""
    migrate(catalog_url)
    query = select(StageMemo).order_by(StageMemo.created_at.desc())
    if stage is not None:
        query = query.where(StageMemo.stage == stage)
    with session_scope(catalog_url) as s:
        return list(s.scalars(query))
