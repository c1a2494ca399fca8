"""Where the local stack keeps its state: ``stack.backend`` ``embedded`` (default) or ``postgres``.

``embedded``: SQLite for Prefect, MLflow and the catalog and the local disk for artifacts, all under
``$NIGHTSHIFT_HOME`` (the scripts' defaults; nothing here changes them).

``postgres``: Prefect, MLflow and the catalog each get a database (``prefect``, ``mlflow``,
``catalog``) on one PostgreSQL server: started by ``nightshift up`` on loopback
(``infra/local/postgres.sh``, a Postgres 15 cluster under ``stack.postgres_dir`` with a generated
password) or an external one named by ``stack.postgres_url``. Artifacts stay on the local disk under
``$NIGHTSHIFT_HOME`` unless ``stack.s3_endpoint`` names a real S3-compatible store: then they go to
``s3://<stack.s3_bucket>/artifacts`` and MLflow's to ``s3://<stack.s3_bucket>/mlflow`` (the MLflow
server proxies them, so its clients need no S3 access; credentials from the usual AWS variables).

No URL carries the database password. It is written once to ``$NIGHTSHIFT_HOME/pgpass`` (0600, libpq's
password file format) and every process of the stack gets ``PGPASSFILE`` pointing at it, so the
URLs that reach MLflow params, the catalog, Prefect, Serve's config and the logs hold no secret.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path

from core.config import Config
from nightshift.services import Service, StackError

# SQLAlchemy, psycopg (the Postgres backend only), boto3 and botocore are imported inside the
# functions that use them, not here: each takes a second or more to import, and not every user
# of this module needs them.

DATABASES = ("prefect", "mlflow", "catalog")
# Server settings our own services must not inherit from the shell that runs `nightshift up`.
INHERITED_SETTINGS = (
    "PGPASSFILE",
    "PGPASSWORD",
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
    pgpass: str | None = None  # libpq's password file, for every process that connects

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
        if self.pgpass:
            env["PGPASSFILE"] = self.pgpass
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


def pgpass_path(home: Path) -> Path:
    return home / "pgpass"


def ensure_password(home: Path) -> None:
    """The local cluster's superuser password, made once (0600) like the Ray token."""
    path = password_path(home)
    if not path.is_file():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(24))


def local_postgres(cfg: Config) -> bool:
    return cfg.stack.backend == "postgres" and not cfg.stack.postgres_url


def external_s3(cfg: Config) -> bool:
    return cfg.stack.backend == "postgres" and bool(cfg.stack.s3_endpoint)


def _pgpass_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def write_pgpass(cfg: Config, home: Path) -> Path:
    """``$NIGHTSHIFT_HOME/pgpass`` (0600): the server's password for libpq and asyncpg, so no URL holds it."""
    from sqlalchemy import make_url

    if cfg.stack.postgres_url:
        url = make_url(cfg.stack.postgres_url)
        host, port, user, password = url.host or "localhost", url.port or 5432, url.username, url.password
    else:
        path = password_path(home)
        host, port, user = cfg.stack.host, cfg.stack.postgres_port, "postgres"
        password = path.read_text().strip() if path.is_file() else None
    out = pgpass_path(home)
    line = ":".join(_pgpass_field(str(x)) for x in (host, port, "*", user or "postgres", password or ""))
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(line + "\n" if password else "")
    os.chmod(out, 0o600)
    return out


def server_url(cfg: Config, home: Path) -> str:
    """The Postgres server as ``postgresql://user@host:port/<maintenance db>``: never with the password,
    which libpq reads from ``PGPASSFILE`` (:func:`write_pgpass`)."""
    from sqlalchemy import URL, make_url

    if cfg.stack.postgres_url:
        u = make_url(cfg.stack.postgres_url)
        bare = URL.create(u.drivername, u.username, None, u.host, u.port, u.database, u.query)
        return bare.render_as_string(hide_password=False)
    return f"postgresql://postgres@{cfg.stack.host}:{cfg.stack.postgres_port}/postgres"


def database_url(server: str, driver: str, database: str) -> str:
    """``server`` with another SQLAlchemy driver (``postgresql+asyncpg``) and database."""
    from sqlalchemy import make_url

    url = make_url(server).set(drivername=driver, database=database)
    return url.render_as_string(hide_password=False)


def resolve(cfg: Config, home: Path) -> Backends:
    """The URLs of every store for ``cfg.stack.backend`` (none of them with a password)."""
    if cfg.stack.backend != "postgres":
        return Backends()
    server = server_url(cfg, home)
    stores = Backends(
        prefect_db_url=database_url(server, "postgresql+asyncpg", "prefect"),
        mlflow_store_uri=database_url(server, "postgresql+psycopg", "mlflow"),
        catalog_url=database_url(server, "postgresql+psycopg", "catalog"),
        pgpass=str(pgpass_path(home)),
    )
    if not external_s3(cfg):
        return stores  # artifacts and MLflow's files on the local disk (the scripts' defaults)
    bucket, endpoint = cfg.stack.s3_bucket, str(cfg.stack.s3_endpoint)
    return replace(
        stores,
        mlflow_artifacts=f"s3://{bucket}/mlflow",
        artifact_root=f"s3://{bucket}/artifacts",
        s3_env={"AWS_ENDPOINT_URL": endpoint, "MLFLOW_S3_ENDPOINT_URL": endpoint},
    )


def services(cfg: Config, home: Path, base_env: dict[str, str], scripts: Path) -> dict[str, Service]:
    """The local Postgres this config needs (none for ``embedded`` or an external server)."""
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


def prepare(cfg: Config, home: Path) -> None:
    """After Postgres answers: create the databases; with an external S3, check its bucket.

    Raises:
        StackError: a database or the bucket cannot be created or reached; the message says how to fix it.
    """
    if cfg.stack.backend != "postgres":
        return
    ensure_databases(server_url(cfg, home), DATABASES)
    if external_s3(cfg):
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


def ensure_bucket(cfg: Config) -> None:
    """Check that the external store's bucket exists (credentials from the usual AWS variables)."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket = cfg.stack.s3_bucket
    endpoint = str(cfg.stack.s3_endpoint)
    client = boto3.client("s3", endpoint_url=endpoint)
    try:
        client.head_bucket(Bucket=bucket)
    except (BotoCoreError, ClientError) as e:
        raise StackError(
            f"S3 bucket {bucket!r} at {endpoint} is not usable ({e}); create it, or pick another with "
            "--stack.s3_bucket NAME (credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
        ) from e
