"""The dashboard's state-changing actions: preference labels, promotions and rollbacks.

Every action names who did it (:func:`identity`) and refuses to run in read-only mode
(:class:`ReadOnlyError`), here on the server side and not only by hiding buttons, so a stale
browser tab cannot change anything either.

Labels are written to the catalog ``feedback`` table directly (``source='dashboard'``, the
labeller's name). A preference row says which of two completions of the same prompt is better;
"A is unsafe" is stored as a preference for B with ``unsafe`` set, i.e. on a preference row
``unsafe`` means *the rejected answer was marked unsafe*, so RLHF gets a (safe, unsafe) pair and
safety reports can find it.

Promotion and rollback move the ``champion`` alias through ``catalog.registry`` (which records
who, when and why on the version and in the champion history), then ask Prefect to run
``deploy/promote`` so serving follows; without a Prefect API they say which command to run.
"""

from __future__ import annotations

import getpass
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import select

from catalog.db import session_scope
from catalog.models import Completion, Feedback, feedback_target, utcnow
from dashboard.queries import clear_caches
from dashboard.settings import Settings

# Prefect is imported inside the functions that use it, not here: it takes a second or more to
# import, and not every user of this module needs it.

Choice = Literal["a", "b", "a_unsafe", "b_unsafe"]
CHOICES: dict[str, str] = {
    "a": "A is better",
    "b": "B is better",
    "a_unsafe": "A is unsafe",
    "b_unsafe": "B is unsafe",
}
MAX_NAME = 255  # the width of feedback.labeller and deployments.created_by
MAX_NOTE = 2000


class ActionError(RuntimeError):
    """An action could not be done; the message is meant for the person who clicked."""


class ReadOnlyError(ActionError):
    """The dashboard runs read-only (``NIGHTSHIFT_DASHBOARD_READ_ONLY``)."""


@dataclass(frozen=True)
class Identity:
    """Who is acting, and how we know."""

    name: str
    source: str


def identity(settings: Settings, headers: Mapping[str, str] | None = None) -> Identity:
    """The acting user: the trusted proxy header if configured and present, else the configured
    user, else the OS user the dashboard runs as (the local demo).

    A header is only believed when ``NIGHTSHIFT_DASHBOARD_IDENTITY_HEADER`` names it: without a
    proxy in front, anyone could send any header.
    """
    if settings.identity_header and headers:
        wanted = settings.identity_header.lower()
        for key, value in headers.items():
            if key.lower() == wanted and value.strip():
                return Identity(value.strip()[:MAX_NAME], f"header {settings.identity_header}")
    if settings.user:
        return Identity(settings.user[:MAX_NAME], "NIGHTSHIFT_DASHBOARD_USER")
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return Identity(f"{user}@local"[:MAX_NAME], "the dashboard's OS user")


def ensure_writable(settings: Settings) -> None:
    """Raise :class:`ReadOnlyError` in read-only mode."""
    if settings.read_only:
        raise ReadOnlyError(
            "this dashboard is read-only (NIGHTSHIFT_DASHBOARD_READ_ONLY is set); nothing was changed"
        )


def record_label(
    settings: Settings,
    who: Identity,
    a_id: str,
    b_id: str,
    choice: Choice,
    note: str | None = None,
) -> int:
    """Store one preference label between completions ``a_id`` and ``b_id``.

    Args:
        settings: Where the catalog is; read-only mode refuses.
        who: The labeller.
        a_id: The completion shown as A.
        b_id: The completion shown as B.
        choice: ``a``/``b`` (the better one) or ``a_unsafe``/``b_unsafe``.
        note: Optional free text from the labeller.

    Returns:
        The feedback row's id. One identity has one label per pair: labelling it again replaces it.

    Raises:
        ReadOnlyError: In read-only mode.
        ActionError: Unknown choice, the same completion twice, or a completion not in the catalog.
    """
    ensure_writable(settings)
    if choice not in CHOICES:
        raise ActionError(f"unknown label {choice!r}; expected one of {', '.join(CHOICES)}")
    if a_id == b_id:
        raise ActionError("a preference needs two different completions")
    unsafe = choice.endswith("_unsafe")
    preferred = ("b" if choice == "a_unsafe" else "a") if unsafe else choice
    parts = [f"response {choice[0].upper()} marked unsafe"] if unsafe else []
    if note and note.strip():
        parts.append(note.strip()[:MAX_NOTE])
    with session_scope(settings.catalog_url) as s:
        missing = [cid for cid in (a_id, b_id) if s.get(Completion, cid) is None]
        if missing:
            raise ActionError(
                f"completion(s) {', '.join(missing)} not in the catalog at {settings.catalog_url}"
            )
        target = feedback_target(a_id, b_id)
        values = {
            "kind": "preference",
            "completion_id": a_id,
            "other_completion_id": b_id,
            "preferred": preferred,
            "unsafe": unsafe,
            "note": "; ".join(parts) or None,
        }
        same = (Feedback.source == "dashboard", Feedback.labeller == who.name, Feedback.target == target)
        row = s.scalars(select(Feedback).where(*same)).first()
        if row is None:
            row = Feedback(labeller=who.name, source="dashboard", target=target, **values)
            s.add(row)
        else:
            for k, v in values.items():
                setattr(row, k, v)
            row.created_at = utcnow()
        s.flush()
        feedback_id = row.id
    clear_caches()
    return feedback_id


