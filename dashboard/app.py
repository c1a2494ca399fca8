"""Nightshift dashboard: ``streamlit run dashboard/app.py`` (``nightshift up`` serves it on 127.0.0.1:8501).

This script is the entry point of a multi-page app: it sets up the page and the navigation and
hands over to the page the visitor chose; each page starts with :func:`dashboard.ui.page`. The
pages live in ``views/``, not ``pages/``: Streamlit treats a ``pages/`` folder beside the entry
script as old-style pages and would run them without this script on a direct link.
"""

from __future__ import annotations

import os

import streamlit as st

# MLflow's client retries a dead server with exponential backoff for minutes; a dashboard should
# say "MLflow is down" in seconds instead (pages also check /health first).
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")

st.set_page_config(page_title="Nightshift", page_icon=":material/nightlight:", layout="wide")

pages = {
    "Pipeline": [
        st.Page("views/overview.py", title="Overview", icon=":material/dashboard:", default=True),
        st.Page("views/lineage.py", title="Lineage", icon=":material/account_tree:", url_path="lineage"),
        st.Page("views/runs.py", title="Runs", icon=":material/monitoring:", url_path="runs"),
    ],
    "Models": [
        st.Page(
            "views/models.py",
            title="Models and deployments",
            icon=":material/deployed_code:",
            url_path="models",
        ),
        st.Page("views/playground.py", title="Playground", icon=":material/chat:", url_path="playground"),
    ],
    "People": [
        st.Page("views/feedback.py", title="Feedback", icon=":material/thumbs_up_down:", url_path="feedback"),
    ],
}
current = st.navigation(pages)

current.run()
