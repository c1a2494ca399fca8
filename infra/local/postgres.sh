#!/usr/bin/env bash
# PostgreSQL 15 for the `postgres` backend of the local stack (Prefect, MLflow and the catalog each get a
# database on it; `nightshift up` creates them). The cluster is made on first start under $POSTGRES_DIR
# (default $NIGHTSHIFT_HOME/postgres) with a generated superuser password, listens on TCP loopback only
# (no unix socket) and runs in the foreground, so the process `nightshift up` tracks is this script.
# Run as root, the server runs as the `postgres` user (Postgres refuses root); that user must be able
# to reach $POSTGRES_DIR.
set -euo pipefail

: "${NIGHTSHIFT_HOME:?set NIGHTSHIFT_HOME to the stack state directory}"
: "${POSTGRES_PASSWORD_FILE:?set POSTGRES_PASSWORD_FILE to a file holding the superuser password}"
HOST="${NIGHTSHIFT_HOST:-127.0.0.1}"
PORT="${POSTGRES_PORT:-5433}"
PG_BIN="${POSTGRES_BIN:-/usr/lib/postgresql/15/bin}"
DIR="${POSTGRES_DIR:-$NIGHTSHIFT_HOME/postgres}"
DATA="$DIR/data"

if [[ ! -x "$PG_BIN/postgres" ]]; then
  echo "PostgreSQL 15 not found under $PG_BIN: install Debian's postgresql package (apt-get install" \
    "postgresql), or point stack.postgres_url at an existing server" >&2
  exit 1
fi

as_postgres() {
  if [[ "$(id -u)" == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

mkdir -p "$DIR"
if [[ "$(id -u)" == 0 ]]; then
  chown postgres:postgres "$DIR"
  chmod 0700 "$DIR"
  if ! runuser -u postgres -- test -w "$DIR"; then
    echo "the postgres user cannot reach $DIR (a parent directory is closed to it): set" \
      "stack.postgres_dir to a directory it can reach, e.g. under /tmp or /var/lib" >&2
    exit 1
  fi
fi
cd "$DIR"  # a working directory the postgres user may enter

if [[ ! -f "$DATA/PG_VERSION" ]]; then
  # initdb into a side directory and rename it into place, so an interrupted first start leaves no
  # half-made cluster behind.
  INIT="$DIR/.init-$$"
  PWFILE="$DIR/.pw-$$"
  rm -rf "$INIT"
  install -m 0600 "$POSTGRES_PASSWORD_FILE" "$PWFILE"
  if [[ "$(id -u)" == 0 ]]; then chown postgres:postgres "$PWFILE"; fi
  as_postgres "$PG_BIN/initdb" -D "$INIT" -U postgres --auth=scram-sha-256 --pwfile="$PWFILE" \
    -E UTF8 --locale=C >/dev/null
  rm -f "$PWFILE"
  mv "$INIT" "$DATA"
fi

# SIGTERM is Postgres's "smart" shutdown, which waits for every client to disconnect; `nightshift down`
# wants it gone now, so a TERM or INT to this script asks for a fast shutdown (sessions rolled back).
stop_postgres() {
  as_postgres "$PG_BIN/pg_ctl" stop -D "$DATA" -m fast -w -t 60 >/dev/null 2>&1 || true
}
trap stop_postgres TERM INT

as_postgres "$PG_BIN/postgres" -D "$DATA" \
  -c listen_addresses="$HOST" -c port="$PORT" -c unix_socket_directories='' &
SERVER=$!
while kill -0 "$SERVER" 2>/dev/null; do
  wait "$SERVER" || true
done
