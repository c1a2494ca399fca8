"""Fixtures shared by the whole suite: real servers on loopback, fresh databases.

* ``free_port()`` — a free TCP port on 127.0.0.1 (plain function; import it from ``tests.conftest``).
* ``mlflow_server`` (session) — a real ``mlflow server`` with a SQLite backend and proxied
  artifacts in a temp dir; yields its ``http://127.0.0.1:<port>`` URI. ``mlflow_stores`` gives its
  backend store URI and artifact destination.
* ``postgres_url`` (session) — a real PostgreSQL 15 from Debian's binaries; yields
  ``postgresql+psycopg://postgres@127.0.0.1:<port>/nightshift``. Mark tests ``@pytest.mark.postgres``.
* ``postgres_db`` — a fresh, empty database on that server for one test.
* ``catalog_url`` — a fresh SQLite catalog URL under ``tmp_path`` (not migrated).
* ``any_db_url`` — parametrized: the test runs on a fresh SQLite URL and on a fresh Postgres DB.
* ``s3_server`` (session) — an S3-compatible test double (moto's server) on loopback with one
  bucket; sets ``AWS_*`` credentials, ``AWS_ENDPOINT_URL`` and ``MLFLOW_S3_ENDPOINT_URL`` for the session.
* ``artifact_cache`` — points the cache of remote artifacts (``NIGHTSHIFT_ARTIFACT_CACHE``) at a tmp dir.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SERVER_START_TIMEOUT_S = 90


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _stop_group(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    # The server forks workers (and MLflow a job runner): signal the whole process group.
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


# The stores of each running MLflow server of the session, by URI (see ``mlflow_stores``).
_MLFLOW_STORES: dict[str, tuple[str, str]] = {}


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server on loopback; yields its URI."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log_path = root / "server.log"
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    cmd = [
        str(mlflow_bin) if mlflow_bin.exists() else "mlflow",
        "server",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
        "--artifacts-destination", str(root / "artifacts"),
    ]  # fmt: skip
    # No background job runner (huey consumers): tests do not use MLflow server jobs, and it halves startup.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env, start_new_session=True
        )
    uri = f"http://127.0.0.1:{port}"
    _MLFLOW_STORES[uri] = (f"sqlite:///{root}/mlflow.db", str(root / "artifacts"))
    try:
        _wait_http(f"{uri}/health", proc, log_path, "mlflow server")
        yield uri
    finally:
        _stop_group(proc)


@pytest.fixture(scope="session")
def mlflow_stores(mlflow_server: str) -> tuple[str, str]:
    """The session MLflow server's backend store URI and artifact destination (for ``mlflow gc``)."""
    return _MLFLOW_STORES[mlflow_server]


def _wait_http(url: str, proc: subprocess.Popen[bytes], log_path: Path, what: str) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}; log {log_path}:\n{_tail(log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    _stop_group(proc)
    pytest.fail(
        f"{what} not healthy at {url} after {SERVER_START_TIMEOUT_S}s; log {log_path}:\n{_tail(log_path)}"
    )


def _as_postgres(cmd: list[str]) -> list[str]:
    # Postgres refuses to run as root; as a normal user we already are an acceptable owner.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL 15 on loopback (trust auth); yields a SQLAlchemy URL to database ``nightshift``."""
    if not (PG_BIN / "initdb").exists():
        pytest.fail(
            f"PostgreSQL 15 binaries not found under {PG_BIN}; `.ci/run` installs Debian's `postgresql` "
            "package (apt-get install postgresql)."
        )
    # Not under pytest's tmp dir: that is root-only (0700) and the postgres user must reach the data dir.
    root = Path(tempfile.mkdtemp(prefix="nightshift-pg-"))
    data, sock, log_path = root / "data", root / "sock", root / "postgres.log"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(sock, "postgres", "postgres")
    port = free_port()
    run = subprocess.run
    out = run(
        _as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                      "-E", "UTF8", "--no-sync", "--locale=C"]),
        capture_output=True, text=True,
    )  # fmt: skip
    if out.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"initdb failed:\n{out.stdout}\n{out.stderr}")
    # Durability off: a throwaway test cluster, and fsync dominates DDL-heavy migration tests.
    opts = (
        f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={sock} "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    )
    pg_ctl = str(PG_BIN / "pg_ctl")
    out = run(
        _as_postgres([pg_ctl, "start", "-D", str(data), "-l", str(log_path), "-w", "-t", "60", "-o", opts]),
        capture_output=True, text=True,
    )  # fmt: skip
    if out.returncode != 0:
        log = _tail(log_path)
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"pg_ctl start failed:\n{out.stdout}\n{out.stderr}\n{log}")
    try:
        _create_database(port, "nightshift")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/nightshift"
    finally:
        try:
            from catalog.db import dispose_engines

            dispose_engines()
        finally:
            run(_as_postgres([pg_ctl, "stop", "-D", str(data), "-m", "fast", "-w"]), capture_output=True)
            shutil.rmtree(root, ignore_errors=True)


