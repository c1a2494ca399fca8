"""The local stack of ``nightshift up | down | status``: Prefect server + worker, MLflow, a Ray head
(and, with ``stack.backend: postgres``, a Postgres server: see :mod:`nightshift.backends`).

Every service binds ``cfg.stack.host`` (127.0.0.1), keeps its state and log under ``$NIGHTSHIFT_HOME``,
is started by a script in ``infra/local/`` and tracked by pid file (:mod:`nightshift.services`). ``up``
is idempotent and leaves a healthy service of ours alone; ``down`` stops only what ``up`` started.
Once the servers are healthy, ``up`` applies ``prefect.yaml`` and writes ``$NIGHTSHIFT_HOME/env``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import secrets
import shlex
import subprocess
import time
import tomllib
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

import toml

from core.config import LOOPBACK_HOSTS, Config, nightshift_home
from core.serve_config import proxy_env
from nightshift import backends
from nightshift.credentials import client_key, ensure_client_key
from nightshift.services import (
    Service,
    ServiceStatus,
    StackError,
    check_ports,
    http_json,
    http_ok,
    launch,
    owned_pid,
    read_state,
    rotate_logs,
    service_status,
    stop,
    venv_bin,
    wait_healthy,
)

__all__ = ["ServiceStatus", "StackError", "down", "stack_env", "status", "up"]

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = REPO_ROOT / "infra" / "local"
PROFILE = "nightshift"
WORKER_NAME = "nightshift-worker"
# Prefect workers heartbeat every 30 s by default; three missed beats means the worker is gone.
HEARTBEAT_FRESH_S = 90.0
# Ray nests session_<date>_<pid>/sockets/plasma_store (~62 chars) under it; a socket path fits 107 bytes.
RAY_TEMP_DIR_MAX = 40
# Stores first (backend 'postgres' only), then servers, so the worker and `prefect deploy` find the API;
# `down` stops in reverse.
ORDER = ("postgres", "prefect-server", "mlflow", "ray-head", "prefect-worker", "dashboard")
LOOPBACK = LOOPBACK_HOSTS
MLFLOW_ADMIN = "admin"
# Loggers of ours whose records a flow run sends to Prefect (its log in the UI and `--watch`).
FLOW_LOGGERS = ("core", "gpt", "training", "serving", "release", "catalog", "flows", "nightshift")


def _prefect_url(cfg: Config) -> str:
    return f"http://{cfg.stack.host}:{cfg.stack.prefect_port}"


def _ray_temp_dir(cfg: Config, home: Path) -> str:
    if cfg.stack.ray_temp_dir:
        return cfg.stack.ray_temp_dir
    default = home / "ray"
    if len(str(default)) <= RAY_TEMP_DIR_MAX:
        return str(default)
    digest = hashlib.sha1(str(home).encode()).hexdigest()[:10]
    return f"/tmp/nightshift-ray-{digest}"


def stack_env(cfg: Config, *, repo: Path | None = None) -> dict[str, str]:
    """The environment a client (a shell, a flow run, a test) needs to use the local stack.

    Args:
        cfg: the config whose ``stack`` section says where the services listen.
        repo: the repository checkout flow runs execute from (``NIGHTSHIFT_REPO``, read by the pull
            step of ``prefect.yaml``); default: the checkout holding this file.

    Returns:
        ``PREFECT_API_URL``, ``MLFLOW_TRACKING_URI``, ``RAY_ADDRESS``, ``NIGHTSHIFT_HOME``,
        ``NIGHTSHIFT_CATALOG_URL``, ``NIGHTSHIFT_REPO``, ``NIGHTSHIFT_PREFECT_UI``, and the Ray
        head's auth token settings ``RAY_AUTH_MODE`` / ``RAY_AUTH_TOKEN_PATH``; with backend
        ``postgres`` also ``NIGHTSHIFT_ARTIFACTS`` (the S3 root) and the S3 endpoint (and, for the
        loopback S3 server, its credentials).
    """
    s = cfg.stack
    return {
        "PREFECT_API_URL": f"{_prefect_url(cfg)}/api",
        "MLFLOW_TRACKING_URI": f"http://{s.host}:{s.mlflow_port}",
        "RAY_ADDRESS": f"{s.host}:{s.ray_port}",
        "NIGHTSHIFT_HOME": str(nightshift_home()),
        "NIGHTSHIFT_CATALOG_URL": cfg.tracking.catalog_url,
        "NIGHTSHIFT_REPO": str((repo or REPO_ROOT).resolve()),
        "NIGHTSHIFT_PREFECT_UI": _prefect_url(cfg),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(_ray_token_path(nightshift_home())),
        # Cluster mode off, as the loopback head (ray-head.sh): on, a client would swap 127.0.0.1 away.
        **({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"} if s.host.startswith(LOOPBACK) else {}),
        # Credentials of the stack's own servers when stack.*_auth is on (the env file is 0600).
        **_auth_env(cfg, nightshift_home()),
        # The served model, for the official `openai` client (it reads these two variables).
        "OPENAI_BASE_URL": f"http://{cfg.serve.host}:{cfg.serve.port}{cfg.serve.route_prefix.rstrip('/')}/v1",
        **({"OPENAI_API_KEY": key} if (key := client_key(nightshift_home())) else {}),
        **backends.resolve(cfg, nightshift_home()).client_env(),
    }


def _ray_token_path(home: Path) -> Path:
    return home / "ray-auth-token"


def _secret_file(path: Path, make) -> None:
    """Write ``make()`` to ``path`` (0600) unless it exists: a credential made once, kept across `up`s."""
    if not path.is_file():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(make())


def _ensure_ray_token(home: Path) -> None:
    """Give the Ray head a token under ``$NIGHTSHIFT_HOME``, named in the env of the head and of every
    client: Ray 2.60 uses ``~/.ray/auth_token`` otherwise, which any local ``ray.init()`` may rewrite."""
    _secret_file(_ray_token_path(home), lambda: secrets.token_hex(32))


def _read(path: Path) -> str | None:
    return path.read_text().strip() if path.is_file() else None


def _auth_env(cfg: Config, home: Path) -> dict[str, str]:
    """What a client of the stack sends its MLflow and Prefect servers when their auth is on."""
    env = {}
    if cfg.stack.prefect_auth and (auth := _read(home / "prefect-auth-string")):
        env["PREFECT_API_AUTH_STRING"] = auth
    if cfg.stack.mlflow_auth and (password := _read(home / "mlflow-admin-password")):
        env.update(MLFLOW_TRACKING_USERNAME=MLFLOW_ADMIN, MLFLOW_TRACKING_PASSWORD=password)
    return env


def _basic(user_and_password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(user_and_password.encode()).decode()}


def _prefect_headers(cfg: Config, home: Path) -> dict[str, str]:
    auth = _auth_env(cfg, home).get("PREFECT_API_AUTH_STRING")
    return _basic(auth) if auth else {}


def _mlflow_headers(cfg: Config, home: Path) -> dict[str, str]:
    env = _auth_env(cfg, home)
    password = env.get("MLFLOW_TRACKING_PASSWORD")
    return _basic(f"{MLFLOW_ADMIN}:{password}") if password else {}


def _ensure_server_auth(cfg: Config, home: Path) -> None:
    """The credentials of stack.prefect_auth and stack.mlflow_auth, and MLflow's auth config file."""
    if cfg.stack.prefect_auth:
        _secret_file(home / "prefect-auth-string", lambda: f"nightshift:{secrets.token_urlsafe(24)}")
    if cfg.stack.mlflow_auth:
        _secret_file(home / "mlflow-admin-password", lambda: secrets.token_urlsafe(24))
        _secret_file(home / "mlflow-flask-secret", lambda: secrets.token_hex(32))  # its CSRF key
        (home / "mlflow").mkdir(exist_ok=True)
        ini = (
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = sqlite:///{home / 'mlflow' / 'basic_auth.db'}\n"
            f"admin_username = {MLFLOW_ADMIN}\nadmin_password = {_read(home / 'mlflow-admin-password')}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        _secret_file(home / "mlflow" / "basic_auth.ini", lambda: ini)


def _base_env(cfg: Config, home: Path) -> dict[str, str]:
    env = dict(os.environ)
    # Our own services must not inherit a client setting meant for another server or cluster.
    for key in ("PREFECT_API_URL", "PREFECT_PROFILE", "RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    for key in backends.INHERITED_SETTINGS:
        env.pop(key, None)
    if pgpass := backends.resolve(cfg, home).pgpass:
        env["PGPASSFILE"] = pgpass  # the database password, for every service; never in a URL
    env.update(
        NIGHTSHIFT_HOME=str(home),
        NIGHTSHIFT_HOST=cfg.stack.host,
        PATH=f"{venv_bin()}{os.pathsep}{env.get('PATH', '')}",
        DO_NOT_TRACK="1",
    )
    return env


def _worker_health(cfg: Config, home: Path) -> str | None:
    state = read_state(home, "prefect-worker") or {}
    started = float(state.get("started_at", 0.0))
    url = f"{_prefect_url(cfg)}/api/work_pools/{quote(cfg.stack.work_pool)}/workers/filter"
    try:
        code, workers = http_json(url, body={}, headers=_prefect_headers(cfg, home))
    except OSError as e:
        return f"POST {url}: {e}"
    if code != 200 or not isinstance(workers, list):
        return f"POST {url}: HTTP {code}"
    # A beat counts only if it is recent and from this process (not a previous worker of that name).
    since = max(started - 2.0, time.time() - HEARTBEAT_FRESH_S)
    for w in workers:
        beat = w.get("last_heartbeat_time")
        if w.get("name") == WORKER_NAME and beat and datetime.fromisoformat(beat).timestamp() >= since:
            return None
    return f"no recent heartbeat from worker {WORKER_NAME!r} on pool {cfg.stack.work_pool!r}"


def _services(cfg: Config, home: Path, repo: Path) -> dict[str, Service]:
    s = cfg.stack
    base = _base_env(cfg, home)
    dashboard = f"http://{s.host}:{s.ray_dashboard_port}"
    ray_env = {
        "RAY_PORT": str(s.ray_port),
        "RAY_DASHBOARD_PORT": str(s.ray_dashboard_port),
        "RAY_CLIENT_PORT": str(s.ray_client_port),
        "RAY_DASHBOARD_AGENT_PORT": str(s.ray_dashboard_agent_port),
        "RAY_METRICS_EXPORT_PORT": str(s.ray_metrics_port),
        "RAY_OBJECT_STORE_BYTES": str(s.ray_object_store_bytes),
        "RAY_TEMP_DIR": _ray_temp_dir(cfg, home),
        "RAY_NUM_CPUS": str(s.ray_num_cpus or ""),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(_ray_token_path(home)),
        # Ray rotates its own session logs; the same size and count as the services' logs.
        "RAY_ROTATION_MAX_BYTES": str(cfg.gc.log_max_bytes),
        "RAY_ROTATION_BACKUP_COUNT": str(cfg.gc.log_backups),
        **proxy_env(cfg.serve.header_timeout_s),  # the Serve proxy's header timeout
    }
    worker_env = {
        **stack_env(cfg, repo=repo),
        "NIGHTSHIFT_WORK_POOL": s.work_pool,
        "NIGHTSHIFT_WORKER_NAME": WORKER_NAME,
        # Our packages' log lines (placement plans, waits, progress) reach the flow run's log.
        "PREFECT_LOGGING_EXTRA_LOGGERS": ",".join(FLOW_LOGGERS),
    }
    stores = backends.resolve(cfg, home)
    return {
        **backends.services(cfg, home, base, SCRIPTS),
        "prefect-server": Service(
            name="prefect-server",
            script=SCRIPTS / "prefect-server.sh",
            env={
                **base,
                **stores.prefect_env(),
                **_prefect_retention(cfg),
                "PREFECT_PORT": str(s.prefect_port),
                **(
                    {"PREFECT_SERVER_API_AUTH_STRING": auth}
                    if (auth := _auth_env(cfg, home).get("PREFECT_API_AUTH_STRING"))
                    else {}
                ),
            },
            ports=(("prefect_port", s.prefect_port),),
            url=_prefect_url(cfg),
            health=http_ok(f"{_prefect_url(cfg)}/api/health", _prefect_headers(cfg, home)),
        ),
        "mlflow": Service(
            name="mlflow",
            script=SCRIPTS / "mlflow.sh",
            env={
                **base,
                **stores.mlflow_env(),
                "MLFLOW_PORT": str(s.mlflow_port),
                **(
                    {
                        "MLFLOW_AUTH_CONFIG_PATH": str(home / "mlflow" / "basic_auth.ini"),
                        "MLFLOW_FLASK_SERVER_SECRET_KEY": _read(home / "mlflow-flask-secret") or "",
                    }
                    if s.mlflow_auth
                    else {}
                ),
            },
            ports=(("mlflow_port", s.mlflow_port),),
            url=f"http://{s.host}:{s.mlflow_port}",
            health=http_ok(f"http://{s.host}:{s.mlflow_port}/health", _mlflow_headers(cfg, home)),
        ),
        "ray-head": Service(
            name="ray-head",
            script=SCRIPTS / "ray-head.sh",
            env={**base, **ray_env},
            ports=(
                ("ray_port", s.ray_port),
                ("ray_dashboard_port", s.ray_dashboard_port),
                ("ray_client_port", s.ray_client_port),
                ("ray_dashboard_agent_port", s.ray_dashboard_agent_port),
                ("ray_metrics_port", s.ray_metrics_port),
            ),
            url=dashboard,
            # The dashboard answers this only once it reaches the GCS, so it covers both.
            health=http_ok(f"{dashboard}/api/gcs_healthz"),
        ),
        "prefect-worker": Service(
            name="prefect-worker",
            script=SCRIPTS / "prefect-worker.sh",
            env={**base, **worker_env},
            ports=(),
            url=f"{_prefect_url(cfg)}/work-pools/work-pool/{quote(s.work_pool)}",
            health=lambda: _worker_health(cfg, home),
        ),
        "dashboard": Service(
            name="dashboard",
            script=SCRIPTS / "dashboard.sh",
            # Always on loopback: off it, the dashboard is reached through the authenticating proxy
            # that sets stack.dashboard_identity_header, so nobody else can set that header.
            env={**base, **_dashboard_env(cfg, repo), "DASHBOARD_HOST": "127.0.0.1"},
            ports=(("dashboard_port", s.dashboard_port),),
            url=f"http://127.0.0.1:{s.dashboard_port}",
            health=http_ok(f"http://127.0.0.1:{s.dashboard_port}/_stcore/health"),
        ),
    }


def _prefect_retention(cfg: Config) -> dict[str, str]:
    """Prefect's own database vacuum: flow runs (with their logs) and events older than gc.prefect_days."""
    seconds = f"{cfg.gc.prefect_days * 86400:.0f}"
    return {
        "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "events,flow_runs",
        "PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD": seconds,
        "PREFECT_SERVER_EVENTS_RETENTION_PERIOD": f"PT{seconds}S",  # a timedelta: ISO 8601 here
    }


def _dashboard_env(cfg: Config, repo: Path) -> dict[str, str]:
    env = stack_env(cfg, repo=repo)
    out = {
        **env,
        "DASHBOARD_PORT": str(cfg.stack.dashboard_port),
        "NIGHTSHIFT_CONFIG": cfg.preset,
        "NIGHTSHIFT_SERVE_URL": env["OPENAI_BASE_URL"],
        "NIGHTSHIFT_REGISTERED_MODEL": cfg.serve.registered_model,
    }
    if "OPENAI_API_KEY" in env:
        out["NIGHTSHIFT_API_KEY"] = env["OPENAI_API_KEY"]
    if cfg.stack.dashboard_identity_header:
        out["NIGHTSHIFT_DASHBOARD_IDENTITY_HEADER"] = cfg.stack.dashboard_identity_header
    return out


def _check_recorded_ports(home: Path, svc: Service) -> None:
    recorded = (read_state(home, svc.name) or {}).get("ports") or {}
    wanted = dict(svc.ports)
    if recorded and recorded != wanted:
        raise StackError(
            f"{svc.name} is running with ports {recorded}, but the config asks for {wanted}; "
            "run `nightshift down` first to move it"
        )


def _prefect(args: list[str], cfg: Config, home: Path, *, cwd: Path, timeout: float) -> str:
    """Run a ``prefect`` CLI command against our server; return its output or raise StackError."""
    env = _base_env(cfg, home)
    env.update(PREFECT_API_URL=f"{_prefect_url(cfg)}/api", PREFECT_HOME=str(home / "prefect"))
    env.update(_auth_env(cfg, home))
    cmd = [str(venv_bin() / "prefect"), "--no-prompt", *args]
    try:
        done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise StackError(f"`{shlex.join(cmd[1:])}` did not finish in {timeout:.0f}s") from e
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise StackError(f"`{shlex.join(cmd[1:])}` failed (exit {done.returncode}):\n{output[-4000:]}")
    return output


def _ensure_work_pool(cfg: Config, home: Path) -> None:
    """Create the process work pool unless it exists; never overwrite a user's edits to it."""
    pool = cfg.stack.work_pool
    code, body = http_json(
        f"{_prefect_url(cfg)}/api/work_pools/{quote(pool)}", headers=_prefect_headers(cfg, home)
    )
    if code == 200:
        if body.get("type") != "process":
            raise StackError(
                f"work pool {pool!r} exists with type {body.get('type')!r}, not 'process'; "
                "delete it or pick another name with --stack.work_pool NAME"
            )
        return
    # The CLI (not the REST API) fills in the process worker's default base job template.
    _prefect(["work-pool", "create", pool, "--type", "process"], cfg, home, cwd=home, timeout=120)
    log.info("created work pool %s", pool)


def _deploy(cfg: Config, home: Path, repo: Path) -> None:
    if not (repo / "prefect.yaml").is_file():
        raise StackError(f"no prefect.yaml in {repo}; pass the repository root as `repo`")
    args = ["deploy", "--all"]
    if cfg.stack.work_pool != "nightshift-local":
        # prefect.yaml names the default pool; a renamed pool is passed to every deployment instead.
        args += ["--pool", cfg.stack.work_pool]
    output = _prefect(args, cfg, home, cwd=repo, timeout=300)
    (home / "logs" / "deploy.log").write_text(output)
    log.info("applied %s", repo / "prefect.yaml")


def _write_env_file(cfg: Config, home: Path, repo: Path) -> Path:
    lines = [f"export {k}={shlex.quote(v)}" for k, v in stack_env(cfg, repo=repo).items()]
    path = home / "env"
    header = "# Written by `nightshift up`: source it to use the local stack (it holds an API key: 0600).\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(header + "\n".join(lines) + "\n")
    os.chmod(path, 0o600)
    return path


# --- the user's Prefect profile ---------------------------------------------------------------------


def _profiles_path() -> Path:
    if path := os.environ.get("PREFECT_PROFILES_PATH"):
        return Path(path).expanduser()
    return Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser() / "profiles.toml"


def _activate_profile(cfg: Config, home: Path) -> None:
    """Point a Prefect profile named ``nightshift`` at our server and make it the active one."""
    import toml  # a Prefect dependency; only needed to write the file back

    path = _profiles_path()
    data = tomllib.loads(path.read_text()) if path.is_file() else {}
    previous = data.get("active")
    if previous != PROFILE:
        # Remember what was active so `down` can put it back.
        (home / "stack" / "profile.json").write_text(json.dumps({"path": str(path), "previous": previous}))
    data.setdefault("profiles", {}).setdefault(PROFILE, {})["PREFECT_API_URL"] = f"{_prefect_url(cfg)}/api"
    data["active"] = PROFILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(toml.dumps(data))
    log.info("activated Prefect profile %r in %s", PROFILE, path)


def _restore_profile(home: Path) -> None:
    record = home / "stack" / "profile.json"
    if not record.is_file():
        return
    saved = json.loads(record.read_text())
    path = Path(saved["path"])
    if path.is_file():
        data = tomllib.loads(path.read_text())
        # Only undo our own switch; if the user has moved to another profile since, leave it.
        if data.get("active") == PROFILE:
            if saved.get("previous"):
                data["active"] = saved["previous"]
            else:
                data.pop("active", None)
            path.write_text(toml.dumps(data))
    record.unlink()


# --- public API --------------------------------------------------------------------------------------


def up(cfg: Config, *, deploy: bool = True, repo: Path | None = None) -> list[ServiceStatus]:
    """Start (or keep) the local stack, wait until every service is healthy, apply ``prefect.yaml``.

    Args:
        cfg: the config; ``cfg.stack`` has the host, ports, work pool and timeouts.
        deploy: run ``prefect deploy --all`` from ``repo`` once the servers are healthy.
        repo: the repository root holding ``prefect.yaml``; default: the checkout of this file.

    Returns:
        The status of every service.

    Raises:
        StackError: a port is taken by another process, a service failed its health check (the
            message shows its log tail), or ``prefect deploy`` failed.
    """
    home = nightshift_home()
    repo = (repo or REPO_ROOT).resolve()
    for sub in ("stack", "logs"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    # $NIGHTSHIFT_HOME holds keys and passwords: only its owner reads it.
    os.chmod(home, 0o700)
    rotate_logs(home, cfg.gc.log_max_bytes, cfg.gc.log_backups)
    _ensure_ray_token(home)
    _ensure_server_auth(cfg, home)
    if backends.local_postgres(cfg):
        backends.ensure_password(home)
    if cfg.stack.backend == "postgres":
        # This process connects too (databases, the local key); its URLs hold no password either.
        os.environ["PGPASSFILE"] = str(backends.write_pgpass(cfg, home))
    services = _services(cfg, home, repo)
    t0 = time.monotonic()

    def start(names: tuple[str, ...]) -> set[str]:
        names = tuple(n for n in names if n in services)
        pids: dict[str, int] = {}
        to_start = []
        for name in names:
            svc = services[name]
            if (pid := owned_pid(home, name)) is not None:
                _check_recorded_ports(home, svc)
                pids[name] = pid
            else:
                to_start.append(svc)
        # Check every port before launching anything, so a conflict leaves nothing half-started.
        check_ports(home, to_start, cfg.stack.host)
        for svc in to_start:
            stop(home, svc.name)  # clears a stale pid file; a dead pid is never signalled
            pids[svc.name] = launch(home, svc)
        for name in names:
            wait_healthy(home, services[name], pids[name], cfg.stack.start_timeout_s)
        return {svc.name for svc in to_start}

    # Backend 'postgres': the database server, before anything that uses it.
    start(("postgres",))
    backends.prepare(cfg, home)
    # The key lives in the catalog, which (backend 'postgres') exists only now; the worker's and the
    # dashboard's environment carry it.
    ensure_client_key(cfg, home, backends.resolve(cfg, home).catalog_url or cfg.tracking.catalog_url)
    services.update(_services(cfg, home, repo))
    # The three servers start side by side; they are independent and each takes seconds.
    start(("prefect-server", "mlflow", "ray-head"))
    _ensure_work_pool(cfg, home)
    start(("prefect-worker",))
    start(("dashboard",))
    log.info("stack healthy after %.1fs", time.monotonic() - t0)
    _write_env_file(cfg, home, repo)
    if cfg.stack.set_profile:
        _activate_profile(cfg, home)
    if deploy:
        _deploy(cfg, home, repo)
    return status(cfg)


def down(cfg: Config) -> list[ServiceStatus]:
    """Stop the services ``up`` started (by recorded pid and start time only) and remove their pid files.

    Processes this stack did not start, such as a Ray or Prefect the user runs separately, are never
    signalled. The Prefect profile ``up`` activated is switched back to the previous one.

    Returns:
        The status of every service afterwards (all stopped).
    """
    home = nightshift_home()
    for name in reversed(ORDER):
        stop(home, name)
    _restore_profile(home)
    return status(cfg)


def status(cfg: Config) -> list[ServiceStatus]:
    """Report each service: running (our pid is alive), healthy (its check passes), url, pid, log."""
    home = nightshift_home()
    services = _services(cfg, home, REPO_ROOT)
    return [service_status(home, services[name]) for name in ORDER if name in services]
