"""The last nights as ``nightshift status`` shows them: Prefect's flow runs, with the stage each is in.

A flow run's state and times come from the stack's Prefect server; the stage a running night is in,
and since when, from the catalog (every stage is a catalog run under the night's pipeline run). A
night in one stage for longer than ``night.stage_limits`` is flagged stuck: its own watchdog ends
it (``flows/watchdog.py``), unless the process that would is gone (a worker killed with it).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterStartTime,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.sorting import FlowRunSort, LogSort
from prefect.settings import PREFECT_API_URL, temporary_settings
from sqlalchemy import select

from catalog.db import migrate, session_scope
from catalog.models import Run
from core.config import Config


@dataclass(frozen=True)
class Night:
    """One flow run of the stack, as a row of ``nightshift status``."""

    flow_run_id: str
    name: str  # Prefect's flow run name
    flow: str  # pretrain, rlhf, ingest, deploy, maintenance
    state: str  # Completed, GateFailed, Crashed, Cancelled, Running, ...
    started: datetime | None
    seconds: float | None  # run time so far or in all
    message: str
    stage: str | None  # the stage in progress (running nights)
    stage_seconds: float | None
    stuck: str | None  # why it counts as stuck, else None


def _stage_in_progress(catalog_url: str, flow_run_id: str) -> tuple[str, datetime] | None:
    query = (
        select(Run.stage, Run.started_at)
        .where(Run.prefect_flow_run_id == flow_run_id, Run.parent_id.is_not(None), Run.status == "running")
        .order_by(Run.started_at.desc())
        .limit(1)
    )
    with session_scope(catalog_url) as s:
        row = s.execute(query).first()
    return (row.stage, row.started_at) if row else None


def recent_nights(cfg: Config, api_url: str, limit: int = 10) -> list[Night]:
    """The newest ``limit`` flow runs that started, newest first.

    Args:
        cfg: ``night`` limits and ``tracking.catalog_url``.
        api_url: the Prefect API (``http://127.0.0.1:4200/api``).
        limit: how many.
    """
    migrate(cfg.tracking.catalog_url)
    now = datetime.now(UTC)
    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(is_null_=False)),
            sort=FlowRunSort.START_TIME_DESC,
            limit=limit,
        )
        flows = {fid: client.read_flow(fid).name for fid in {r.flow_id for r in runs}}
    out = []
    for r in runs:
        state = r.state
        running = state is not None and state.is_running()
        end = r.end_time or (now if running else None)
        seconds = (end - r.start_time).total_seconds() if r.start_time and end else None
        stage = stage_seconds = stuck = None
        if running and (found := _stage_in_progress(cfg.tracking.catalog_url, str(r.id))):
            stage, since = found
            stage_seconds = (now - since).total_seconds()
            limit_s = cfg.night.limit(stage)
            if stage_seconds > limit_s:
                stuck = (
                    f"in {stage} for {duration(stage_seconds)}, over its limit of {duration(limit_s)} "
                    f"(night.stage_limits.{stage})"
                )
        out.append(
            Night(
                flow_run_id=str(r.id),
                name=r.name,
                flow=flows.get(r.flow_id, "?"),
                state=state.name if state else "?",
                started=r.start_time,
                seconds=seconds,
                message=(state.message or "") if state else "",
                stage=stage,
                stage_seconds=stage_seconds,
                stuck=stuck,
            )
        )
    return out


def duration(seconds: float) -> str:
    """``2h05m``, ``4m10s``, ``9s``."""
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def format_nights(nights: list[Night]) -> list[str]:
    """Table lines for a terminal."""
    lines = [f"{'started (UTC)':<17} {'flow':<11} {'state':<11} {'took':>8}  {'run':<24} detail"]
    for n in nights:
        started = n.started.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if n.started else "-"
        took = duration(n.seconds) if n.seconds is not None else "-"
        if n.stuck:
            detail = f"STUCK: {n.stuck}"
        elif n.stage:
            detail = f"in {n.stage} for {duration(n.stage_seconds or 0)}"
        else:
            detail = n.message.splitlines()[0][:90] if n.message else ""
        lines.append(f"{started:<17} {n.flow:<11} {n.state:<11} {took:>8}  {n.name[:24]:<24} {detail}")
    return lines


def follow(api_url: str, flow_run_id: str, out=print, poll_s: float = 2.0) -> str:
    """Print a flow run's log lines as they arrive (its stages' progress lines among them) and its
    state changes, until it ends; return the final state's name (``Completed``, ``GateFailed``, …).

    ``prefect deployment run --watch`` shows only state events; a user watching the night wants the
    log the Prefect UI shows, on the console.
    """
    seen = 0
    last_state = None
    only_this_run = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))

    def drain(client) -> None:
        nonlocal seen
        while logs := client.read_logs(
            log_filter=only_this_run, sort=LogSort.TIMESTAMP_ASC, offset=seen, limit=200
        ):
            for entry in logs:
                level = logging.getLevelName(entry.level)
                out(f"{entry.timestamp.astimezone(UTC):%H:%M:%S} | {level:<7} | {entry.message}")
            seen += len(logs)

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            drain(client)
            state = run.state
            if state is not None and state.name != last_state:
                last_state = state.name
                why = f" ({state.message})" if state.message else ""
                out(f"--- flow run {run.name}: {state.name}{why}")
            if state is not None and state.is_final():
                # The run's last lines reach the server in the log handler's next batch.
                time.sleep(poll_s + 2.0)
                drain(client)
                return state.name
            time.sleep(poll_s)
