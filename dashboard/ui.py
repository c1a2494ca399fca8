"""What every page starts with and the few display helpers they share.

``page()`` reads the settings, shows a clear message and stops the page when the catalog is not
usable, and returns the settings and the acting identity; the rest formats values the same way
on every page.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from catalog.verdict import RuleResult, fmt, interval_text
from dashboard import actions, mlflow_reads, queries
from dashboard.actions import Identity
from dashboard.lineage_graph import STATUS_MARK, duration, when
from dashboard.settings import Settings, load_settings

_IMAGE_LINK = re.compile(r"!\[[^\]]*\]\([^)]*\)\n?")

__all__ = ["Page", "duration", "link", "mark", "model_metrics", "page", "table", "versions", "when"]


@dataclass(frozen=True)
class Page:
    """The context of one page run."""

    settings: Settings
    who: Identity

    @property
    def writable(self) -> bool:
        return not self.settings.read_only


def page(title: str, caption: str | None = None, *, needs_catalog: bool = True) -> Page:
    """Title the page, load the settings, and stop with a message if the catalog cannot be read."""
    st.title(title)
    if caption:
        st.caption(caption)
    try:
        settings = load_settings()
    except Exception as exc:  # noqa: BLE001 - a bad config is shown, with every problem it lists
        st.error(f"The dashboard's configuration is invalid:\n\n{exc}")
        st.stop()
    who = actions.identity(settings, dict(st.context.headers or {}))
    _sidebar(settings, who)
    if needs_catalog:
        problem = queries.catalog_problem(settings.catalog_url)
        if problem:
            st.warning(problem, icon=":material/database:")
            st.stop()
    return Page(settings=settings, who=who)


def _sidebar(settings: Settings, who: Identity) -> None:
    # Drawn by each page rather than by app.py: elements app.py puts around st.navigation do not
    # survive a page switch in every Streamlit runner.
    with st.sidebar:
        st.caption(f"Acting as **{who.name}** ({who.source})")
        if settings.read_only:
            st.caption(":material/lock: read-only: labels, promotion and rollback are off")
        links = [
            f"[MLflow]({settings.mlflow_ui})" if settings.mlflow_ui else "",
            f"[Prefect]({settings.prefect_ui})",
        ]
        st.caption(" · ".join(x for x in links if x))


def versions(settings: Settings) -> list[mlflow_reads.VersionInfo]:
    """The registered model's versions, newest first, each linked to its catalog model when possible;
    empty when MLflow is down (pages say so separately)."""
    if mlflow_reads.mlflow_problem(settings.mlflow_uri):
        return []
    found = mlflow_reads.registry_versions(settings.mlflow_uri, settings.registered_model)
    return mlflow_reads.with_catalog_models(found, settings.catalog_url)


def model_metrics(settings: Settings, version: mlflow_reads.VersionInfo) -> dict[str, float]:
    """Metrics of a registry version: its own run's, then those of the run that wrote its model and
    of the evaluations that read it (the version's run, often the pipeline's, may have logged none)."""
    run_ids = [version.run_id] if version.run_id else []
    sha = version.artifact_sha256 or ""
    for artifact in queries.artifacts_by_sha(settings.catalog_url, "model", (sha,)).values():
        wrote, read = queries.artifact_runs(settings.catalog_url, artifact.id)
        run_ids += [
            r.mlflow_run_id for r in [*wrote, *(x for x in read if "eval" in x.stage)] if r.mlflow_run_id
        ]
    ordered = tuple(dict.fromkeys(run_ids))
    found = mlflow_reads.run_metrics(settings.mlflow_uri, settings.experiment, ordered)
    metrics: dict[str, float] = {}
    for run_id in ordered:
        for k, v in found[run_id].metrics.items() if run_id in found else ():
            metrics.setdefault(k, v)
    return metrics


def table(frame: pd.DataFrame, links: dict[str, str] | None = None, **kwargs: Any) -> None:
    """A dataframe without index; ``links`` maps URL columns to their link text. A link column with
    no URL at all (MLflow on a local store has no UI) is dropped rather than shown full of "None"."""
    config = {}
    for column, text in (links or {}).items():
        if column in frame and frame[column].notna().any():
            config[column] = st.column_config.LinkColumn(display_text=text)
        elif column in frame:
            frame = frame.drop(columns=[column])
    st.dataframe(frame, hide_index=True, column_config=config, **kwargs)


def mark(status: str) -> str:
    """``✓ completed`` style status text."""
    return f"{STATUS_MARK.get(status, '?')} {status}"


def link(label: str, url: str | None) -> str:
    """A Markdown link, or plain text when there is no URL."""
    return f"[{label}]({url})" if url else label


def read_only_note(ctx: Page, what: str) -> None:
    """Say why an action is missing."""
    st.info(
        f"Read-only dashboard: {what} is switched off (NIGHTSHIFT_DASHBOARD_READ_ONLY).",
        icon=":material/lock:",
    )


def show_report(path: Path) -> None:
    """An ``eval_report`` directory: every rule with its value, interval and bound, the plots, REPORT.md.

    The plots are shown as images from the report's own directory (REPORT.md links them relatively,
    which Streamlit cannot resolve), and the Markdown without its image links.
    """
    verdict = path / "verdict.json"
    if verdict.is_file():
        rules = [RuleResult(**r) for r in json.loads(verdict.read_text()).get("rules", [])]
        table(
            pd.DataFrame(
                {
                    "rule": [r.rule for r in rules],
                    "candidate": [fmt(r.metric, r.value) for r in rules],
                    "reference": [fmt(r.metric, r.champion) for r in rules],
                    "95% interval (held to the bound)": [interval_text(r) for r in rules],
                    "bound": [
                        "—"
                        if r.bound is None
                        else (f"{r.bound:+.3g}" if r.compared == "difference" else fmt(r.metric, r.bound))
                        for r in rules
                    ],
                    "result": [r.status + (f": {r.note}" if r.note else "") for r in rules],
                }
            )
        )
    for png in sorted((path / "plots").glob("*.png")):
        st.image(str(png), caption=png.stem.replace("_", " "))
    md = path / "REPORT.md"
    if md.is_file():
        with st.expander("REPORT.md"):
            st.markdown(_IMAGE_LINK.sub("", md.read_text(errors="replace"))[:20000])
