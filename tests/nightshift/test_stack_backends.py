"""stack.backend: which services and URLs each backend gives, without starting anything."""

from __future__ import annotations

import pytest

from core.config import ConfigError, load_config
from nightshift import backends, stack


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("NIGHTSHIFT_HOME", str(tmp_path))
    for key in (
        "NIGHTSHIFT_POSTGRES_URL",
        "NIGHTSHIFT_S3_ENDPOINT",
        "NIGHTSHIFT_CATALOG_URL",
        "NIGHTSHIFT_STACK_BACKEND",
    ):
        monkeypatch.delenv(key, raising=False)


def test_embedded_is_the_default_and_changes_nothing(tmp_path, monkeypatch):
    # A setting meant for some other server in the user's shell must not reach our services.
    monkeypatch.setenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", "postgresql+asyncpg://elsewhere/db")
    monkeypatch.setenv("MLFLOW_BACKEND_STORE_URI", "postgresql://elsewhere/db")
    cfg = load_config("tiny")
    assert cfg.stack.backend == "embedded"
    services = stack._services(cfg, tmp_path, stack.REPO_ROOT)
    assert list(services) == ["prefect-server", "mlflow", "ray-head", "prefect-worker", "dashboard"]
    assert "PREFECT_SERVER_DATABASE_CONNECTION_URL" not in services["prefect-server"].env
    assert "MLFLOW_BACKEND_STORE_URI" not in services["mlflow"].env  # the script's SQLite default
    env = stack.stack_env(cfg)
    assert env["NIGHTSHIFT_CATALOG_URL"] == cfg.tracking.catalog_url
    assert not {"NIGHTSHIFT_ARTIFACTS", "AWS_ENDPOINT_URL"} & set(env)


def test_postgres_backend_runs_local_postgres_and_keeps_artifacts_on_disk(tmp_path):
    """No external S3: artifacts and MLflow's files stay under $NIGHTSHIFT_HOME (no S3 server is run),
    and the password lives only in the password file every process is pointed at."""
    cfg = load_config("tiny", {"stack.backend": "postgres", "stack.postgres_port": 6543})
    backends.ensure_password(tmp_path)
    password = backends.password_path(tmp_path).read_text()
    pgpass = backends.write_pgpass(cfg, tmp_path)
    assert (
        pgpass.read_text() == f"127.0.0.1:6543:*:postgres:{password}\n"
        and oct(pgpass.stat().st_mode)[-3:] == "600"
    )
    services = stack._services(cfg, tmp_path, stack.REPO_ROOT)
    assert list(services) == [
        "postgres",
        "prefect-server",
        "mlflow",
        "ray-head",
        "prefect-worker",
        "dashboard",
    ]
    assert services["postgres"].ports == (("postgres_port", 6543),)
    prefect_db = services["prefect-server"].env["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
    assert prefect_db == "postgresql+asyncpg://postgres@127.0.0.1:6543/prefect"
    mlflow_env = services["mlflow"].env
    assert mlflow_env["MLFLOW_BACKEND_STORE_URI"] == "postgresql+psycopg://postgres@127.0.0.1:6543/mlflow"
    assert "MLFLOW_ARTIFACTS_DESTINATION" not in mlflow_env  # the script's local directory
    env = stack.stack_env(cfg)
    assert env["NIGHTSHIFT_CATALOG_URL"] == "postgresql+psycopg://postgres@127.0.0.1:6543/catalog"
    assert not {"NIGHTSHIFT_ARTIFACTS", "AWS_ENDPOINT_URL"} & set(env)
    assert env["NIGHTSHIFT_STACK_BACKEND"] == "postgres"  # a shell that sourced the env file means this stack
    for svc in services.values():
        assert svc.env["PGPASSFILE"] == str(pgpass)
        assert not [k for k, v in svc.env.items() if password in v], svc.name


def test_external_postgres_and_s3_start_nothing_local(tmp_path, monkeypatch):
    monkeypatch.setenv("NIGHTSHIFT_S3_ENDPOINT", "https://s3.example.org")
    cfg = load_config(
        "tiny",
        {"stack.backend": "postgres", "stack.postgres_url": "postgresql://ns:p:w@db.internal:5432/postgres"},
    )
    services = stack._services(cfg, tmp_path, stack.REPO_ROOT)
    assert "postgres" not in services
    env = stack.stack_env(cfg)
    # The URL's password moves to the password file; the URLs everyone sees hold none.
    assert env["NIGHTSHIFT_CATALOG_URL"] == "postgresql+psycopg://ns@db.internal:5432/catalog"
    assert backends.write_pgpass(cfg, tmp_path).read_text() == "db.internal:5432:*:ns:p\\:w\n"
    assert env["NIGHTSHIFT_ARTIFACTS"] == "s3://nightshift/artifacts"
    assert env["AWS_ENDPOINT_URL"] == "https://s3.example.org"
    assert "AWS_ACCESS_KEY_ID" not in env  # real credentials stay the user's, never written to the env file


def test_bad_backend_settings_are_listed_together():
    with pytest.raises(ConfigError) as err:
        load_config(
            "tiny",
            {
                "stack.backend": "postgres",
                "stack.postgres_url": "mysql://u:secret@h/db",
                "stack.s3_endpoint": "s3.example.org",
                "stack.s3_bucket": "Bad_Bucket",
            },
        )
    text = str(err.value)
    for needle in ("postgres_url", "s3_endpoint", "s3_bucket"):
        assert needle in text
    assert "secret" not in text  # the password of a bad URL is not echoed
    with pytest.raises(ConfigError, match="postgres_port: port 4200 is already used by prefect_port"):
        load_config("tiny", {"stack.backend": "postgres", "stack.postgres_port": 4200})
    with pytest.raises(ConfigError, match="stack.backend"):
        load_config("tiny", {"stack.backend": "sqlite"})
