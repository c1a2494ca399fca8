"""Runs: a stage's metrics and loss curves compared across nights, read from MLflow."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import mlflow_reads, queries, ui
from dashboard.records import RunInfo

DEFAULT_NIGHTS = 5
TREND_RUNS = 100

ctx = ui.page("Runs", "One stage's metrics and curves, night against night.")
s = ctx.settings
problem = mlflow_reads.mlflow_problem(s.mlflow_uri)
if problem:
    st.warning(problem)
    st.stop()

names = queries.pipeline_names(s.catalog_url)
if not names:
    st.info("No pipeline runs in the catalog yet.")
    st.stop()
c1, c2 = st.columns(2)
name = c1.selectbox(
    "Pipeline", names, index=names.index("pretrain") if "pretrain" in names else 0, key="runs_pipe"
)
pipelines = queries.pipeline_runs(s.catalog_url, names=(name,), limit=TREND_RUNS)
stages = queries.stage_runs(s.catalog_url, tuple(p.id for p in pipelines))
stage_names = sorted({r.stage for r in stages})
if not stage_names:
    st.info(f"The {name} runs have no stages recorded.")
    st.stop()
default_stage = next((x for x in ("pretrain", "dpo", "ppo", "sft") if x in stage_names), stage_names[0])
stage = c2.selectbox("Stage", stage_names, index=stage_names.index(default_stage), key="runs_stage")


def _pick(attempts: list[RunInfo]) -> RunInfo:
    # Retries leave several attempts of one stage in a night: the completed one is the night's result.
    done = [r for r in attempts if r.status == "completed"]
    return (done or attempts)[-1]


attempts: dict[str, list[RunInfo]] = {}
for r in stages:
    if r.stage == stage and r.parent_id:
        attempts.setdefault(r.parent_id, []).append(r)
nights = [(p, _pick(attempts[p.id])) for p in pipelines if p.id in attempts]
metrics = mlflow_reads.run_metrics(
    s.mlflow_uri, s.experiment, tuple(r.mlflow_run_id for _, r in nights if r.mlflow_run_id)
)


def _label(p: RunInfo) -> str:
    # Seconds and an id prefix: two runs in one minute must still be told apart.
    return f"{p.started_at:%Y-%m-%d %H:%M:%S} {ui.STATUS_MARK.get(p.status, '?')} {p.id[:6]}"


labels = {p.id: _label(p) for p, _ in nights}
chosen = st.multiselect(
    "Nights to compare",
    [p.id for p, _ in nights],
    default=[p.id for p, _ in nights[:DEFAULT_NIGHTS]],
    format_func=lambda i: labels[i],
    key="runs_nights",
)
selected = [(p, r) for p, r in nights if p.id in chosen]

# --- final metrics, one row per night ------------------------------------------------------------------
st.subheader(f"{stage}: final metrics")
rows = []
for p, r in selected:
    m = metrics.get(r.mlflow_run_id or "")
    row = {
        "night (UTC)": ui.when(p.started_at),
        "status": ui.mark(r.status),
        "duration": ui.duration(r.duration_s),
        "MLflow": s.mlflow_run_link(m.experiment_id, m.run_id) if m else None,
    }
    row.update({k: v for k, v in mlflow_reads.ordered_metrics(m.metrics if m else {})})
    rows.append(row)
if rows:
    ui.table(pd.DataFrame(rows), {"MLflow": "run"})
else:
    st.info("Pick at least one night.")

keys = sorted(
    {
        k
        for _, r in nights
        for k in metrics.get(r.mlflow_run_id or "", mlflow_reads.RunMetrics("", "", "", {})).metrics
    }
)
if keys:
    # --- trend of one final metric over all nights -------------------------------------------------------
    st.subheader("Trend across nights")
    trend_key = st.selectbox(
        "Metric", keys, index=keys.index("val_loss") if "val_loss" in keys else 0, key="runs_trend_metric"
    )
    trend = pd.DataFrame(
        [
            {"night": p.started_at, "value": metrics[r.mlflow_run_id].metrics[trend_key]}
            for p, r in nights
            if r.mlflow_run_id in metrics and trend_key in metrics[r.mlflow_run_id].metrics
        ]
    )
    if not trend.empty:
        st.line_chart(trend, x="night", y="value", height=260)

    # --- curves: step histories overlaid ---------------------------------------------------------------
    st.subheader("Curves")
    curve_key = st.selectbox(
        "Curve", keys, index=keys.index("train_loss") if "train_loss" in keys else 0, key="runs_curve_metric"
    )
    frames = []
    for p, r in selected:
        if r.mlflow_run_id in metrics:
            history = mlflow_reads.metric_history(s.mlflow_uri, r.mlflow_run_id, curve_key)
            frames.append(
                pd.DataFrame(
                    {
                        "step": [h[0] for h in history],
                        curve_key: [h[1] for h in history],
                        "night": labels[p.id],
                    }
                )
            )
    curves = pd.concat(frames) if frames else pd.DataFrame()
    if curves.empty or curves["step"].nunique() < 2:
        st.caption(f"`{curve_key}` has a single value per run; see the table and the trend above.")
    else:
        st.line_chart(curves, x="step", y=curve_key, color="night", height=320)
