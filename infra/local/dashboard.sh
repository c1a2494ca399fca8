#!/usr/bin/env bash
# Streamlit dashboard: overview, lineage, runs, models and deployments, feedback, playground.
# Always on loopback (DASHBOARD_HOST): off the machine it is reached through an authenticating proxy
# that sets NIGHTSHIFT_DASHBOARD_IDENTITY_HEADER, so no one else can set that header.
set -euo pipefail
: "${NIGHTSHIFT_HOME:?set NIGHTSHIFT_HOME to the stack state directory}"
: "${NIGHTSHIFT_REPO:?set NIGHTSHIFT_REPO to the repository checkout}"
exec streamlit run "$NIGHTSHIFT_REPO/dashboard/app.py" \
  --server.address "${DASHBOARD_HOST:-127.0.0.1}" --server.port "${DASHBOARD_PORT:-8501}" \
  --server.headless true --browser.gatherUsageStats false --client.toolbarMode viewer
