"""Lineage: sources → corpus → tokenizer and tokens → pretrain → RLHF → evaluation → registry →
deployments → completions and feedback; and any served answer traced back to its data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import streamlit as st

from dashboard import lineage_details, mlflow_reads, queries, ui
from dashboard.lineage_graph import SERVING_STAGES, build_graph, trace_graph

DEFAULT_WINDOW_RUNS = 60  # the date filter starts wide enough to cover this many recent runs
DEFAULT_EXPANDED = 3

ctx = ui.page("Lineage", "Which data and which runs made each model, and where its answers went.")
s = ctx.settings
mlflow_down = mlflow_reads.mlflow_problem(s.mlflow_uri)
versions = ui.versions(s)
if mlflow_down:
    st.caption(f"Registry versions are hidden: {mlflow_down}")

tab_graph, tab_trace = st.tabs(["Nightly lineage", "Trace a completion"])

with tab_graph:
    everything = queries.pipeline_runs(s.catalog_url, limit=1000)
    if not everything:
        st.info("No pipeline runs in the catalog yet.")
    else:
        today = datetime.now(UTC).date()
        window = everything[:DEFAULT_WINDOW_RUNS]
        f1, f2, f3, f4 = st.columns([2, 2, 3, 1])
        newest = max(today, window[0].started_at.date())
        picked = f1.date_input(
            "Dates (UTC)",
            value=(window[-1].started_at.date(), newest),
            # Streamlit's default bounds are ten years around the value; the runs set them instead.
            min_value=everything[-1].started_at.date() - timedelta(days=366),
            max_value=newest,
            key="lineage_dates",
        )
        since, until = (picked[0], picked[-1]) if isinstance(picked, tuple) and picked else (None, None)
        names = queries.pipeline_names(s.catalog_url)
        chosen_names = f2.multiselect("Pipelines", names, default=names, key="lineage_pipelines")
        stage_options = queries.stage_names(s.catalog_url) + list(SERVING_STAGES)
        chosen_stages = f3.multiselect("Stages", stage_options, default=stage_options, key="lineage_stages")
        expanded_n = f4.number_input("Expanded runs", 1, 50, DEFAULT_EXPANDED, key="lineage_expanded")
        runs = queries.pipeline_runs(s.catalog_url, since, until, tuple(chosen_names))
        # A run whose model carries an alias stays expanded however old it is: it is what serves.
        pinned_shas = tuple(v.artifact_sha256 for v in versions if v.aliases and v.artifact_sha256)
        pinned: set[str] = set()
        for model in queries.artifacts_by_sha(s.catalog_url, "model", pinned_shas).values():
            pinned |= {r.parent_id for r in queries.artifact_runs(s.catalog_url, model.id)[0] if r.parent_id}
        expanded = [r.id for r in runs[: int(expanded_n)]] + [
            r.id for r in runs[int(expanded_n) :] if r.id in pinned
        ]
        older = [r.id for r in runs if r.id not in expanded]
        show_older = st.toggle(
            f"Show the {len(older)} older runs, collapsed", value=True, key="lineage_older"
        )
        sl = queries.lineage_slice(s.catalog_url, tuple(expanded))
        graph = build_graph(
            sl,
            versions,
            stages=set(chosen_stages),
            older=queries.collapsed(s.catalog_url, tuple(older)) if show_older and older else None,
        )
        n_pinned = len(expanded) - min(len(runs), int(expanded_n))
        summary = [
            f"{len(runs)} runs from {since} to {until}",
            f"the newest {min(len(runs), int(expanded_n))} expanded",
        ]
        if n_pinned:
            summary.append(f"{n_pinned} pinned (their model carries an alias)")
        if older and show_older:
            summary.append(f"{len(older)} collapsed")
        st.caption(", ".join(summary) + ". Pick a node under the graph for its details.")
        chart = st.container()
        ids = list(graph.nodes)
        # Start on the champion's model when it is in view: the question is usually "what serves?"
        champion = [
            src for (src, dst) in graph.edges if "@champion" in graph.nodes[dst].label and src[:2] == "a:"
        ]
        models = champion + [
            n for n in ids if n.startswith("a:") and graph.nodes[n].label.startswith("model")
        ]
        pick, fold = st.columns([5, 1], vertical_alignment="bottom")
        selected = pick.selectbox(
            "Node",
            ids,
            index=ids.index(models[0]) if models else (0 if ids else None),
            format_func=lambda n: (
                graph.nodes[n].label.replace("\n", " · ")
                + (
                    f"  [{graph.clusters[c][0]}]"
                    if (c := graph.nodes[n].cluster) and c in graph.clusters
                    else ""
                )
            ),
            key="lineage_node",
        )
        folded = fold.toggle(
            "Fold artifacts",
            value=True,
            key="lineage_fold",
            help="Show single-use artifacts inside the run that wrote them",
        )
        with chart:
            if graph.nodes:
                drawn = graph.compacted(keep=selected) if folded else graph
                st.graphviz_chart(drawn.to_dot(selected), width="stretch")
            else:
                st.info("Nothing matches these filters.")
        st.caption(
            "Rounded boxes are runs (✓ completed, ✗ failed, … running) inside the pipeline run they belong "
            "to; notes are artifacts (`→` lines: artifacts folded into the run that wrote them); the "
            "cylinder is the source data; gold marks the champion. Edges point from input to output."
        )
        if selected:
            with st.container(border=True):
                lineage_details.show_node(s, graph.nodes[selected], sl.artifacts)

with tab_trace:
    st.markdown("Paste the id of a served completion (from the API response, the Playground or Feedback).")
    completion_id = st.text_input(
        "Completion id", value=st.query_params.get("completion", ""), key="trace_id", placeholder="chatcmpl-…"
    ).strip()
    if completion_id:
        t = queries.trace(s.catalog_url, completion_id)
        if t is None:
            st.error(f"No completion `{completion_id}` in the catalog at {s.catalog_url}.")
        else:
            c = t.completion
            st.markdown(
                f"**{c.id}** · {ui.when(c.created_at)} UTC · model artifact `{t.model.short}`"
                + (f" · deployment #{t.deployment.id}" if t.deployment else "")
                + f" · {c.prompt_tokens} + {c.completion_tokens} tokens"
            )
            q, a = st.columns(2)
            q.text_area("Prompt", c.prompt, height=120, disabled=True, key="trace_prompt")
            a.text_area("Response", c.response, height=120, disabled=True, key="trace_response")
            st.graphviz_chart(trace_graph(t).to_dot(f"cmp:{c.id}"), width="stretch")
            st.markdown(f"**Source data** ({len(t.sources)} items)")
            st.dataframe(
                pd.DataFrame(
                    {
                        "source": [str(x.meta.get("source", "")) for x in t.sources],
                        "item": [x.uri for x in t.sources],
                        "sha256": [x.short for x in t.sources],
                    }
                ),
                hide_index=True,
            )
            st.markdown("**Runs**")
            lineage_details.runs_table(s, t.runs)
            if t.feedback:
                st.markdown("**Feedback on this completion**")
                st.dataframe(
                    pd.DataFrame([f.__dict__ for f in t.feedback]).drop(columns=["id"]), hide_index=True
                )
