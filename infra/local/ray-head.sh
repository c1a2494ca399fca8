#!/usr/bin/env bash
# Ray head node in the foreground (--block), so the process `nightshift up` tracks is the head itself
# and stopping its process group stops GCS, raylet, dashboard and workers with it.
set -euo pipefail

: "${NIGHTSHIFT_HOME:?set NIGHTSHIFT_HOME to the stack state directory}"
HOST="${NIGHTSHIFT_HOST:-127.0.0.1}"
PORT="${RAY_PORT:-6379}"
DASHBOARD_PORT="${RAY_DASHBOARD_PORT:-8265}"
CLIENT_PORT="${RAY_CLIENT_PORT:-10001}"
AGENT_PORT="${RAY_DASHBOARD_AGENT_PORT:-52365}"
METRICS_PORT="${RAY_METRICS_EXPORT_PORT:-8080}"
OBJECT_STORE_BYTES="${RAY_OBJECT_STORE_BYTES:-1000000000}"
# Unix socket paths are limited to ~107 bytes and Ray nests session_<date>_<pid>/sockets/… under
# its temp dir, so the temp dir must stay short; stack.py picks one.
TEMP_DIR="${RAY_TEMP_DIR:-/tmp/nightshift-ray}"
export RAY_USAGE_STATS_ENABLED=0
# A single local node has nothing to drain to; without this, SIGTERM waits up to 30 s before teardown.
export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-0}"
# Ray replaces a loopback --node-ip-address with the machine's outbound address, and then the GCS,
# raylet, workers, dashboard agent and its metrics port all listen on every interface. With cluster
# mode off (Ray's switch for single-machine Windows/macOS) a loopback head keeps its node address and
# every one of them binds 127.0.0.1; a head on a real address still forms a multi-node cluster.
case "$HOST" in
  127.* | localhost | ::1) export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="${RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER:-0}" ;;
esac

CPUS=()
if [[ -n "${RAY_NUM_CPUS:-}" ]]; then CPUS=(--num-cpus "$RAY_NUM_CPUS"); fi

exec ray start --head --block --disable-usage-stats \
  --node-ip-address "$HOST" --port "$PORT" \
  --dashboard-host "$HOST" --dashboard-port "$DASHBOARD_PORT" \
  --ray-client-server-port "$CLIENT_PORT" --dashboard-agent-listen-port "$AGENT_PORT" \
  --metrics-export-port "$METRICS_PORT" \
  --object-store-memory "$OBJECT_STORE_BYTES" \
  --temp-dir "$TEMP_DIR" \
  "${CPUS[@]}"
