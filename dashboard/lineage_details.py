"""The details panel of the Lineage page: what one selected node is, its metrics and its links."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import mlflow_reads, queries, ui
from dashboard.graph import Node
from dashboard.records import ArtifactInfo, RunInfo
from dashboard.settings import Settings


def _mlflow_links(s: Settings, runs: list[RunInfo]) -> dict[str, str | None]:
    ids = tuple(r.mlflow_run_id for r in runs if r.mlflow_run_id)
    if not ids or mlflow_reads.mlflow_problem(s.mlflow_uri):
        return {}
    found = mlflow_reads.run_metrics(s.mlflow_uri, s.experiment, ids)
    return {
        r.id: s.mlflow_run_link(found[m].experiment_id, m) for r in runs if (m := r.mlflow_run_id) in found
    }


def runs_table(s: Settings, runs: list[RunInfo]) -> None:
    """A table of runs with their status, duration and MLflow links."""
    links = _mlflow_links(s, runs)
    ui.table(
        pd.DataFrame(
            {
                "stage": [r.stage for r in runs],
                "status": [ui.mark(r.status) for r in runs],
                "started (UTC)": [ui.when(r.started_at) for r in runs],
                "duration": [ui.duration(r.duration_s) for r in runs],
                "MLflow": [links.get(r.id) for r in runs],
            }
        ),
        {"MLflow": "run"},
    )


def show_run(s: Settings, run_id: str) -> None:
    run = queries.run_info(s.catalog_url, run_id)
    if run is None:
        st.warning(f"run {run_id} is no longer in the catalog")
        return
    parent = queries.run_info(s.catalog_url, run.parent_id) if run.parent_id else None
    st.markdown(f"### {ui.mark(run.status)} · {run.stage}")
    st.caption(
        f"catalog run `{run.id}` · started {ui.when(run.started_at)} UTC · {ui.duration(run.duration_s)}"
    )
    problem = mlflow_reads.mlflow_problem(s.mlflow_uri)
    links = []
    metrics: dict[str, float] = {}
    if run.mlflow_run_id and not problem:
        found = mlflow_reads.run_metrics(s.mlflow_uri, s.experiment, (run.mlflow_run_id,))
        if run.mlflow_run_id in found:
            m = found[run.mlflow_run_id]
            metrics = m.metrics
            links.append(ui.link("MLflow run", s.mlflow_run_link(m.experiment_id, m.run_id)))
    flow_run = run.prefect_flow_run_id or (parent.prefect_flow_run_id if parent else None)
    if flow_run:
        links.append(ui.link("Prefect flow run", s.prefect_flow_run_link(flow_run)))
    if links:
        st.markdown(" · ".join(links))
    if problem:
        st.caption(problem)
    if run.error:
        st.error("This run failed:")
        st.code(run.error[-3000:], language="text")
    if metrics:
        st.dataframe(
            pd.DataFrame(mlflow_reads.ordered_metrics(metrics), columns=["metric", "value"]),
            hide_index=True,
            height=min(400, 36 + 35 * len(metrics)),
        )
    if run.config:
        with st.expander("config"):
            st.json(run.config, expanded=False)


def show_artifact(s: Settings, artifact_id: int, artifact: ArtifactInfo | None) -> None:
    wrote, read = queries.artifact_runs(s.catalog_url, artifact_id)
    shaped = queries.downstream(s.catalog_url, artifact_id)
    a = artifact or (shaped.root if shaped else None)
    if a is None:
        st.warning(f"artifact {artifact_id} is no longer in the catalog")
        return
    st.markdown(f"### {a.kind} `{a.short}`")
    st.caption(f"sha256 `{a.sha256}` · {a.size_bytes:,} bytes · created {ui.when(a.created_at)} UTC")
    st.code(a.uri, language="text")
    if a.deleted_note:
        st.info(f"Files {a.deleted_note}: the lineage stays; the retention rules are the gc.* config keys.")
    if wrote:
        st.markdown("**Written by**")
        runs_table(s, wrote)
    if read:
        st.markdown("**Read by**")
        runs_table(s, read)
    if shaped is not None and (shaped.runs or shaped.deployments or shaped.usage.completions):
        u = shaped.usage
        st.markdown(
            f"**What it shaped**: {len(shaped.runs)} runs, {len(shaped.artifacts)} artifacts, "
            f"{len(shaped.deployments)} deployments, {u.completions} completions, {u.feedback} feedback"
            + (" (walk truncated)" if shaped.truncated else "")
        )
        kinds: dict[str, int] = {}
        for x in shaped.artifacts:
            kinds[x.kind] = kinds.get(x.kind, 0) + 1
        if kinds:
            st.caption(" · ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
    if a.kind == "preferences":
        used = queries.snapshot_labels(s.catalog_url, a.id)
        if used:
            detail = ", ".join(f"{n} via {src}" for src, n in sorted(used.items()))
            st.markdown(f"**Built from {sum(used.values())} human labels** ({detail})")
    if a.meta:
        with st.expander("metadata"):
            st.json(a.meta, expanded=False)


def show_node(s: Settings, node: Node, artifacts: dict[int, ArtifactInfo]) -> None:
    """Details of the selected node, by what it stands for."""
    if node.kind == "run":
        show_run(s, node.ref)
    elif node.kind == "artifact":
        show_artifact(s, node.ref, artifacts.get(node.ref))
    elif node.kind == "sources":
        st.markdown(f"### {len(node.ref)} source files")
        rows = [artifacts[i] for i in node.ref if i in artifacts]
        st.dataframe(
            pd.DataFrame(
                {
                    "source": [str(a.meta.get("source", "")) for a in rows],
                    "item": [a.uri for a in rows],
                    "sha256": [a.short for a in rows],
                    "bytes": [a.meta.get("bytes") for a in rows],
                }
            ),
            hide_index=True,
        )
    elif node.kind == "version":
        _show_version(s, node.ref)
    elif node.kind == "deployment":
        found = [d for d in queries.deployments(s.catalog_url, limit=1000) if d.id == node.ref]
        if found:
            d = found[0]
            st.markdown(f"### deployment #{d.id} · {d.status}")
            st.json({k: str(v) for k, v in d.__dict__.items()}, expanded=True)
    elif node.kind in ("completions", "feedback"):
        _show_usage(s, node.ref)
    elif node.kind in ("older-run", "older-artifact"):
        st.markdown(f"### {node.label.splitlines()[0]}")
        st.caption(
            "Older runs are collapsed; raise 'expanded runs' or narrow the dates to see them one by one."
        )


def _show_version(s: Settings, version: str) -> None:
    versions = {v.version: v for v in ui.versions(s)}
    v = versions.get(version)
    if v is None:
        st.warning(f"version {version} not found in the registry")
        return
    st.markdown(f"### {s.registered_model} v{v.version} " + " ".join(f"`@{a}`" for a in v.aliases))
    st.markdown(ui.link("open in MLflow", s.mlflow_version_link(v.version)))
    st.caption(f"registered {ui.when(v.created_at)} UTC · status {v.status} · source `{v.source}`")
    if v.tags:
        st.json(v.tags, expanded=False)


def _show_usage(s: Settings, model_id: int) -> None:
    use = queries.usage(s.catalog_url, (model_id,)).get(model_id)
    st.markdown(f"### Serving of model artifact {model_id}")
    if use:
        c1, c2, c3, c4 = st.columns(4)
        c1.metric("completions", use.completions)
        c2.metric("preferences", use.preferences)
        c3.metric("ratings", use.ratings)
        c4.metric("unsafe", use.unsafe)
    recent = queries.recent_completions(s.catalog_url, model_id, limit=10)
    if recent:
        st.markdown("**Latest completions** (paste an id into *Trace a completion*)")
        st.dataframe(
            pd.DataFrame(
                {
                    "id": [c.id for c in recent],
                    "when (UTC)": [ui.when(c.created_at) for c in recent],
                    "prompt": [c.prompt[:80] for c in recent],
                    "response": [c.response[:80] for c in recent],
                }
            ),
            hide_index=True,
        )
