"""The catalog's tables as SQLAlchemy 2 typed ORM classes.

Nine tables: ``artifacts`` (content-addressed outputs, identity = (kind, sha256); a row outlives
its files when gc removes them, marked ``deleted_at``/``deleted_by``), ``runs`` (one
row per pipeline run and per stage, a stage pointing at its pipeline through ``parent_id``),
``lineage_edges`` (run → artifact it read / wrote), ``deployments``, ``completions`` (every
served request, with the id of the API key that received it), ``feedback`` (human ratings and
preferences on completions, one per labeller and target), ``preference_feedback`` (which feedback
rows a ``preferences`` snapshot was built from), ``api_keys`` (named API keys with a role; only
their sha256 digests are stored) and ``stage_memos`` (which stage run already produced the result of
a stage identity, so a night re-run reuses it: :mod:`catalog.memo`).

Portable by construction: only generic types (``JSON``, ``String``, ``DateTime``), string
columns with CHECK constraints instead of native enums (nothing dialect-specific to create or
drop), and deterministic constraint names so migrations behave the same on SQLite and Postgres.
All timestamps are timezone-aware UTC in Python, whatever the backend stores.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

RUN_STATUSES = ("running", "completed", "failed")
DIRECTIONS = ("read", "wrote")
COMPLETION_ENDPOINTS = ("completions", "chat")
FEEDBACK_KINDS = ("rating", "preference")
FEEDBACK_SOURCES = ("api", "dashboard")
KEY_ROLES = ("client", "labeller", "admin")
# Column sizes that request bodies are checked against (serving/schemas.py), so a value the API
# accepts always fits its column.
USER_CHARS = 255
NOTE_CHARS = 4000
COMPLETION_ID_CHARS = 64
KEY_ID_CHARS = 32
KEY_NAME_CHARS = 64

# Deterministic names: Alembic needs a name to drop or alter a constraint, and SQLite and
# Postgres would otherwise invent different ones.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time as a timezone-aware UTC datetime."""
    return datetime.now(UTC)


def new_run_id() -> str:
    """A fresh run id (uuid4 as a 36-character string)."""
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator[datetime]):
    """A ``DateTime(timezone=True)`` that always hands back aware UTC datetimes.

    SQLite has no timezone storage and returns naive values; Postgres returns aware ones in the
    session time zone. Normalising here means callers compare and subtract timestamps safely.
    Naive values passed in are taken to be UTC already.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class Artifact(Base):
    """A content-addressed artifact; the same (kind, sha256) is one row wherever it was written."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("kind", "sha256"), Index(None, "sha256"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sha256: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(64))
    uri: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    # ``metadata`` is reserved on declarative classes, hence the attribute name ``meta``.
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Set when gc removed the files (catalog/retention.py); the row and its lineage edges stay.
    deleted_at: Mapped[datetime | None] = mapped_column()
    deleted_by: Mapped[str | None] = mapped_column(String(255))

    def __repr__(self) -> str:
        return f"Artifact(id={self.id}, kind={self.kind!r}, sha256={self.sha256[:12]!r})"


class Run(Base):
    """A pipeline run (``parent_id`` is None) or one stage of it."""

    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint(_one_of("status", RUN_STATUSES), name="status"),
        Index(None, "parent_id"),
        Index(None, "mlflow_run_id"),
        Index(None, "prefect_flow_run_id"),
        Index(None, "stage", "started_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_run_id)
    stage: Mapped[str] = mapped_column(String(128))
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id"))
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    prefect_flow_run_id: Mapped[str | None] = mapped_column(String(64))
    config: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="running")
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column()

    parent: Mapped[Run | None] = relationship(remote_side=[id], back_populates="children")
    children: Mapped[list[Run]] = relationship(back_populates="parent")

    def __repr__(self) -> str:
        return f"Run(id={self.id!r}, stage={self.stage!r}, status={self.status!r})"


