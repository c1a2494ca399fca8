"""Upkeep of the local stack: log rotation under a live writer, old Ray sessions, disk use by kind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from core.config import load_config
from nightshift.services import rotate_logs
from nightshift.upkeep import disk_usage, finished_ray_logs, stale_ray_sessions


def test_logs_rotate_under_a_writer_that_keeps_appending(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    path = logs / "mlflow.log"
    # A service's stdout: a descriptor opened once, with O_APPEND, never reopened.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for round_ in range(4):
            os.write(fd, f"round {round_} ".encode() * 400)
            rotated = rotate_logs(tmp_path, max_bytes=1000, backups=2)
            assert rotated == [path]
            assert path.stat().st_size == 0
        os.write(fd, b"after")
        assert path.read_bytes() == b"after"  # the writer goes on at the start of the emptied file
    finally:
        os.close(fd)
    assert (logs / "mlflow.log.1").read_bytes().startswith(b"round 3")
    assert (logs / "mlflow.log.2").read_bytes().startswith(b"round 2")
    assert not (logs / "mlflow.log.3").exists()  # backups=2
    assert rotate_logs(tmp_path, max_bytes=1000, backups=2) == []  # under the size: left alone


def test_old_ray_sessions_go_and_the_running_one_stays(tmp_path: Path) -> None:
    ray = tmp_path / "ray"
    for name in ("session_2026-12-01_00-00-00_1", "session_2026-12-02_00-00-00_2"):
        (ray / name / "logs").mkdir(parents=True)
        (ray / name / "logs" / "raylet.out").write_bytes(b"x" * 100)
    (ray / "session_latest").symlink_to(ray / "session_2026-12-02_00-00-00_2")
    found = stale_ray_sessions(tmp_path, remove=True)
    assert [(p.name, n) for p, n in found] == [("session_2026-12-01_00-00-00_1", 100)]
    assert not (ray / "session_2026-12-01_00-00-00_1").exists()
    assert (ray / "session_2026-12-02_00-00-00_2").exists()


def test_disk_use_by_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIGHTSHIFT_HOME", str(tmp_path))
    cfg = load_config("tiny", {"tracking.artifact_root": str(tmp_path / "artifacts")})
    (tmp_path / "artifacts" / "model" / "ab").mkdir(parents=True)
    (tmp_path / "artifacts" / "model" / "ab" / "model.safetensors").write_bytes(b"w" * 3000)
    (tmp_path / "runs" / "pretrain-x").mkdir(parents=True)
    (tmp_path / "runs" / "pretrain-x" / "ckpt").write_bytes(b"c" * 2000)
    (tmp_path / "mlflow" / "artifacts").mkdir(parents=True)
    (tmp_path / "mlflow" / "mlflow.db").write_bytes(b"d" * 500)
    (tmp_path / "catalog.db").write_bytes(b"k" * 700)
    use = disk_usage(cfg)
    assert use == {
        "artifacts/model": 3000,
        "checkpoints": 2000,
        "mlflow database": 500,
        "catalog": 700,
    }


def test_logs_of_finished_ray_processes_and_runs_go(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    session = tmp_path / "ray" / "session_2026-12-02_00-00-00_2"
    logs = session / "logs"
    (logs / "train").mkdir(parents=True)
    (tmp_path / "ray" / "session_latest").symlink_to(session)
    alive, gone = os.getpid(), dead.pid
    names = {
        f"worker-{'a' * 56}-01000000-{alive}.out": True,  # a live process: its log stays
        f"worker-{'b' * 56}-02000000-{gone}.err": False,
        f"python-core-worker-{'c' * 56}_{gone}.log": False,
        f"python-core-driver-{'d' * 56}_{alive}.log": True,
        "raylet.out": True,  # the node's own logs are not per process
        "train/ray-train-app-controller-e.log": False,  # a finished run's
    }
    for name in names:
        (logs / name).write_bytes(b"x" * 10)
    assert finished_ray_logs(tmp_path, 0, remove=True) == (3, 30)
    assert {n for n in names if (logs / n).exists()} == {n for n, keep in names.items() if keep}
    assert finished_ray_logs(tmp_path, 3600, remove=True) == (0, 0)  # nothing that young goes
