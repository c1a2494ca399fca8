"""Artifacts under faults: a writer SIGKILLed at random points, and writers racing on one content.

Each writer is a real child process publishing a multi-file artifact; nothing is mocked.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from catalog.artifacts import INDEX, open_artifact

ROOT = Path(__file__).resolve().parents[2]
# Publishes 12 files of 256 KiB (content fixed by argv[2]) under root argv[1]; prints the hash.
WRITER = """
import sys, time
from catalog.artifacts import publish
root, seed, slow = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
with publish("blob", root=root) as st:
    print("staging", flush=True)
    for i in range(12):
        (st.path / f"part-{i:02d}.bin").write_bytes(bytes([(seed + i) % 256]) * 262_144)
        time.sleep(slow)
print(st.ref.sha256)
"""


def _writer(root: Path, seed: int, slow: float) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", WRITER, str(root), str(seed), str(slow)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _visible(root: Path) -> list[Path]:
    return (
        [d for d in (root / "blob").iterdir() if not d.name.startswith(".")]
        if (root / "blob").exists()
        else []
    )


def test_sigkilled_writers_never_leave_a_visible_partial_artifact(tmp_path: Path) -> None:
    rng = random.Random(3)
    killed = 0
    for trial in range(8):
        proc = _writer(tmp_path, seed=trial, slow=0.05)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "staging"
        time.sleep(rng.uniform(0, 0.7))  # writing takes >= 0.6 s: the kill lands mid-write or at the end
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            killed += 1
        proc.wait()
        # Whatever is visible is complete: it has its index and every file matches its hash.
        for d in _visible(tmp_path):
            assert (d / INDEX).exists(), d
            open_artifact(d, kind="blob", verify=True)
    assert killed >= 5  # the faults did happen
    # Every content can still be published afterwards, next to the leftovers of the dead writers.
    for trial in range(8):
        proc = _writer(tmp_path, seed=trial, slow=0)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert len(_visible(tmp_path)) == 8
    for d in _visible(tmp_path):
        open_artifact(d, kind="blob", verify=True)


def test_writers_racing_on_the_same_content_end_with_one_good_copy(tmp_path: Path) -> None:
    for _ in range(3):
        procs = [_writer(tmp_path, seed=42, slow=0) for _ in range(3)]
        results = [p.communicate(timeout=120) for p in procs]
        for p, (_, err) in zip(procs, results, strict=True):
            assert p.returncode == 0, err
        hashes = {out.split()[-1] for out, _ in results}
        assert len(hashes) == 1
    (only,) = _visible(tmp_path)
    assert open_artifact(only, kind="blob", verify=True).sha256 == hashes.pop()
    # No staging or set-aside directory is left behind by the losers.
    assert [d.name for d in (tmp_path / "blob").iterdir()] == [only.name]
