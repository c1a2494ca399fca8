"""The backend the integration tests run against, chosen by ``NIGHTSHIFT_TEST_BACKEND``.

* ``embedded`` (default, part of ``make test``): a SQLite catalog, artifacts in a local directory,
  the session's MLflow server (SQLite + local artifacts).
* ``postgres`` (``make test-postgres``): ``nightshift up`` with ``stack.backend: postgres`` on free
  ports — a Postgres 15 cluster (Debian's binaries) with the databases prefect, mlflow and catalog, and
  the session's S3 test double (moto, conftest's ``s3_server``) as its external ``stack.s3_endpoint``,
  with Prefect, MLflow, Ray and the worker pointed at them. The same tests then use that MLflow
  (Postgres + S3), fresh catalog databases on that Postgres and the S3 artifact root, and
  ``test_stack_postgres.py`` (collected only here) runs ``pretrain/nightly`` through the worker.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BACKEND = os.environ.get("NIGHTSHIFT_TEST_BACKEND", "embedded")
if BACKEND not in ("embedded", "postgres"):
    raise pytest.UsageError(f"NIGHTSHIFT_TEST_BACKEND={BACKEND!r}: use 'embedded' or 'postgres'")

# The stack test brings up Postgres and S3 itself; only the postgres pass runs it.
collect_ignore = [] if BACKEND == "postgres" else ["test_stack_postgres.py"]


def rows(url: str, sql: str, **params: object) -> list[tuple]:
    """The rows of one SQL query on the database at ``url``."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), params)]
    finally:
        engine.dispose()


@dataclass
class Backend:
    """Where tracking, the catalog and artifacts go in this pass, and how to look inside them."""

    name: str
    mlflow_uri: str
    artifact_root: str
    tmp: Path
    postgres_server: str | None = None  # postgresql://postgres@127.0.0.1:<port>/postgres (PGPASSFILE)
    bucket: str | None = None
    mlflow_stores: tuple[str, str] | None = None  # MLflow's backend store and artifact destination

    def new_catalog_url(self) -> str:
        """A fresh, empty catalog database (SQLite file, or a new database on the Postgres server)."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        if self.postgres_server is None:
            return f"sqlite:///{self.tmp / name}.db"
        import psycopg

        from nightshift.backends import database_url

        with psycopg.connect(
            database_url(self.postgres_server, "postgresql", "postgres"), autocommit=True
        ) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return database_url(self.postgres_server, "postgresql+psycopg", name)

    def database(self, name: str) -> str:
        """SQLAlchemy URL of one of the stack's databases (``mlflow``, ``prefect``, ``catalog``)."""
        from nightshift.backends import database_url

        assert self.postgres_server is not None
        return database_url(self.postgres_server, "postgresql+psycopg", name)

    def objects(self, prefix: str) -> dict[str, int]:
        """Keys (and sizes) in the bucket under ``prefix``."""
        import boto3

        assert self.bucket is not None
        pages = (
            boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        )
        return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}


@pytest.fixture(scope="session")
def postgres_stack(tmp_path_factory: pytest.TempPathFactory, s3_server) -> Iterator[object]:
    """``nightshift up`` with ``stack.backend: postgres`` on free ports, the S3 test double as its
    external store; yields the config. The session keeps ``PGPASSFILE`` (the stack's password file)."""
    from core.config import load_config
    from nightshift import stack
    from nightshift.services import free_port_overrides

    home = tmp_path_factory.mktemp("stack_home")
    # Not under pytest's tmp dir: that is closed to the postgres user the server runs as under root.
    pg_dir = Path(tempfile.mkdtemp(prefix="nightshift-stack-pg-"))
    overrides: dict[str, object] = {**free_port_overrides()}
    overrides.update(
        {
            "stack.backend": "postgres",
            "stack.postgres_dir": str(pg_dir),
            "stack.s3_endpoint": s3_server.endpoint,
            "stack.s3_bucket": s3_server.bucket,
            "stack.ray_num_cpus": 1,
            "stack.ray_object_store_bytes": 100_000_000,
            "stack.set_profile": False,
        }
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NIGHTSHIFT_HOME", str(home))
        mp.setenv("PREFECT_HOME", str(tmp_path_factory.mktemp("prefect_home")))
        mp.setenv("PGPASSFILE", str(home / "pgpass"))
        cfg = load_config("tiny", overrides)
        try:
            stack.up(cfg, deploy=True)
            yield cfg
        finally:
            stack.down(cfg)
            from catalog.db import dispose_engines

            dispose_engines()
            shutil.rmtree(pg_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    tmp = tmp_path_factory.mktemp("backend")
    if BACKEND == "embedded":
        mlflow_uri = request.getfixturevalue("mlflow_server")
        yield Backend(
            name="embedded",
            mlflow_uri=mlflow_uri,
            artifact_root=str(tmp / "artifacts"),
            tmp=tmp,
            mlflow_stores=request.getfixturevalue("mlflow_stores"),
        )
        return
    from core.config import nightshift_home
    from nightshift import backends, stack

    cfg = request.getfixturevalue("postgres_stack")
    env = stack.stack_env(cfg)
    stores = backends.resolve(cfg, nightshift_home())
    # This process publishes and opens artifacts on the stack's S3 server, as a flow run would.
    with pytest.MonkeyPatch.context() as mp:
        for k in env:
            if k.startswith("AWS_") or k == "MLFLOW_S3_ENDPOINT_URL":
                mp.setenv(k, env[k])
        yield Backend(
            name="postgres",
            mlflow_uri=env["MLFLOW_TRACKING_URI"],
            artifact_root=env["NIGHTSHIFT_ARTIFACTS"],
            tmp=tmp,
            postgres_server=backends.server_url(cfg, nightshift_home()),
            bucket=cfg.stack.s3_bucket,
            mlflow_stores=(stores.mlflow_store_uri, stores.mlflow_artifacts),
        )
