"""A local Ray (``ray.address: local``, as stage commands and tests start it) listens on loopback only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
# Starts a local Ray in a fresh interpreter, runs a task (so a worker exists), lists the listening
# sockets of the driver and of the Ray processes it started.
PROBE = """
import json, psutil, ray
from training.config import RayConfig
from training.ray_setup import init_ray
init_ray(RayConfig(address="local", num_cpus=1))
ray.get(ray.remote(lambda: 1).remote())
me = psutil.Process()
ours = {me.pid} | {p.pid for p in me.children(recursive=True)}  # GCS, raylet, agents, workers
found = [c.laddr.ip for c in psutil.net_connections("inet") if c.status == "LISTEN" and c.pid in ours]
print(json.dumps(found))
ray.shutdown()
"""


def test_local_ray_listens_on_loopback_only() -> None:
    unset = ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    addresses = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(addresses) >= 5  # GCS, raylet, agents, worker, driver
    assert set(addresses) <= {"127.0.0.1", "::1", "::ffff:127.0.0.1"}, addresses
