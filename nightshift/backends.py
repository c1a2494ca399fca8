"""Where the local stack keeps its state: ``stack.backend`` ``embedded`` (default) or ``postgres``.

``embedded``: SQLite for Prefect, MLflow and the catalog and the local disk for artifacts, all under
``$NIGHTSHIFT_HOME`` (the scripts' defaults; nothing here changes them).

``postgres``: Prefect, MLflow and the catalog each get a database (``prefect``, ``mlflow``,
``catalog``) on one PostgreSQL server, and artifacts go to S3-compatible storage:
``s3://<stack.s3_bucket>/artifacts`` for the stages' artifacts and ``s3://<stack.s3_bucket>/mlflow``
for MLflow's (the MLflow server proxies them, so its clients need no S3 access). The server and the
store are either started by ``nightshift up`` on loopback (``infra/local/postgres.sh``, a Postgres 15
cluster under ``stack.postgres_dir`` with a generated password; ``infra/local/s3.sh``, an S3 server)
or external ones named by ``stack.postgres_url`` and ``stack.s3_endpoint`` (a real deployment; S3
credentials then come from the usual AWS variables).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from nightshift.services import Service, StackError, http_json, http_ok
from training.config import Config

DATABASES = ("prefect", "mlflow", "catalog")
# The loopback S3 server accepts any key; these only have to be present and consistent.
LOCAL_S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "nightshift",
    "AWS_SECRET_ACCESS_KEY": "nightshift-local-s3",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# Server settings our own services must not inherit from the shell that runs `nightshift up`.
INHERITED_SETTINGS = (
    "PREFECT_SERVER_DATABASE_CONNECTION_URL",
    "MLFLOW_BACKEND_STORE_URI",
    "MLFLOW_ARTIFACTS_DESTINATION",
    "MLFLOW_DEFAULT_ARTIFACT_ROOT",
)


@dataclass(frozen=True)
class Backends:
    """The URLs the services and clients use; ``None`` means the embedded default of the script."""

    prefect_db_url: str | None = None
    mlflow_store_uri: str | None = None
    mlflow_artifacts: str | None = None
    catalog_url: str | None = None
    artifact_root: str | None = None
    s3_env: dict[str, str] = field(default_factory=dict)

    def prefect_env(self) -> dict[str, str]:
        """For ``prefect-server.sh``: its database (unset: the script's SQLite)."""
        return {"PREFECT_SERVER_DATABASE_CONNECTION_URL": self.prefect_db_url} if self.prefect_db_url else {}

    def mlflow_env(self) -> dict[str, str]:
        """For ``mlflow.sh``: backend store and artifact destination (unset: SQLite and a local dir)."""
        env = dict(self.s3_env)
        if self.mlflow_store_uri:
            env["MLFLOW_BACKEND_STORE_URI"] = self.mlflow_store_uri
        if self.mlflow_artifacts:
            env["MLFLOW_ARTIFACTS_DESTINATION"] = self.mlflow_artifacts
        return env

    def client_env(self) -> dict[str, str]:
        """What a client (worker, flow run, dashboard, shell) needs beyond the embedded defaults."""
        env = dict(self.s3_env)
        if self.prefect_db_url:
            # A shell that sourced the env file then means this stack in `nightshift status | down`.
            env["NIGHTSHIFT_STACK_BACKEND"] = "postgres"
        if self.catalog_url:
            env["NIGHTSHIFT_CATALOG_URL"] = self.catalog_url
        if self.artifact_root:
            env["NIGHTSHIFT_ARTIFACTS"] = self.artifact_root
        return env


def password_path(home: Path) -> Path:
    return home / "postgres-password"


def ensure_password(home: Path) -> None:
    """The local cluster's superuser password, made once (0600) like the Ray token."""
    path = password_path(home)
    if not path.is_file():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(24))


def local_postgres(cfg: Config) -> bool:
    return cfg.stack.backend == "postgres" and not cfg.stack.postgres_url


def local_s3(cfg: Config) -> bool:
    return cfg.stack.backend == "postgres" and not cfg.stack.s3_endpoint


def server_url(cfg: Config, home: Path) -> str:
    """The Postgres server as ``postgresql://user:password@host:port/<maintenance db>``."""
    if cfg.stack.postgres_url:
        return cfg.stack.postgres_url
    path = password_path(home)
    password = path.read_text().strip() if path.is_file() else ""
    auth = f"postgres:{password}" if password else "postgres"
    return f"postgresql://{auth}@{cfg.stack.host}:{cfg.stack.postgres_port}/postgres"


def database_url(server: str, driver: str, database: str) -> str:
    """``server`` with another SQLAlchemy driver (``postgresql+asyncpg``) and database."""
    from sqlalchemy import make_url

    url = make_url(server).set(drivername=driver, database=database)
    return url.render_as_string(hide_password=False)


def s3_endpoint(cfg: Config) -> str:
    return cfg.stack.s3_endpoint or f"http://{cfg.stack.host}:{cfg.stack.s3_port}"


