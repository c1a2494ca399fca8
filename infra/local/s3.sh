#!/usr/bin/env bash
# An S3-compatible object store on loopback (moto's server) for the `postgres` backend of the local stack
# and for tests: the bucket for artifacts (s3://<bucket>/artifacts) and MLflow's (s3://<bucket>/mlflow).
# It keeps objects in memory. With S3_RECORDING set, every request is also appended to that file and
# `nightshift up` replays it after a restart, so objects outlive `nightshift down`; for real data use
# an external S3 (stack.s3_endpoint) instead. Any access key is accepted.
set -euo pipefail

: "${NIGHTSHIFT_HOME:?set NIGHTSHIFT_HOME to the stack state directory}"
HOST="${NIGHTSHIFT_HOST:-127.0.0.1}"
PORT="${S3_PORT:-9000}"

unset MOTO_ENABLE_RECORDING MOTO_RECORDER_FILEPATH
if [[ -n "${S3_RECORDING:-}" ]]; then
  mkdir -p "$(dirname "$S3_RECORDING")"
  touch "$S3_RECORDING"
  export MOTO_ENABLE_RECORDING=true MOTO_RECORDER_FILEPATH="$S3_RECORDING"
fi

# moto's server, with requests recorded and applied one at a time (see nightshift/local_s3.py).
exec python -m nightshift.local_s3 --host "$HOST" --port "$PORT"
