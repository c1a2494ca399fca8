"""Detached service processes that `nightshift up` starts and `down` stops, tracked by pid file.

Each service is one launch script (``infra/local/<svc>.sh``) run in its own session, so its pid is
also its process-group id and stopping the group stops every child it spawned (Ray's GCS and
raylet, uvicorn workers). A pid file ``stack/<svc>.json`` records the pid *and* the process start
time: a pid is only "ours" while the process with that pid started at the recorded time, so a pid the
kernel has since reused for something else is never signalled.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.config import StackConfig
from core.files import write_atomic

log = logging.getLogger(__name__)

# A health check returns None when healthy, or a short reason why not.
HealthCheck = Callable[[], "str | None"]

# Popen handles of the services this interpreter started: kept so their exit status is collected
# (an unreaped child stays a zombie, which still counts as a member of its process group).
_children: dict[int, subprocess.Popen[bytes]] = {}


class StackError(RuntimeError):
    """A service could not be started, checked or stopped; the message says which and why."""


@dataclass(frozen=True)
class ServiceStatus:
    """What ``nightshift status`` shows for one service."""

    name: str
    pid: int | None
    running: bool
    healthy: bool
    url: str | None
    log: Path
    detail: str = ""


@dataclass(frozen=True)
class Service:
    """How to launch and check one service.

    Attributes:
        name: short name, also the stem of its pid and log files.
        script: the launch script; it reads its settings from ``env`` and ``exec``s the server.
        env: the complete environment of the script.
        ports: ``(config key, port)`` of every fixed port the service binds, checked before launch.
        url: where a user reaches it, for ``status``.
        health: returns None when the service answers as it should.
    """

    name: str
    script: Path
    env: Mapping[str, str]
    ports: tuple[tuple[str, int], ...]
    url: str | None
    health: HealthCheck
    extra_state: Mapping[str, Any] = field(default_factory=dict)


# --- processes -------------------------------------------------------------------------------------


def process_start_time(pid: int) -> str | None:
    """An identifier of when ``pid`` started, or None if no live (non-zombie) process has that pid."""
    stat = Path(f"/proc/{pid}/stat")
    if Path("/proc/self/stat").exists():
        try:
            text = stat.read_text()
        except OSError:
            return None
        # The command name (field 2) may contain spaces and parentheses; fields after it are fixed.
        fields = text[text.rindex(")") + 2 :].split()
        state, start_ticks = fields[0], fields[19]
        return None if state in ("Z", "X") else start_ticks
    out = subprocess.run(["ps", "-o", "stat=,lstart=", "-p", str(pid)], capture_output=True, text=True)
    line = out.stdout.strip()
    if out.returncode != 0 or not line or line.startswith("Z"):
        return None
    return line.split(None, 1)[1]


def _reap(pid: int) -> None:
    child = _children.get(pid)
    if child is not None:
        if child.poll() is not None:
            _children.pop(pid, None)
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _group_alive(pgid: int) -> bool:
    _reap(pgid)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- state files -----------------------------------------------------------------------------------


def state_path(home: Path, name: str) -> Path:
    return home / "stack" / f"{name}.json"


def log_path(home: Path, name: str) -> Path:
    return home / "logs" / f"{name}.log"


def read_state(home: Path, name: str) -> dict[str, Any] | None:
    """The recorded state of ``name``, or None if there is none (or it is unreadable)."""
    try:
        state = json.loads(state_path(home, name).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("pid"), int) else None


def owned_pid(home: Path, name: str) -> int | None:
    """The pid of our running ``name`` process: recorded, alive, and started when we recorded."""
    state = read_state(home, name)
    if state is None:
        return None
    pid = state["pid"]
    _reap(pid)
    started = process_start_time(pid)
    return pid if started is not None and started == state.get("start_time") else None


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True))


# --- checks ----------------------------------------------------------------------------------------


# Ray gives its worker processes ports in this range (Ray's default); a service port there can clash.
RAY_WORKER_PORTS = range(10002, 20000)


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports free on ``host`` a moment ago, outside :data:`RAY_WORKER_PORTS`."""
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            socks.append(s)  # held open until all are picked, so the OS never hands one out twice
            s.bind((host, 0))
            if (port := s.getsockname()[1]) not in RAY_WORKER_PORTS:
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


