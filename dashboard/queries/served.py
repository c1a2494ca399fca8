"""Catalog reads about serving: deployments, completions, feedback and pairs to label.

SQLAlchemy 2 ``select()`` with bound parameters only, portable across SQLite and Postgres.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import false, func, select
from sqlalchemy.orm import Session

from catalog.db import session_scope
from catalog.models import Completion, Deployment, Feedback
from dashboard.queries.cache import cached
from dashboard.records import CompletionInfo, DeploymentInfo, FeedbackInfo, LabelPair, Usage


def model_usage(s: Session, model_ids: Sequence[int]) -> dict[int, Usage]:
    """Completions and feedback counted per model artifact, in two grouped queries."""
    if not model_ids:
        return {}
    ids = sorted(set(model_ids))
    served = dict(
        s.execute(
            select(Completion.model_artifact_id, func.count(Completion.id))
            .where(Completion.model_artifact_id.in_(ids))
            .group_by(Completion.model_artifact_id)
        ).all()
    )
    fb = s.execute(
        select(Completion.model_artifact_id, Feedback.kind, Feedback.unsafe, func.count(Feedback.id))
        .join(Completion, Completion.id == Feedback.completion_id)
        .where(Completion.model_artifact_id.in_(ids))
        .group_by(Completion.model_artifact_id, Feedback.kind, Feedback.unsafe)
    ).all()
    counts: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for model_id, kind, unsafe, n in fb:
        counts[model_id][kind] += n
        if unsafe:
            counts[model_id]["unsafe"] += n
    return {
        mid: Usage(
            completions=served.get(mid, 0),
            ratings=counts[mid]["rating"],
            preferences=counts[mid]["preference"],
            unsafe=counts[mid]["unsafe"],
        )
        for mid in ids
        if served.get(mid) or mid in counts
    }


@cached
def deployments(url: str, limit: int = 100) -> list[DeploymentInfo]:
    """Deployments, newest first."""
    query = select(Deployment).order_by(Deployment.created_at.desc(), Deployment.id.desc()).limit(limit)
    with session_scope(url) as s:
        return [DeploymentInfo.of(d) for d in s.scalars(query)]


@cached
def usage(url: str, model_ids: tuple[int, ...]) -> dict[int, Usage]:
    """Completions and feedback per model artifact."""
    with session_scope(url) as s:
        return model_usage(s, model_ids)


@cached
def recent_completions(
    url: str, model_artifact_id: int | None = None, limit: int = 20
) -> list[CompletionInfo]:
    """The newest served completions, of one model or all."""
    query = select(Completion).order_by(Completion.created_at.desc(), Completion.id).limit(limit)
    if model_artifact_id is not None:
        query = query.where(Completion.model_artifact_id == model_artifact_id)
    with session_scope(url) as s:
        return [CompletionInfo.of(c) for c in s.scalars(query)]


@cached
def completions_by_id(url: str, ids: tuple[str, ...]) -> dict[str, CompletionInfo]:
    """Completions by id (unknown ids are absent)."""
    if not ids:
        return {}
    with session_scope(url) as s:
        return {
            c.id: CompletionInfo.of(c) for c in s.scalars(select(Completion).where(Completion.id.in_(ids)))
        }


def _flip(a: str, b: str, labeller: str) -> bool:
    # Which answer is shown first is a stable coin toss per (pair, labeller): humans favour the
    # first option, and a stable order keeps the pair in place across Streamlit reruns.
    return hashlib.sha256(f"{a}\0{b}\0{labeller}".encode()).digest()[0] & 1 == 1


@cached
def label_pairs(url: str, labeller: str, window: int = 500, limit: int = 50) -> list[LabelPair]:
    """Pairs of different answers to the same prompt that ``labeller`` has not compared yet.

    Looks at the newest ``window`` completions; pairs across model versions come first, since
    they are what a comparison between versions needs.
    """
    with session_scope(url) as s:
        recent = [
            CompletionInfo.of(c)
            for c in s.scalars(select(Completion).order_by(Completion.created_at.desc()).limit(window))
        ]
        ids = [c.id for c in recent]
        done = s.execute(
            select(Feedback.completion_id, Feedback.other_completion_id).where(
                Feedback.kind == "preference",
                Feedback.labeller == labeller,
                Feedback.completion_id.in_(ids) if ids else false(),
            )
        ).all()
    seen = {frozenset(p) for p in done}
    by_prompt: dict[str, list[CompletionInfo]] = defaultdict(list)
    for c in recent:
        by_prompt[c.prompt].append(c)
    pairs: list[tuple[bool, datetime, LabelPair]] = []
    for prompt, group in by_prompt.items():
        group.sort(key=lambda c: (c.created_at, c.id))
        for i, a in enumerate(group):
            for b in group[i + 1 :]:
                if a.response == b.response or frozenset((a.id, b.id)) in seen:
                    continue
                first, second = (b, a) if _flip(a.id, b.id, labeller) else (a, b)
                cross = a.model_artifact_id != b.model_artifact_id
                pairs.append((cross, max(a.created_at, b.created_at), LabelPair(prompt, first, second)))
    pairs.sort(key=lambda p: (p[0], p[1]), reverse=True)
    return [p for _, _, p in pairs[:limit]]


@cached
def recent_feedback(url: str, labeller: str | None = None, limit: int = 20) -> list[FeedbackInfo]:
    """The newest feedback rows, of one labeller or everyone."""
    query = select(Feedback).order_by(Feedback.created_at.desc(), Feedback.id.desc()).limit(limit)
    if labeller is not None:
        query = query.where(Feedback.labeller == labeller)
    with session_scope(url) as s:
        return [FeedbackInfo.of(f) for f in s.scalars(query)]


@cached
def feedback_totals(url: str) -> dict[str, int]:
    """Feedback counted by source and kind (``{"dashboard/preference": 3, ...}``) plus unsafe marks."""
    with session_scope(url) as s:
        rows = s.execute(
            select(Feedback.source, Feedback.kind, func.count(Feedback.id)).group_by(
                Feedback.source, Feedback.kind
            )
        ).all()
        unsafe = s.scalar(select(func.count(Feedback.id)).where(Feedback.unsafe.is_(True))) or 0
    out = {f"{source}/{kind}": n for source, kind, n in rows}
    out["unsafe"] = unsafe
    return out


@cached
def completions_last_hours(url: str, hours: int = 24) -> int:
    """Completions served in the last ``hours`` hours (the window, not a timestamp, is the cache key)."""
    since = datetime.now(UTC) - timedelta(hours=hours)
    with session_scope(url) as s:
        return s.scalar(select(func.count(Completion.id)).where(Completion.created_at >= since)) or 0


def _snapshot_table() -> Any:
    # The link table from a preferences snapshot to the feedback rows it used arrived with the RLHF
    # stages (catalog revision 0002); an older catalog package simply has none to show.
    import catalog.models

    return getattr(catalog.models, "PreferenceFeedback", None)


@cached
def snapshot_labels(url: str, artifact_id: int) -> dict[str, int]:
    """How many feedback rows a ``preferences`` snapshot was built from, by source."""
    link = _snapshot_table()
    if link is None:
        return {}
    query = (
        select(Feedback.source, func.count(Feedback.id))
        .join(link, link.feedback_id == Feedback.id)
        .where(link.artifact_id == artifact_id)
        .group_by(Feedback.source)
    )
    with session_scope(url) as s:
        return dict(s.execute(query).all())


@cached
def labels_in_snapshots(url: str, labeller: str) -> tuple[int, int]:
    """(labels of ``labeller`` that some preferences snapshot used, snapshots that used them)."""
    link = _snapshot_table()
    if link is None:
        return 0, 0
    query = (
        select(func.count(func.distinct(Feedback.id)), func.count(func.distinct(link.artifact_id)))
        .join(link, link.feedback_id == Feedback.id)
        .where(Feedback.labeller == labeller)
    )
    with session_scope(url) as s:
        used, snapshots = s.execute(query).one()
    return int(used or 0), int(snapshots or 0)
