"""`nightshift up` with ``stack.backend: postgres``: Prefect, MLflow and the catalog on Postgres,
artifacts on S3 (the session's test double as an external endpoint), and ``pretrain/nightly`` run
through the worker on them; then every store is scanned for the password and the API keys. Collected
only in the postgres pass (``make test-postgres``); the stack is the session's (see conftest.py)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from catalog.artifacts import INDEX, open_artifact
from core.config import Config, nightshift_home
from nightshift import stack
from nightshift.backends import password_path
from nightshift.services import process_start_time
from tests.flows.conftest import write_corpus
from tests.integration.conftest import Backend, rows

pytestmark = [pytest.mark.integration, pytest.mark.stack, pytest.mark.postgres, pytest.mark.slow]

SERVICES = ["postgres", "prefect-server", "mlflow", "ray-head", "prefect-worker", "dashboard"]


def _cmdlines_of_group(pgid: int) -> list[str]:
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.getpgid(int(proc.name)) == pgid:
                out.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, ProcessLookupError):
            continue
    return out


def test_every_service_runs_on_postgres_and_s3(postgres_stack: Config, backend: Backend) -> None:
    cfg = postgres_stack
    services = stack.status(cfg)
    assert [s.name for s in services] == SERVICES
    assert all(s.healthy for s in services), [(s.name, s.detail) for s in services if not s.healthy]
    env = stack.stack_env(cfg)
    # No URL holds the password: libpq and asyncpg read it from the stack's password file.
    assert (
        env["NIGHTSHIFT_CATALOG_URL"]
        == f"postgresql+psycopg://postgres@127.0.0.1:{cfg.stack.postgres_port}/catalog"
    )
    assert stat.S_IMODE(Path(env["PGPASSFILE"]).stat().st_mode) == 0o600
    assert env["NIGHTSHIFT_ARTIFACTS"] == f"s3://{cfg.stack.s3_bucket}/artifacts"
    assert env["AWS_ENDPOINT_URL"] == cfg.stack.s3_endpoint
    assert stat.S_IMODE(nightshift_home().stat().st_mode) == 0o700
    env_file = nightshift_home() / "env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600 and "NIGHTSHIFT_ARTIFACTS" in env_file.read_text()
    # Prefect keeps its state in Postgres: the deployments `up` applied are rows of its database.
    names = {r[0] for r in rows(backend.database("prefect"), "SELECT name FROM deployment")}
    assert {"nightly", "adhoc", "promote", "rollback"} <= names
    # The generated password reaches the servers through their environment, never their command lines.
    password = password_path(nightshift_home()).read_text().strip()
    for s in services:
        assert s.pid is not None
        assert not [c for c in _cmdlines_of_group(s.pid) if password in c], s.name


def test_nightly_deployment_runs_on_postgres_and_s3(
    postgres_stack: Config, backend: Backend, tmp_path: Path, monkeypatch
) -> None:
    """`prefect deployment run pretrain/nightly --watch` through the worker; then every record is
    looked up where it must have landed."""
    cfg = postgres_stack
    src = write_corpus(tmp_path / "src", n_docs=30)
    params = {
        "preset": "tiny",
        "overrides": {"data.sources": [str(src)], "ray.num_cpus": 1, "serve.deploy_stage": False},
    }
    env = {**os.environ, **stack.stack_env(cfg)}
    prefect = str(Path(sys.executable).with_name("prefect"))
    done = subprocess.run(
        [prefect, "deployment", "run", "pretrain/nightly", "--params", json.dumps(params), "--watch"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Completed" in done.stdout

    # Prefect: the flow run and its final state are rows in the `prefect` database (beside the runs
    # the nightly schedule has queued).
    flow_runs = rows(
        backend.database("prefect"),
        "SELECT fr.state_type, count(*) FROM flow_run fr JOIN deployment d ON fr.deployment_id = d.id "
        "WHERE d.name = 'nightly' GROUP BY fr.state_type",
    )
    assert dict(flow_runs).get("COMPLETED") == 1, flow_runs
    # MLflow: the pipeline's runs are rows in the `mlflow` database, the registered version too ...
    mlflow_db = backend.database("mlflow")
    # Run names carry the night ("pretrain 2026-12-07 <flow run>"); the stage is the tag.
    stages = {r[0] for r in rows(mlflow_db, "SELECT value FROM tags WHERE key = 'nightshift.stage'")}
    assert {"pretrain", "ingest", "tokenize", "evaluate"} <= stages
    assert rows(mlflow_db, "SELECT count(*) FROM model_versions WHERE name = 'nightshift-gpt'") == [(1,)]
    # ... and what they logged (datacard, model files, the pyfunc model) are objects under mlflow/.
    logged = backend.objects("mlflow/")
    assert any(k.endswith("/artifacts/DATACARD.md") for k in logged)
    assert any(k.endswith("/model.safetensors") for k in logged)
    # The catalog: rows in the `catalog` database whose URIs are objects in the bucket.
    catalog_url = stack.stack_env(cfg)["NIGHTSHIFT_CATALOG_URL"]
    uris = dict(rows(catalog_url, "SELECT kind, uri FROM artifacts WHERE kind <> 'source'"))
    assert {"corpus", "tokenizer", "tokens", "model", "eval_report"} <= set(uris)
    stored = backend.objects("artifacts/")
    for kind, uri in uris.items():
        assert uri.startswith(f"s3://{cfg.stack.s3_bucket}/artifacts/{kind}/"), uri
        assert f"{uri.removeprefix(f's3://{cfg.stack.s3_bucket}/')}/{INDEX}" in stored
    # Downstream, on a machine that never saw the run: the model opens by its catalog URI.
    monkeypatch.setenv("NIGHTSHIFT_ARTIFACT_CACHE", str(tmp_path / "elsewhere"))
    model = open_artifact(uris["model"], kind="model")
    assert (model.path / "model.safetensors").is_file() and model.path.is_relative_to(tmp_path / "elsewhere")


def test_no_store_holds_the_password_or_a_key(postgres_stack: Config, backend: Backend) -> None:
    """After a night on Postgres: the password, the API keys and the S3 secret are in no database
    (catalog, MLflow's params and tags, Prefect's parameters and logs), no object (artifacts, MLflow's
    artifacts) and no file under $NIGHTSHIFT_HOME or Ray's session logs, but the secret files."""
    from catalog.keys import create_key
    from nightshift import leaks
    from nightshift.credentials import client_key

    cfg, home = postgres_stack, nightshift_home()
    catalog_url = stack.stack_env(cfg)["NIGHTSHIFT_CATALOG_URL"]
    labeller, _ = create_key(catalog_url, "scan-labeller", "labeller")
    secrets = {
        "postgres password": password_path(home).read_text().strip(),
        "local API key": client_key(home) or "",
        "labeller API key": labeller,
        "S3 secret key": os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
    }
    assert all(secrets.values())
    hits = leaks.scan(
        home,
        secrets,
        databases={name: backend.database(name) for name in ("catalog", "mlflow", "prefect")},
        s3_prefixes=[f"s3://{cfg.stack.s3_bucket}/artifacts", f"s3://{cfg.stack.s3_bucket}/mlflow"],
    )
    hits += leaks.scan_files(Path(stack._ray_temp_dir(cfg, home)), secrets)
    assert hits == [], hits
    # The scan does find a secret where one is: it is not blind.
    (home / "logs" / "planted.log").write_text(f"oops {secrets['labeller API key']}\n")
    assert [h.where for h in leaks.scan_files(home, secrets)] == [
        str((home / "logs" / "planted.log").resolve())
    ]
    (home / "logs" / "planted.log").unlink()


def test_down_stops_postgres_too(postgres_stack: Config) -> None:
    cfg = postgres_stack
    pids = {s.name: s.pid for s in stack.status(cfg)}
    after = stack.down(cfg)
    assert not any(s.running for s in after)
    for name, pid in pids.items():
        assert pid is not None and process_start_time(pid) is None, name
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)  # the whole group: postgres's backends too
    # The cluster stays on disk for the next `up`.
    assert (Path(cfg.stack.postgres_dir) / "data" / "PG_VERSION").is_file()
