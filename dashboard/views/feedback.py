"""Feedback: a labelling view. Two answers to one prompt; pick the better one or mark one unsafe.

Labels go to the catalog ``feedback`` table (source ``dashboard``, the labeller's name), where the
next RLHF run's preference snapshot picks them up.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import actions, mlflow_reads, queries, ui
from dashboard.records import CompletionInfo, LabelPair
from dashboard.serving_client import (
    ServingError,
    complete_pair,
    context_length,
    default_max_tokens,
    serving_status,
)

PAIR_LIMIT = 50  # queries.label_pairs returns at most this many
FROM_CATALOG = "Served completions"
FRESH = "Generate fresh from the served model"

ctx = ui.page("Feedback", "Which answer is better? Your labels teach the next night's RLHF.")
s = ctx.settings
who = ctx.who
st.caption(f"Labelling as **{who.name}** ({who.source}).")

flash = st.session_state.pop("feedback_flash", None)
if flash:
    (st.success if flash[0] == "success" else st.error)(flash[1])

mode = st.radio("Pairs", [FROM_CATALOG, FRESH], horizontal=True, key="fb_mode")
pair: LabelPair | None = None
if mode == FROM_CATALOG:
    skipped: set[frozenset[str]] = st.session_state.setdefault("fb_skipped", set())
    pairs = [
        p
        for p in queries.label_pairs(s.catalog_url, who.name, limit=PAIR_LIMIT)
        if frozenset((p.a.id, p.b.id)) not in skipped
    ]
    more = "+" if len(pairs) >= PAIR_LIMIT - len(skipped) else ""
    st.caption(f"{len(pairs)}{more} pairs of answers to the same prompt are waiting for your label.")
    if pairs:
        pair = pairs[0]
    else:
        st.info(
            "Nothing left to label from served completions. "
            "Generate a fresh pair from the served model instead."
        )
else:
    status = serving_status(s.serve_url, s.api_key)
    if not status.ok:
        st.warning(f"The served model is down: {status.detail}")
    else:
        prompt = st.text_area(
            "Prompt", key="fb_prompt", placeholder="Ask something the model should answer well"
        )
        m1, m2, m3 = st.columns(3)
        model_a = m1.selectbox("Model A", status.models, key="fb_model_a")
        model_b = m2.selectbox(
            "Model B", status.models, index=min(1, len(status.models) - 1), key="fb_model_b"
        )
        temperature = m3.slider("Temperature", 0.0, 1.5, 0.8, 0.1, key="fb_temp")
        if st.button("Generate two answers", key="fb_generate", disabled=not prompt.strip()):
            try:
                a, b = complete_pair(
                    s.serve_url,
                    s.api_key,
                    prompt,
                    models=(model_a, model_b),
                    temperature=temperature,
                    max_tokens=default_max_tokens(context_length(s.catalog_url, status.model_sha256)),
                    user=who.name,
                )
                st.session_state["fb_fresh"] = (a.id, b.id)
            except ServingError as exc:
                st.error(str(exc))
        fresh = st.session_state.get("fb_fresh")
        if fresh:
            found = queries.completions_by_id(s.catalog_url, tuple(fresh))
            if len(found) < 2:
                st.error(
                    f"The served model did not record completions {', '.join(fresh)} in the catalog at "
                    f"{s.catalog_url}; serving and the dashboard must share one catalog."
                )
            else:
                pair = LabelPair(found[fresh[0]].prompt, found[fresh[0]], found[fresh[1]])


def _model_caption(c: CompletionInfo, versions: dict[str, str]) -> str:
    art = queries.artifacts_by_id(s.catalog_url, (c.model_artifact_id,)).get(c.model_artifact_id)
    name = versions.get(art.sha256, "") if art else ""
    model = name or (art.short if art else str(c.model_artifact_id))
    return f"`{c.id}` · model {model} · {ui.when(c.created_at)} UTC"


if pair is not None:
    versions: dict[str, str] = {}
    if not mlflow_reads.mlflow_problem(s.mlflow_uri):
        for v in ui.versions(s):
            if v.artifact_sha256:
                versions[v.artifact_sha256] = f"v{v.version}" + "".join(f" @{a}" for a in v.aliases)
    with st.container(border=True):
        st.markdown("**Prompt**")
        st.text(pair.prompt)
    col_a, col_b = st.columns(2)
    for col, name, c in ((col_a, "A", pair.a), (col_b, "B", pair.b)):
        with col, st.container(border=True):
            st.markdown(f"**Response {name}**")
            st.text(c.response or "(empty)")
            st.caption(_model_caption(c, versions))
    if not ctx.writable:
        ui.read_only_note(ctx, "labelling")
    else:
        if st.session_state.pop("fb_clear_note", False):
            st.session_state["fb_note"] = ""  # a saved note must not carry over to the next pair
        note = st.text_input("Note (optional)", key="fb_note", placeholder="why, in a few words")
        buttons = st.columns(5)
        clicked: str | None = None
        for col, (choice, label) in zip(buttons, actions.CHOICES.items(), strict=False):
            kind = "primary" if not choice.endswith("unsafe") else "secondary"
            if col.button(label, key=f"fb_{choice}", type=kind, width="stretch"):
                clicked = choice
        if buttons[4].button("Skip", key="fb_skip", width="stretch"):
            st.session_state.setdefault("fb_skipped", set()).add(frozenset((pair.a.id, pair.b.id)))
            st.rerun()
        if clicked:
            try:
                fid = actions.record_label(s, who, pair.a.id, pair.b.id, clicked, note)  # type: ignore[arg-type]
                st.session_state["feedback_flash"] = (
                    "success",
                    f"Saved label #{fid}: {actions.CHOICES[clicked]}.",
                )
                st.session_state.pop("fb_fresh", None)
                st.session_state["fb_clear_note"] = True
            except actions.ActionError as exc:
                st.session_state["feedback_flash"] = ("error", str(exc))
            st.rerun()

# --- progress ---------------------------------------------------------------------------------------------
st.divider()
totals = queries.feedback_totals(s.catalog_url)
c1, c2, c3 = st.columns(3)
c1.metric(
    "labels from the dashboard", totals.get("dashboard/preference", 0) + totals.get("dashboard/rating", 0)
)
c2.metric("feedback through the API", totals.get("api/preference", 0) + totals.get("api/rating", 0))
c3.metric("marked unsafe", totals.get("unsafe", 0))
used, snapshots = queries.labels_in_snapshots(s.catalog_url, who.name)
if used:
    st.caption(f"{used} of your labels went into {snapshots} RLHF preference snapshot(s) so far.")
mine = queries.recent_feedback(s.catalog_url, who.name, limit=10)
if mine:
    st.markdown("**Your latest labels**")
    st.dataframe(
        pd.DataFrame(
            {
                "when (UTC)": [ui.when(f.created_at) for f in mine],
                "A": [f.completion_id for f in mine],
                "B": [f.other_completion_id for f in mine],
                "preferred": [(f.preferred or "").upper() for f in mine],
                "unsafe": [f.unsafe for f in mine],
                "note": [f.note or "" for f in mine],
            }
        ),
        hide_index=True,
    )
