"""The loopback S3 server's recording: whole lines under concurrent uploads, and a replay restoring them."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nightshift.local_s3 import RecordingError, check_recording
from nightshift.services import http_json
from tests.conftest import REPO_ROOT, _stop_group, _wait_http, free_port

CREDS = {"aws_access_key_id": "test", "aws_secret_access_key": "secret", "region_name": "us-east-1"}


def _start(home: Path, port: int, recording: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "NIGHTSHIFT_HOME": str(home),
        "S3_PORT": str(port),
        "S3_RECORDING": str(recording),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    log_path = home / f"s3-{port}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            ["bash", str(REPO_ROOT / "infra" / "local" / "s3.sh")],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    _wait_http(f"http://127.0.0.1:{port}/moto-api/", proc, log_path, "s3 server")
    return proc


def _client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, **CREDS)


def test_concurrent_uploads_are_recorded_whole_and_replayed(tmp_path: Path) -> None:
    recording = tmp_path / "s3" / "recording.jsonl"
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = _start(tmp_path, port, recording)
    bodies = {f"obj/{i}": os.urandom(200_000 + 37 * i) for i in range(32)}
    try:
        _client(endpoint).create_bucket(Bucket="nightshift-rec")

        def put(key: str) -> None:
            _client(endpoint).put_object(Bucket="nightshift-rec", Key=key, Body=bodies[key])

        with cf.ThreadPoolExecutor(8) as pool:
            list(pool.map(put, bodies))
        _client(endpoint).delete_object(Bucket="nightshift-rec", Key="obj/0")
    finally:
        _stop_group(proc)

    lines = recording.read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # every line whole, none interleaved with another
    store = [e for e in entries if "/moto-api/" not in e["url"]]  # not the health checks
    assert len(store) == 1 + len(bodies) + 1

    proc = _start(tmp_path, port, recording)
    try:
        code, body = http_json(f"{endpoint}/moto-api/recorder/replay-recording", body={}, timeout=120)
        assert code == 200, body
        client = _client(endpoint)
        listed = {o["Key"] for o in client.list_objects_v2(Bucket="nightshift-rec")["Contents"]}
        assert listed == set(bodies) - {"obj/0"}  # the delete replays after the put it followed
        for key in sorted(listed)[:5]:
            assert client.get_object(Bucket="nightshift-rec", Key=key)["Body"].read() == bodies[key]
    finally:
        _stop_group(proc)


def test_a_cut_off_last_line_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "recording.jsonl"
    whole = json.dumps({"method": "PUT", "url": "http://x/b"}) + "\n"
    path.write_text(whole + whole[:17])
    assert check_recording(path) == 1
    assert path.read_text() == whole
    path.write_text(whole + whole.rstrip("\n"))  # whole, only its newline missing: kept
    assert check_recording(path) == 0
    assert path.read_text() == whole * 2


def test_an_interleaved_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "recording.jsonl"
    whole = json.dumps({"method": "PUT", "url": "http://x/b"}) + "\n"
    path.write_text(whole + whole[:9] + whole + whole)
    with pytest.raises(RecordingError, match=r"recording\.jsonl has unreadable lines \(2\).*Move it away"):
        check_recording(path)