def free_port_overrides() -> dict[str, int]:
    """Config overrides that put every ``stack.*_port`` and ``serve.port`` on a free port (a second
    stack beside the default one: tests and benches)."""
    keys = [f"stack.{k}" for k in StackConfig.model_fields if k.endswith("_port")] + ["serve.port"]
    return dict(zip(keys, free_ports(len(keys)), strict=True))


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on ``host:port`` (binding the same way a server would)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR as servers set it: a port in TIME_WAIT after our own `down` is free to use.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def http_json(
    url: str, body: Any = None, timeout: float = 3.0, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """GET (or POST ``body`` as JSON) and return ``(status, parsed body or text)``.

    Raises:
        OSError: when nothing answers (connection refused, timeout).
    """
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    text = raw.decode(errors="replace")
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def http_ok(url: str, headers: dict[str, str] | None = None) -> HealthCheck:
    """A health check that wants HTTP 200 from ``url`` (sent with ``headers``, e.g. credentials)."""

    def check() -> str | None:
        try:
            status, _ = http_json(url, headers=headers)
        except OSError as e:
            return f"GET {url}: {e}"
        return None if status == 200 else f"GET {url}: HTTP {status}"

    return check


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file, for error messages."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


# --- lifecycle -------------------------------------------------------------------------------------


def check_ports(home: Path, services: list[Service], host: str) -> None:
    """Raise one error listing every port a service about to start would find taken.

    Raises:
        StackError: naming each port, the service and the ``--stack.<key>`` override that moves it.
    """
    problems = [
        f"port {port} on {host} ({svc.name}) is already in use by a process `nightshift up` did not "
        f"start; stop that process or pick another port with --stack.{key} N"
        for svc in services
        for key, port in svc.ports
        if port_in_use(host, port)
    ]
    if problems:
        raise StackError("cannot start the stack:\n  - " + "\n  - ".join(problems))


def launch(home: Path, svc: Service) -> int:
    """Start ``svc``'s script detached, in its own session, logging to ``logs/<name>.log``."""
    logfile = log_path(home, svc.name)
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with logfile.open("ab") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} nightshift up: {svc.script}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            ["bash", str(svc.script)],
            env=dict(svc.env),
            cwd=home,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so `down` can stop all its children
        )
    _children[proc.pid] = proc
    started = process_start_time(proc.pid)
    state = {
        "pid": proc.pid,
        "start_time": started,
        "started_at": time.time(),
        "script": str(svc.script),
        "ports": dict(svc.ports),
        "url": svc.url,
        **svc.extra_state,
    }
    _write_json(state_path(home, svc.name), state)
    log.info("started %s (pid %d), log %s", svc.name, proc.pid, logfile)
    return proc.pid


def wait_healthy(home: Path, svc: Service, pid: int, timeout_s: float) -> None:
    """Poll ``svc.health`` until it passes.

    Raises:
        StackError: if the process exits or the check still fails after ``timeout_s``; the message
            names the service and shows the tail of its log.
    """
    deadline = time.monotonic() + timeout_s
    reason: str | None = "not checked yet"
    while True:
        _reap(pid)
        if process_start_time(pid) is None:
            raise StackError(
                f"{svc.name} exited during startup; last lines of {log_path(home, svc.name)}:\n"
                f"{tail(log_path(home, svc.name))}"
            )
        reason = svc.health()
        if reason is None:
            return
        if time.monotonic() > deadline:
            raise StackError(
                f"{svc.name} (pid {pid}) is not healthy after {timeout_s:.0f}s ({reason}); "
                f"raise --stack.start_timeout_s if the machine is slow. Last lines of "
                f"{log_path(home, svc.name)}:\n{tail(log_path(home, svc.name))}"
            )
        time.sleep(0.5)


def stop(home: Path, name: str, grace_s: float = 20.0) -> bool:
    """Stop our ``name`` process group, if it is ours, and remove its pid file.

    SIGTERM goes to the leader first so it can shut its children down in order (``ray start
    --block`` does), then to the whole group, then SIGKILL after ``grace_s``.

    Returns:
        Whether a running process was stopped (False for a missing or stale pid file).
    """
    pid = owned_pid(home, name)
    if pid is not None:
        log.info("stopping %s (pid %d)", name, pid)
        steps = [(lambda: os.kill(pid, signal.SIGTERM), grace_s / 2)]
        steps.append((lambda: os.killpg(pid, signal.SIGTERM), grace_s / 2))
        steps.append((lambda: os.killpg(pid, signal.SIGKILL), 5.0))
        for send, wait_s in steps:
            with contextlib.suppress(ProcessLookupError):
                send()
            deadline = time.monotonic() + wait_s
            while _group_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if not _group_alive(pid):
                break
        else:
            log.warning("%s (process group %d) survived SIGKILL", name, pid)
    state_path(home, name).unlink(missing_ok=True)
    return pid is not None


def service_status(home: Path, svc: Service, *, check_health: bool = True) -> ServiceStatus:
    """Running / healthy / pid / url / log of one service."""
    pid = owned_pid(home, svc.name)
    reason = (svc.health() if check_health else None) if pid is not None else "not running"
    return ServiceStatus(
        name=svc.name,
        pid=pid,
        running=pid is not None,
        healthy=pid is not None and reason is None,
        url=svc.url,
        log=log_path(home, svc.name),
        detail=reason or "",
    )


def venv_bin() -> Path:
    """The directory of this interpreter's console scripts (``prefect``, ``mlflow``, ``ray``)."""
    return Path(sys.executable).parent


def rotate_logs(home: Path, max_bytes: int, backups: int) -> list[Path]:
    """Rotate every service log over ``max_bytes``: ``x.log`` → ``x.log.1`` → … → ``x.log.<backups>``.

    The services write to a descriptor they inherited at start (``O_APPEND``), which cannot be
    reopened from here, so the file is copied and truncated in place, as logrotate's copytruncate
    does (Python's rotating handlers need the writer to be Python in this process). A line written
    between the copy and the truncation is lost.
    """
    rotated = []
    for path in sorted((home / "logs").glob("*.log")):
        try:
            if path.stat().st_size <= max_bytes:
                continue
        except OSError:
            continue
        for i in range(backups - 1, 0, -1):
            older = path.with_name(f"{path.name}.{i}")
            if older.exists():
                older.replace(path.with_name(f"{path.name}.{i + 1}"))
        shutil.copyfile(path, path.with_name(f"{path.name}.1"))
        os.truncate(path, 0)
        rotated.append(path)
        log.info("rotated %s", path)
    return rotated