def _create_database(port: int, name: str) -> None:
    import psycopg

    with psycopg.connect(
        host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True
    ) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')


@pytest.fixture
def postgres_db(postgres_url: str) -> str:
    """A fresh, empty database on the session's Postgres server, for one test; yields its URL."""
    from sqlalchemy import make_url

    url = make_url(postgres_url)
    name = f"t_{uuid.uuid4().hex[:12]}"
    assert url.port is not None
    _create_database(url.port, name)
    return url.set(database=name).render_as_string(hide_password=False)


@pytest.fixture
def catalog_url(tmp_path: Path) -> str:
    """A fresh SQLite catalog URL in this test's tmp dir (call ``catalog.db.migrate`` to create tables)."""
    return f"sqlite:///{tmp_path}/catalog.db"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_db_url(request: pytest.FixtureRequest) -> str:
    """Run a test twice: on a fresh SQLite catalog and on a fresh Postgres database (not migrated)."""
    if request.param == "sqlite":
        return request.getfixturevalue("catalog_url")
    return request.getfixturevalue("postgres_db")


# The Serve proxy's header timeout (serving/proxy_guard.py) in this session's Ray, shorter than the
# default so that the slow-header test is quick. Ray's processes take it from the environment of
# whichever test starts Ray first, so it is set before any can.
SESSION_HEADER_TIMEOUT_S = 3.0
os.environ.setdefault("NIGHTSHIFT_SERVE_HEADER_TIMEOUT_S", f"{SESSION_HEADER_TIMEOUT_S:g}")


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """One small local Ray (2 CPUs) shared by every test of the session that needs Ray."""
    import ray

    from core.config import RayConfig
    from core.ray_setup import init_ray

    started = not ray.is_initialized()
    init_ray(RayConfig(address="local", num_cpus=2))
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def serve_port(ray_local) -> Iterator[int]:
    """Ray Serve's HTTP proxy on a free loopback port (one per session: Serve has one proxy)."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield port
    serve.shutdown()


@pytest.fixture(autouse=True, scope="module")
def _delete_serve_apps_of_the_module() -> Iterator[None]:
    """Serve apps a test module deployed are deleted after it, so idle replicas (a model and an
    engine each) do not pile up over the session."""
    yield
    import ray

    if not ray.is_initialized():
        return
    from ray import serve

    try:
        apps = list(serve.status().applications)
    except Exception:  # Serve was never started in this session
        return
    for name in apps:
        try:
            serve.delete(name)
        except Exception:  # already gone
            pass


REPO_ROOT = Path(__file__).resolve().parent.parent
S3_TEST_BUCKET = "nightshift-test"


class S3Server(NamedTuple):
    """A running S3-compatible server: its endpoint and the bucket made for the session."""

    endpoint: str
    bucket: str

    def url(self, *parts: str) -> str:
        """``s3://<bucket>/<parts...>``."""
        return "/".join([f"s3://{self.bucket}", *(p.strip("/") for p in parts)])


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """An S3-compatible server on loopback (moto's: a test double, never the product's store) with one bucket.

    The AWS variables it sets (credentials, region, ``AWS_ENDPOINT_URL``, ``MLFLOW_S3_ENDPOINT_URL``)
    stay for the session, so s3fs, boto3 and MLflow servers started afterwards all reach it.
    """
    import boto3

    root = tmp_path_factory.mktemp("s3")
    port = free_port()
    log_path = root / "s3.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
            stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True,
        )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    settings = {
        "AWS_ACCESS_KEY_ID": "nightshift-test",
        "AWS_SECRET_ACCESS_KEY": "nightshift-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "MLFLOW_S3_ENDPOINT_URL": endpoint,
    }
    try:
        with pytest.MonkeyPatch.context() as mp:
            _wait_http(f"{endpoint}/moto-api/", proc, log_path, "s3 server")
            for k, v in settings.items():
                mp.setenv(k, v)
            boto3.client("s3").create_bucket(Bucket=S3_TEST_BUCKET)
            yield S3Server(endpoint=endpoint, bucket=S3_TEST_BUCKET)
    finally:
        _stop_group(proc)


@pytest.fixture
def artifact_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty cache for remote artifacts (as on a machine that never fetched them)."""
    cache = tmp_path / "artifact-cache"
    monkeypatch.setenv("NIGHTSHIFT_ARTIFACT_CACHE", str(cache))
    return cache
