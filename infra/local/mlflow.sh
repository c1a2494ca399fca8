#!/usr/bin/env bash
# MLflow tracking server: SQLite backend, artifacts proxied by the server (clients upload and download
# through HTTP, so they need no access to the artifact directory).
# Backend `postgres` of the stack sets MLFLOW_BACKEND_STORE_URI (postgresql+psycopg://.../mlflow) and
# MLFLOW_ARTIFACTS_DESTINATION (s3://<bucket>/mlflow, with MLFLOW_S3_ENDPOINT_URL and AWS credentials);
# `mlflow server` reads both from the environment, so a password never shows in the process list.
set -euo pipefail

: "${NIGHTSHIFT_HOME:?set NIGHTSHIFT_HOME to the stack state directory}"
HOST="${NIGHTSHIFT_HOST:-127.0.0.1}"
PORT="${MLFLOW_PORT:-5000}"
WORKERS="${MLFLOW_WORKERS:-2}"
DIR="$NIGHTSHIFT_HOME/mlflow"
mkdir -p "$DIR/artifacts"
# MLflow 3 starts background job workers (huey) by default; nothing here submits jobs, and on a small
# machine they double the start-up time.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

# MLflow 3's security middleware rejects unknown Host headers (DNS-rebinding guard); the defaults
# already admit localhost and 127.0.0.1, so only list the bound address when it is something else.
EXTRA=()
case "$HOST" in
  127.0.0.1 | localhost) ;;
  *) EXTRA+=(--allowed-hosts "${MLFLOW_ALLOWED_HOSTS:-$HOST:$PORT}") ;;
esac

# stack.mlflow_auth: MLflow's basic-auth app, with the admin account of $MLFLOW_AUTH_CONFIG_PATH.
if [[ -n "${MLFLOW_AUTH_CONFIG_PATH:-}" ]]; then EXTRA+=(--app-name basic-auth); fi

export MLFLOW_BACKEND_STORE_URI="${MLFLOW_BACKEND_STORE_URI:-sqlite:///$DIR/mlflow.db}"
export MLFLOW_ARTIFACTS_DESTINATION="${MLFLOW_ARTIFACTS_DESTINATION:-$DIR/artifacts}"

exec mlflow server \
  --host "$HOST" --port "$PORT" --workers "$WORKERS" \
  --serve-artifacts \
  "${EXTRA[@]}"
