#!/usr/bin/env bash
# Prefect server (API + UI) on SQLite, all state under $NIGHTSHIFT_HOME/prefect; backend `postgres` of
# the stack sets PREFECT_SERVER_DATABASE_CONNECTION_URL (postgresql+asyncpg://.../prefect) instead.
# Started detached by `nightshift up` (nightshift/stack.py), which sets the variables below;
# run it by hand the same way: NIGHTSHIFT_HOME=$PWD/.nightshift infra/local/prefect-server.sh
set -euo pipefail

: "${NIGHTSHIFT_HOME:?set NIGHTSHIFT_HOME to the stack state directory}"
HOST="${NIGHTSHIFT_HOST:-127.0.0.1}"
PORT="${PREFECT_PORT:-4200}"

# The server gets its own PREFECT_HOME so its database and profiles never mix with the user's ~/.prefect.
export PREFECT_HOME="$NIGHTSHIFT_HOME/prefect"
export PREFECT_SERVER_DATABASE_CONNECTION_URL="${PREFECT_SERVER_DATABASE_CONNECTION_URL:-sqlite+aiosqlite:///$PREFECT_HOME/prefect.db}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export DO_NOT_TRACK=1
# The UI calls the API from the browser; point it at the address the server really binds.
export PREFECT_UI_API_URL="http://$HOST:$PORT/api"
mkdir -p "$PREFECT_HOME"

exec prefect server start --host "$HOST" --port "$PORT"
