"""Playground: chat with the served model, streamed token by token."""

from __future__ import annotations

import streamlit as st

from dashboard import ui
from dashboard.serving_client import (
    Answer,
    ServingError,
    context_length,
    default_max_tokens,
    serving_status,
    stream_chat,
)

ctx = ui.page("Playground", "Chat with the served model, as any OpenAI client would.", needs_catalog=False)
s = ctx.settings
status = serving_status(s.serve_url, s.api_key)
context = context_length(s.catalog_url, status.model_sha256) if status.ok else None
if status.ok:
    st.caption(f"Serving: {status.detail}" + (f", context {context} tokens" if context else ""))
else:
    st.warning(f"The served model is down: {status.detail}", icon=":material/cloud_off:")

with st.expander("Settings", expanded=False):
    c1, c2, c3 = st.columns(3)
    model = c1.selectbox("Model", status.models or ("(none)",), key="pg_model")
    temperature = c2.slider("Temperature", 0.0, 1.5, 0.8, 0.1, key="pg_temp")
    max_tokens = c3.number_input(
        "Max new tokens", 1, context or 4096, default_max_tokens(context), key="pg_max_tokens"
    )
    system = st.text_area("System prompt", "", key="pg_system", placeholder="optional")

history: list[dict[str, str]] = st.session_state.setdefault("pg_history", [])
for msg in history:
    with st.chat_message(msg["role"]):
        st.markdown(msg["content"])
        if msg.get("id"):
            st.caption(f"completion `{msg['id']}` · [trace it to its data](lineage?completion={msg['id']})")

if history and st.button("Clear the conversation", key="pg_clear"):
    history.clear()
    st.rerun()

prompt = st.chat_input("Message the model", disabled=not status.ok, key="pg_input")
if prompt:
    history.append({"role": "user", "content": prompt})
    with st.chat_message("user"):
        st.markdown(prompt)
    messages = ([{"role": "system", "content": system}] if system.strip() else []) + [
        {"role": m["role"], "content": m["content"]} for m in history
    ]
    answer = Answer()
    with st.chat_message("assistant"):
        try:
            st.write_stream(
                stream_chat(
                    s.serve_url,
                    s.api_key,
                    messages,
                    answer,
                    model=model,
                    temperature=temperature,
                    max_tokens=int(max_tokens),
                    user=ctx.who.name,
                )
            )
        except ServingError as exc:
            st.error(str(exc))
            history.pop()
        else:
            history.append({"role": "assistant", "content": answer.text, "id": answer.id or ""})
            if answer.id:
                st.caption(
                    f"completion `{answer.id}` · [trace it to its data](lineage?completion={answer.id})"
                )