def resolve(cfg: Config, home: Path) -> Backends:
    """The URLs of every store for ``cfg.stack.backend``."""
    if cfg.stack.backend != "postgres":
        return Backends()
    server = server_url(cfg, home)
    bucket = cfg.stack.s3_bucket
    endpoint = s3_endpoint(cfg)
    s3_env = {"AWS_ENDPOINT_URL": endpoint, "MLFLOW_S3_ENDPOINT_URL": endpoint}
    if local_s3(cfg):
        s3_env.update(LOCAL_S3_CREDENTIALS)
    return Backends(
        prefect_db_url=database_url(server, "postgresql+asyncpg", "prefect"),
        mlflow_store_uri=database_url(server, "postgresql+psycopg", "mlflow"),
        mlflow_artifacts=f"s3://{bucket}/mlflow",
        catalog_url=database_url(server, "postgresql+psycopg", "catalog"),
        artifact_root=f"s3://{bucket}/artifacts",
        s3_env=s3_env,
    )


def services(cfg: Config, home: Path, base_env: dict[str, str], scripts: Path) -> dict[str, Service]:
    """The local Postgres and S3 services this config needs (none for ``embedded`` or external ones)."""
    s = cfg.stack
    out: dict[str, Service] = {}
    if local_postgres(cfg):
        env = {
            **base_env,
            "POSTGRES_PORT": str(s.postgres_port),
            "POSTGRES_DIR": s.postgres_dir or str(home / "postgres"),
            "POSTGRES_PASSWORD_FILE": str(password_path(home)),
        }
        out["postgres"] = Service(
            name="postgres",
            script=scripts / "postgres.sh",
            env=env,
            ports=(("postgres_port", s.postgres_port),),
            url=f"postgresql://{s.host}:{s.postgres_port}",
            health=lambda: _postgres_health(server_url(cfg, home)),
        )
    if local_s3(cfg):
        endpoint = s3_endpoint(cfg)
        out["s3"] = Service(
            name="s3",
            script=scripts / "s3.sh",
            env={**base_env, "S3_PORT": str(s.s3_port), "S3_RECORDING": str(home / "s3" / "recording.jsonl")},
            ports=(("s3_port", s.s3_port),),
            url=endpoint,
            health=http_ok(f"{endpoint}/moto-api/"),
        )
    return out


def _maintenance_url(server: str) -> str:
    """A libpq URL of the server's database to connect to for admin work (default ``postgres``)."""
    from sqlalchemy import make_url

    return database_url(server, "postgresql", make_url(server).database or "postgres")


def _postgres_health(url: str) -> str | None:
    import psycopg

    try:
        with psycopg.connect(_maintenance_url(url), connect_timeout=2) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as e:
        return f"postgres: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
    return None


def prepare(cfg: Config, home: Path, *, s3_started: bool) -> None:
    """After Postgres and S3 answer: create the databases and the bucket; restore the loopback store.

    Args:
        s3_started: the loopback S3 server was just (re)started, so its recording is replayed.

    Raises:
        StackError: a database or the bucket cannot be created or reached; the message says how to fix it.
    """
    if cfg.stack.backend != "postgres":
        return
    ensure_databases(server_url(cfg, home), DATABASES)
    if local_s3(cfg) and s3_started:
        _replay(s3_endpoint(cfg), home / "s3" / "recording.jsonl")
    ensure_bucket(cfg)


def ensure_databases(server: str, names: tuple[str, ...]) -> None:
    """Create each database of ``names`` that the server lacks."""
    import psycopg

    try:
        with psycopg.connect(_maintenance_url(server), autocommit=True, connect_timeout=10) as conn:
            have = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
            for name in names:
                if name not in have:
                    conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as e:
        raise StackError(
            f"cannot create the databases {', '.join(names)} on the Postgres server ({e}); create them "
            "yourself or give stack.postgres_url a user allowed to (CREATEDB)"
        ) from e


def _replay(endpoint: str, recording: Path) -> None:
    if not recording.is_file() or recording.stat().st_size == 0:
        return
    code, body = http_json(f"{endpoint}/moto-api/recorder/replay-recording", body={}, timeout=900)
    if code != 200:
        raise StackError(f"the S3 server could not replay {recording} (HTTP {code}): {str(body)[:500]}")


def ensure_bucket(cfg: Config) -> None:
    """Create the bucket on the loopback server; on an external endpoint, check that it exists."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket = cfg.stack.s3_bucket
    endpoint = s3_endpoint(cfg)
    creds = LOCAL_S3_CREDENTIALS if local_s3(cfg) else {}
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=creds.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=creds.get("AWS_SECRET_ACCESS_KEY"),
        region_name=creds.get("AWS_DEFAULT_REGION"),
    )
    try:
        if local_s3(cfg):
            try:
                client.create_bucket(Bucket=bucket)
            except client.exceptions.BucketAlreadyOwnedByYou:
                pass
        else:
            client.head_bucket(Bucket=bucket)
    except (BotoCoreError, ClientError) as e:
        raise StackError(
            f"S3 bucket {bucket!r} at {endpoint} is not usable ({e}); create it, or pick another with "
            "--stack.s3_bucket NAME (credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
        ) from e
