#!/usr/bin/env bash
# Prefect process worker serving the local work pool. Flow runs it starts inherit this environment,
# so PREFECT_API_URL, MLFLOW_TRACKING_URI, RAY_ADDRESS, NIGHTSHIFT_HOME, NIGHTSHIFT_CATALOG_URL and
# NIGHTSHIFT_REPO (read by the pull step in prefect.yaml) must be set; `nightshift up` sets them all.
set -euo pipefail

: "${PREFECT_API_URL:?set PREFECT_API_URL to the Prefect server, e.g. http://127.0.0.1:4200/api}"
: "${NIGHTSHIFT_HOME:?set NIGHTSHIFT_HOME to the stack state directory}"
POOL="${NIGHTSHIFT_WORK_POOL:-nightshift-local}"
NAME="${NIGHTSHIFT_WORKER_NAME:-nightshift-worker}"

# Flow runs keep their Prefect-local state (result storage, caches) under the stack's home too.
export PREFECT_HOME="$NIGHTSHIFT_HOME/prefect"
export DO_NOT_TRACK=1
mkdir -p "$PREFECT_HOME"

exec prefect worker start --pool "$POOL" --type process --name "$NAME"
