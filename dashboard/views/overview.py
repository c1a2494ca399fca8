"""Overview: the latest nightly runs, the current champion and whether serving is up."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import mlflow_reads, queries, ui
from dashboard.serving_client import serving_status

ctx = ui.page("Nightshift", "What the nightly programme did, what serves, and how it is used.")
s = ctx.settings
mlflow_down = mlflow_reads.mlflow_problem(s.mlflow_uri)

# --- latest runs -----------------------------------------------------------------------------------
st.subheader("Latest pipeline runs")
latest = queries.pipeline_runs(s.catalog_url, limit=10)
if not latest:
    st.info("No pipeline has run yet: `prefect deployment run pretrain/nightly` or `nightshift pretrain`.")
else:
    stages = queries.stage_runs(s.catalog_url, tuple(p.id for p in latest))
    by_parent: dict[str, list[str]] = {}
    for r in stages:
        by_parent.setdefault(r.parent_id or "", []).append(f"{ui.STATUS_MARK.get(r.status, '?')} {r.stage}")
    experiments = {}
    if not mlflow_down:
        ids = tuple(p.mlflow_run_id for p in latest if p.mlflow_run_id)
        experiments = {
            k: v.experiment_id for k, v in mlflow_reads.run_metrics(s.mlflow_uri, s.experiment, ids).items()
        }
    table = pd.DataFrame(
        {
            "started (UTC)": [ui.when(p.started_at) for p in latest],
            "pipeline": [p.stage for p in latest],
            "status": [ui.mark(p.status) for p in latest],
            "duration": [ui.duration(p.duration_s) for p in latest],
            "stages": [" → ".join(by_parent.get(p.id, [])) for p in latest],
            "MLflow": [
                s.mlflow_run_link(experiments.get(p.mlflow_run_id or ""), p.mlflow_run_id) for p in latest
            ],
            "Prefect": [s.prefect_flow_run_link(p.prefect_flow_run_id) for p in latest],
        }
    )
    ui.table(table, {"MLflow": "run", "Prefect": "flow run"})
    failed = [p for p in latest if p.status == "failed"]
    if failed:
        # The stage that broke says more than the pipeline that wraps it.
        broke = next((r for r in stages if r.parent_id == failed[0].id and r.status == "failed"), failed[0])
        where = f"{broke.stage} of the run of {ui.when(failed[0].started_at)}"
        st.error(f"{len(failed)} of the last {len(latest)} runs failed; the newest failure, in {where}:")
        st.code((broke.error or failed[0].error or "no error recorded")[-1500:], language="text")

left, right = st.columns(2)

# --- champion --------------------------------------------------------------------------------------
with left:
    st.subheader("Champion")
    if mlflow_down:
        st.warning(mlflow_down)
    else:
        versions = ui.versions(s)
        champion = next((v for v in versions if "champion" in v.aliases), None)
        if champion is None:
            st.info(f"No version of `{s.registered_model}` carries the alias `champion` yet.")
        else:
            link = s.mlflow_version_link(champion.version)
            st.markdown(
                f"**{s.registered_model} v{champion.version}** "
                + " ".join(f"`@{a}`" for a in champion.aliases)
                + f" · registered {ui.when(champion.created_at)} UTC"
                + (f" · [open in MLflow]({link})" if link else "")
            )
            metrics = ui.model_metrics(s, champion)
            key = [(k, v) for k, v in mlflow_reads.ordered_metrics(metrics) if k in mlflow_reads.KEY_METRICS]
            if key:
                cols = st.columns(4)
                for i, (k, v) in enumerate(key[:8]):
                    cols[i % 4].metric(k, f"{v:,.4g}")
            else:
                st.caption("No metrics recorded for the champion's runs.")
            if champion.artifact_sha256:
                st.caption(f"model artifact `{champion.artifact_sha256[:16]}`")

# --- serving ---------------------------------------------------------------------------------------
with right:
    st.subheader("Serving")
    status = serving_status(s.serve_url, s.api_key)
    if status.ok:
        st.success(
            f"Up: {status.detail}: " + ", ".join(f"`{m}`" for m in status.models), icon=":material/check:"
        )
    else:
        st.warning(f"Down: {status.detail}", icon=":material/cloud_off:")
    active = [d for d in queries.deployments(s.catalog_url) if d.status == "active"]
    c1, c2, c3 = st.columns(3)
    c1.metric("active deployments", len(active))
    c2.metric("completions, 24 h", queries.completions_last_hours(s.catalog_url, 24))
    totals = queries.feedback_totals(s.catalog_url)
    c3.metric("feedback labels", sum(v for k, v in totals.items() if k != "unsafe"))
    for d in active[:5]:
        st.caption(
            f"deployment #{d.id}: {d.registry_name or 'model'} v{d.registry_version or '?'}"
            + (f" @{d.alias}" if d.alias else "")
            + f" at {d.endpoint or '?'} since {ui.when(d.created_at)} by {d.created_by or '?'}"
        )