class LineageEdge(Base):
    """``run`` read or wrote ``artifact``."""

    __tablename__ = "lineage_edges"
    __table_args__ = (
        UniqueConstraint("run_id", "artifact_id", "direction"),
        CheckConstraint(_one_of("direction", DIRECTIONS), name="direction"),
        # Walking lineage backwards asks "who wrote artifact X" and "what did run R read".
        Index(None, "artifact_id", "direction"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"))
    artifact_id: Mapped[int] = mapped_column(ForeignKey("artifacts.id"))
    direction: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    run: Mapped[Run] = relationship()
    artifact: Mapped[Artifact] = relationship()


class Deployment(Base):
    """A model served at an endpoint; ``status`` is free text such as 'active' or 'retired'."""

    __tablename__ = "deployments"
    __table_args__ = (Index(None, "model_artifact_id"), Index(None, "status", "created_at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_artifact_id: Mapped[int] = mapped_column(ForeignKey("artifacts.id"))
    registry_name: Mapped[str | None] = mapped_column(String(255))
    registry_version: Mapped[str | None] = mapped_column(String(64))
    alias: Mapped[str | None] = mapped_column(String(64))
    endpoint: Mapped[str | None] = mapped_column(String(1024))
    status: Mapped[str] = mapped_column(String(32), default="active")
    created_by: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    retired_at: Mapped[datetime | None] = mapped_column()

    model_artifact: Mapped[Artifact] = relationship()


class Completion(Base):
    """One served request and its response, linked to the exact model artifact that answered."""

    __tablename__ = "completions"
    __table_args__ = (
        CheckConstraint(_one_of("endpoint", COMPLETION_ENDPOINTS), name="endpoint"),
        Index(None, "model_artifact_id"),
        Index(None, "deployment_id"),
        Index(None, "created_at"),
        Index(None, "key_id"),
    )

    id: Mapped[str] = mapped_column(String(COMPLETION_ID_CHARS), primary_key=True)
    deployment_id: Mapped[int | None] = mapped_column(ForeignKey("deployments.id"))
    model_artifact_id: Mapped[int] = mapped_column(ForeignKey("artifacts.id"))
    endpoint: Mapped[str] = mapped_column(String(16))
    prompt: Mapped[str] = mapped_column(Text)
    response: Mapped[str] = mapped_column(Text)
    params: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    user: Mapped[str | None] = mapped_column(String(USER_CHARS))
    # The API key that received the request (``api_keys.id`` or a static key's id), never the key.
    key_id: Mapped[str | None] = mapped_column(String(KEY_ID_CHARS))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    deployment: Mapped[Deployment | None] = relationship()
    model_artifact: Mapped[Artifact] = relationship()


class Feedback(Base):
    """A rating of one completion, or a preference between two (``preferred`` is 'a' or 'b').

    ``labeller`` is who gave it: the API key's name, or the dashboard's acting identity; ``user`` is
    what the client wrote in the request, kept as data only. ``target`` names what was labelled
    (``rating:<id>``, or ``pair:<id>|<id>`` in sorted order), so one labeller has one label per
    completion and per pair: a repeat replaces the earlier row.
    """

    __tablename__ = "feedback"
    __table_args__ = (
        CheckConstraint(_one_of("kind", FEEDBACK_KINDS), name="kind"),
        CheckConstraint(_one_of("source", FEEDBACK_SOURCES), name="source"),
        CheckConstraint("preferred IS NULL OR preferred IN ('a', 'b')", name="preferred"),
        Index(None, "completion_id"),
        Index(None, "other_completion_id"),
        Index(None, "kind", "created_at"),
        UniqueConstraint("source", "labeller", "target"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    completion_id: Mapped[str] = mapped_column(ForeignKey("completions.id"))
    other_completion_id: Mapped[str | None] = mapped_column(ForeignKey("completions.id"))
    rating: Mapped[int | None] = mapped_column(Integer)
    preferred: Mapped[str | None] = mapped_column(String(1))
    unsafe: Mapped[bool] = mapped_column(Boolean, default=False)
    note: Mapped[str | None] = mapped_column(Text)
    labeller: Mapped[str | None] = mapped_column(String(255))
    source: Mapped[str] = mapped_column(String(16), default="api")
    key_id: Mapped[str | None] = mapped_column(String(KEY_ID_CHARS))
    user: Mapped[str | None] = mapped_column(String(USER_CHARS))
    target: Mapped[str | None] = mapped_column(String(2 * COMPLETION_ID_CHARS + 8))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    completion: Mapped[Completion] = relationship(foreign_keys=[completion_id])
    other_completion: Mapped[Completion | None] = relationship(foreign_keys=[other_completion_id])


class PreferenceFeedback(Base):
    """A feedback row that a ``preferences`` artifact (an RLHF run's preference snapshot) was built from.

    Lineage edges link runs and artifacts; feedback rows are neither, so this table is the edge
    from a snapshot back to the human labels in it (and, reversed, from a label to every snapshot,
    hence every reward model and policy, it reached).
    """

    __tablename__ = "preference_feedback"
    __table_args__ = (Index(None, "feedback_id"),)

    artifact_id: Mapped[int] = mapped_column(ForeignKey("artifacts.id"), primary_key=True)
    feedback_id: Mapped[int] = mapped_column(ForeignKey("feedback.id"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    artifact: Mapped[Artifact] = relationship()
    feedback: Mapped[Feedback] = relationship()


def feedback_target(completion_id: str, other_completion_id: str | None) -> str:
    """What a label is about: ``rating:<id>``, or ``pair:<a>|<b>`` with the ids sorted (a pair is
    the same pair whichever side came first)."""
    if other_completion_id is None:
        return f"rating:{completion_id}"
    a, b = sorted((completion_id, other_completion_id))
    return f"pair:{a}|{b}"


class ApiKey(Base):
    """A named API key with a role; only its sha256 digest is stored.

    Roles: ``client`` (completions, and feedback on the completions it received), ``labeller``
    (feedback on any completion), ``admin`` (as labeller). A revoked key (``revoked_at`` set) is
    refused by every replica within ``serve.key_cache_s`` seconds, without a restart.
    """

    __tablename__ = "api_keys"
    __table_args__ = (
        UniqueConstraint("name"),
        UniqueConstraint("digest"),
        CheckConstraint(_one_of("role", KEY_ROLES), name="role"),
    )

    id: Mapped[str] = mapped_column(String(KEY_ID_CHARS), primary_key=True)
    name: Mapped[str] = mapped_column(String(KEY_NAME_CHARS))
    role: Mapped[str] = mapped_column(String(16))
    digest: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()

    def __repr__(self) -> str:
        return f"ApiKey(id={self.id!r}, name={self.name!r}, role={self.role!r})"


class StageMemo(Base):
    """A stage identity (its inputs' hashes, config slice and code version) and the run that produced
    its result: a later night with the same identity reuses the result instead of running the stage."""

    __tablename__ = "stage_memos"
    __table_args__ = (Index(None, "stage", "created_at"),)

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    stage: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"))
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    # The artifacts the result names (sha256 by role), verified before reuse, and what else it holds.
    artifacts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"StageMemo(stage={self.stage!r}, key={self.key[:12]!r}, run_id={self.run_id!r})"
