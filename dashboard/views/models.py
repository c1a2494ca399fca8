"""Models and deployments: registry versions and aliases, gate reports, promote and rollback."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from dashboard import actions, mlflow_reads, queries, ui

ctx = ui.page("Models and deployments", "What the registry holds, what the gates said, what serves.")
s = ctx.settings
problem = mlflow_reads.mlflow_problem(s.mlflow_uri)
versions = ui.versions(s)

st.subheader(f"Registry: {s.registered_model}")
if problem:
    st.warning(problem)
elif not versions:
    st.info(
        f"No versions of `{s.registered_model}` are registered yet; "
        "the evaluate stage registers each candidate."
    )
else:
    table = pd.DataFrame(
        {
            "version": [f"v{v.version}" for v in versions],
            "aliases": [" ".join(f"@{a}" for a in v.aliases) for v in versions],
            "registered (UTC)": [ui.when(v.created_at) for v in versions],
            "model artifact": [(v.artifact_sha256 or "")[:12] for v in versions],
            "gate": [v.tags.get("nightshift.gate", "") for v in versions],
            "gate summary": [v.tags.get("nightshift.gate_summary", "")[:80] for v in versions],
            "MLflow": [s.mlflow_version_link(v.version) for v in versions],
        }
    )
    ui.table(table, {"MLflow": "open"})

    # --- gate report of one version ----------------------------------------------------------------------
    st.subheader("Gate report")
    by_version = {v.version: v for v in versions}
    picked = st.selectbox(
        "Version",
        list(by_version),
        format_func=lambda x: f"v{x} {' '.join('@' + a for a in by_version[x].aliases)}",
        key="models_version",
    )
    v = by_version[picked]
    gate, summary = v.tags.get("nightshift.gate"), v.tags.get("nightshift.gate_summary", "")
    if gate == "passed":
        st.success(f"v{v.version} passed the gates. {summary}", icon=":material/check_circle:")
    elif gate == "failed":
        st.error(f"v{v.version} failed the gates. {summary}", icon=":material/block:")
    else:
        st.info(f"No gate verdict is attached to v{v.version} (the evaluate stage attaches one).")
    try:
        eval_metrics = json.loads(v.tags.get("nightshift.eval_metrics", "{}"))
    except ValueError:
        eval_metrics = {}
    trained = ui.model_metrics(s, v)
    rows = [("evaluation", k, x) for k, x in sorted(eval_metrics.items())]
    rows += [
        ("training", k, x) for k, x in mlflow_reads.ordered_metrics(trained) if k in mlflow_reads.KEY_METRICS
    ]
    if rows:
        ui.table(pd.DataFrame(rows, columns=["from", "metric", "value"]))
        st.caption(
            "evaluation: the gate's metrics for this version; runs: what its training and evaluation logged"
        )
    if who := v.tags.get("nightshift.promoted_by"):
        why = v.tags.get("nightshift.promotion_reason") or "no reason given"
        st.caption(f"Promoted by {who} at {v.tags.get('nightshift.promoted_at', '?')}: {why}")
    verdict = mlflow_reads.attachment(s.mlflow_uri, v.model_id, "GATE_VERDICT.md")
    if verdict:
        with st.expander("GATE_VERDICT.md", expanded=True):
            st.markdown(verdict)
    if v.description:
        with st.expander("Model card"):
            st.markdown(v.description)
    model = (
        queries.artifacts_by_sha(s.catalog_url, "model", (v.artifact_sha256,)) if v.artifact_sha256 else {}
    )
    for run, report in (
        queries.reports_for_model(s.catalog_url, next(iter(model.values())).id) if model else []
    ):
        st.markdown(f"**{report.kind}** `{report.short}` from {run.stage} at {ui.when(run.started_at)} UTC")
        if report.deleted_note:
            st.caption(f"Files {report.deleted_note}.")
        path = report.local_path
        if path and path.is_dir():
            ui.show_report(path)
    with st.expander("All tags of this version"):
        st.json(v.tags, expanded=True)

    history = mlflow_reads.champion_history(s.mlflow_uri, s.registered_model)
    if history:
        st.markdown("**Champion history** (newest first)")
        ui.table(pd.DataFrame(history))

    # --- promote and rollback ----------------------------------------------------------------------------
    st.subheader("Promote or roll back")
    if not ctx.writable:
        ui.read_only_note(ctx, "promotion and rollback")
    else:
        champion = next((x.version for x in versions if "champion" in x.aliases), None)
        p1, p2 = st.columns(2)
        with p1:
            candidates = [x.version for x in versions if x.version != champion]
            target = st.selectbox(
                "Version to promote", candidates, format_func=lambda x: f"v{x}", key="promote_v"
            )
            reason = st.text_input("Reason (recorded)", key="promote_reason")
            if st.button("Promote…", key="promote", disabled=not candidates):
                st.session_state["pending"] = ("promote", target, reason)
        with p2:
            st.caption(f"Current champion: v{champion}" if champion else "No champion yet.")
            rb_reason = st.text_input("Reason (recorded)", key="rollback_reason")
            if st.button("Roll back champion…", key="rollback", disabled=champion is None):
                st.session_state["pending"] = ("rollback", None, rb_reason)
        pending = st.session_state.get("pending")
        if pending:
            what, version, why = pending
            text = (
                f"Move @champion from v{champion} to v{version}? Serving follows the champion."
                if what == "promote"
                else f"Move @champion back from v{champion} to the previous champion? Serving follows it."
            )
            with st.container(border=True):
                st.warning(f"{text} Acting as {ctx.who.name}; reason: {why or '(none given)'}")
                ok, cancel = st.columns(2)
                if ok.button("Confirm", key="confirm", type="primary"):
                    st.session_state.pop("pending")
                    try:
                        if what == "promote":
                            message = actions.promote(s, ctx.who, version, why)
                        else:
                            message = actions.rollback(s, ctx.who, why)
                        st.session_state["action_result"] = ("success", message)
                    except actions.ActionError as exc:
                        st.session_state["action_result"] = ("error", str(exc))
                    st.rerun()
                if cancel.button("Cancel", key="cancel"):
                    st.session_state.pop("pending")
                    st.rerun()
        result = st.session_state.pop("action_result", None)
        if result:
            (st.success if result[0] == "success" else st.error)(result[1])

# --- deployments ------------------------------------------------------------------------------------------
st.subheader("Deployments")
deployments = queries.deployments(s.catalog_url)
if not deployments:
    st.info("Nothing has been deployed yet.")
else:
    st.dataframe(
        pd.DataFrame(
            {
                "id": [d.id for d in deployments],
                "status": [d.status for d in deployments],
                "model": [f"{d.registry_name or ''} v{d.registry_version or '?'}" for d in deployments],
                "alias": [d.alias or "" for d in deployments],
                "endpoint": [d.endpoint or "" for d in deployments],
                "by": [d.created_by or "" for d in deployments],
                "since (UTC)": [ui.when(d.created_at) for d in deployments],
                "retired (UTC)": [ui.when(d.retired_at) if d.retired_at else "" for d in deployments],
            }
        ),
        hide_index=True,
    )