def _registry(settings: Settings) -> Any:
    try:  # MLflow may be left out of a dashboard-only installation
        from catalog.registry import Registry
    except ImportError as exc:
        raise ActionError(
            f"promotion and rollback need catalog.registry, which this installation lacks ({exc})"
        ) from exc
    return Registry(settings.mlflow_uri, name=settings.registered_model)


def _rollout(settings: Settings, who: Identity, version: str, reason: str) -> str:
    """Ask the orchestrator to serve ``version`` (``deploy/promote``), or say how to do it by hand.

    The rollout runs on the Prefect worker, not in the dashboard: it takes minutes and needs Ray.
    ``deploy/promote`` finds the alias already moved and only rolls the model out.
    """
    if not settings.prefect_api:
        command = f"prefect deployment run deploy/promote -p version={version}"
        return f"serving follows once it is rolled out: `{command}` (no PREFECT_API_URL here to request it)"
    from prefect.deployments import run_deployment

    try:
        flow_run = run_deployment(
            "deploy/promote",
            parameters={"version": version, "reason": f"{reason} (by {who.name}, from the dashboard)"},
            timeout=0,  # submit and return; the Prefect UI shows the rollout
            as_subflow=False,
        )
    except Exception as exc:  # noqa: BLE001 - the alias has moved; say exactly what did not happen
        raise ActionError(
            f"the champion alias moved to v{version}, but the rollout could not be requested from Prefect "
            f"({type(exc).__name__}: {exc}); run `prefect deployment run deploy/promote -p version={version}`"
        ) from exc
    link = settings.prefect_flow_run_link(str(flow_run.id))
    return f"rollout requested: [deploy/promote flow run]({link})"


def promote(settings: Settings, who: Identity, version: str, reason: str) -> str:
    """Move the ``champion`` alias to ``version`` (recording who and why) and request its rollout.

    Raises:
        ReadOnlyError: In read-only mode.
        ActionError: No reason given, no registry, the registry refused, or the rollout request failed.
    """
    ensure_writable(settings)
    if not reason.strip():
        raise ActionError("say why: a reason is recorded with every promotion")
    try:
        info = _registry(settings).promote(version, who=who.name, reason=reason.strip())
    except ActionError:
        raise
    except Exception as exc:  # noqa: BLE001 - RegistryError and MLflow errors are shown, not swallowed
        raise ActionError(f"promotion of v{version} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        _forget()
    return f"v{info.version} is champion, promoted by {who.name}; " + _rollout(
        settings, who, info.version, reason
    )


def rollback(settings: Settings, who: Identity, reason: str) -> str:
    """Move ``champion`` back to the previous champion (recording who and why) and request its rollout.

    Raises:
        ReadOnlyError: In read-only mode.
        ActionError: No reason given, no registry, nothing to roll back to, or the rollout request failed.
    """
    ensure_writable(settings)
    if not reason.strip():
        raise ActionError("say why: a reason is recorded with every rollback")
    try:
        info = _registry(settings).rollback(who=who.name, reason=reason.strip())
    except ActionError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ActionError(f"rollback failed: {type(exc).__name__}: {exc}") from exc
    finally:
        _forget()
    return f"v{info.version} is champion again, rolled back by {who.name}; " + _rollout(
        settings, who, info.version, reason
    )


def _forget() -> None:
    clear_caches()
