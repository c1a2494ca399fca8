"""Every server ``nightshift up`` starts binds loopback by default: what each launch script really runs.

Each ``infra/local/*.sh`` script runs with the environment ``nightshift up`` gives it, but with the
server executables (``prefect``, ``mlflow``, ``ray``, ``streamlit``) replaced by a stub that records
its arguments and environment instead of starting anything; the test then reads the bind address
each server was given. ``bench/abuse.py --stack`` starts the real stack (and a Serve proxy on its Ray)
and checks every listening socket of every process with psutil; test_abuse.py checks the live Serve
proxy of the test session.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from core.config import load_config
from core.serve_config import ServeConfig
from nightshift import stack
from serving.options import http_options

LOOPBACK = ("127.0.0.1", "localhost", "::1")
STUBBED = ("prefect", "mlflow", "ray", "streamlit")
# The flag through which each server is told where to listen.
BIND_FLAGS = {
    "prefect-server": ("--host",),
    "mlflow": ("--host",),
    "ray-head": ("--node-ip-address", "--dashboard-host"),
    "dashboard": ("--server.address",),
}
STUB = """#!/bin/sh
# Records how it was called instead of starting a server.
name=$(basename "$0")
printf '%s\\n' "$@" > "$STUB_OUT/$name.args"
env > "$STUB_OUT/$name.env"
"""


def _launch_with_stubs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[list[str], dict]]:
    """Run every service's launch script with stubbed servers; return each one's (argv, env)."""
    monkeypatch.setenv("NIGHTSHIFT_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    stubs, out = tmp_path / "bin", tmp_path / "out"
    stubs.mkdir()
    for name in STUBBED:
        (stubs / name).write_text(STUB)
        (stubs / name).chmod(0o755)
    cfg = load_config("tiny")  # defaults: stack.host and serve.host untouched
    seen = {}
    for name, svc in stack._services(cfg, tmp_path / "home", stack.REPO_ROOT).items():
        run_out = out / name
        run_out.mkdir(parents=True)
        env = {**svc.env, "STUB_OUT": str(run_out), "PATH": f"{stubs}{os.pathsep}{svc.env['PATH']}"}
        done = subprocess.run(["bash", str(svc.script)], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{svc.script}: {done.stderr}"
        (args_file,) = run_out.glob("*.args")  # each script execs exactly one server
        env_seen = dict(
            ln.split("=", 1) for ln in args_file.with_suffix(".env").read_text().splitlines() if "=" in ln
        )
        seen[name] = (args_file.read_text().splitlines(), env_seen)
    return seen


def _flag_values(argv: list[str], flag: str) -> list[str]:
    out = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]
    return out + [a.split("=", 1)[1] for a in argv if a.startswith(flag + "=")]


def test_every_launch_script_binds_loopback_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _launch_with_stubs(tmp_path, monkeypatch)
    assert set(BIND_FLAGS) | {"prefect-worker"} <= set(seen)
    for name, (argv, _env) in seen.items():
        assert not any(x in a for a in argv for x in ("0.0.0.0", "[::]")), (name, argv)
        for flag in BIND_FLAGS.get(name, ()):
            values = _flag_values(argv, flag)
            assert values and all(v in LOOPBACK for v in values), (name, flag, argv)
    # The worker serves nothing; its optional health server would bind every interface.
    assert "--with-healthcheck" not in seen["prefect-worker"][0]
    # Ray swaps a loopback node address for the machine's and then listens everywhere (GCS, raylet,
    # dashboard agent, metrics); cluster mode off keeps the loopback address (infra/local/ray-head.sh).
    assert seen["ray-head"][1].get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0"


def test_stack_clients_agree_with_the_loopback_head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # With cluster mode on, a client swaps 127.0.0.1 in RAY_ADDRESS for the machine's address and
    # finds no GCS there: the flow runs, `nightshift serve` and the env file get the head's setting.
    monkeypatch.setenv("NIGHTSHIFT_HOME", str(tmp_path))
    env = stack.stack_env(load_config("tiny"))
    assert env["RAY_ADDRESS"].startswith("127.0.0.1:") and env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"


def test_the_serve_proxy_binds_loopback_by_default() -> None:
    opts = http_options(ServeConfig())
    assert opts["host"] == "127.0.0.1"
    assert opts["request_timeout_s"] > 0 and opts["keep_alive_timeout_s"] > 0
