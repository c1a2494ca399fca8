"""The one redaction layer: URLs, secret-named keys, API keys in text, log records."""

from __future__ import annotations

import logging

import pytest

from catalog.redact import RedactingFilter, redact, redact_text, secrets_in

KEY = "ns-" + "A1b2" * 11


def test_urls_keys_and_tokens_are_masked_and_the_rest_kept():
    assert redact_text("postgresql+psycopg://postgres:s3cr3t@127.0.0.1:5433/catalog") == (
        "postgresql+psycopg://postgres:***@127.0.0.1:5433/catalog"
    )
    assert redact_text("postgresql://nightshift@db:5432/x") == "postgresql://nightshift@db:5432/x"
    assert redact_text("s3://b/x?token=abc&region=eu") == "s3://b/x?token=***&region=eu"
    assert redact_text(f"Authorization: Bearer {KEY}") == "Authorization: Bearer ***"
    assert KEY not in redact_text(f"the key {KEY} leaked")
    cfg = {
        "tracking": {"catalog_url": "postgresql://u:pw@h/d", "mlflow_uri": "http://127.0.0.1:5000"},
        "serve": {"api_key_hashes": ["ab" * 32], "auth": "api_key", "api_key_file": None},
        "AWS_SECRET_ACCESS_KEY": "zz",
        "seed": 3,
    }
    assert redact(cfg) == {
        "tracking": {"catalog_url": "postgresql://u:***@h/d", "mlflow_uri": "http://127.0.0.1:5000"},
        "serve": {"api_key_hashes": ["ab" * 32], "auth": "api_key", "api_key_file": None},
        "AWS_SECRET_ACCESS_KEY": "***",
        "seed": 3,
    }
    assert secrets_in(cfg) == ["tracking.catalog_url", "AWS_SECRET_ACCESS_KEY"]


def test_log_records_lose_their_secrets(caplog: pytest.LogCaptureFixture):
    log = logging.getLogger("nightshift.test_redact")
    caplog.handler.addFilter(RedactingFilter())
    with caplog.at_level(logging.INFO):
        log.info("connecting to %s with %s", "postgresql://postgres:hunter2@h/catalog", KEY)
        try:
            raise RuntimeError("could not reach postgresql://postgres:hunter2@h/catalog")
        except RuntimeError:
            log.exception("failed")
    text = caplog.text
    assert "hunter2" not in text and KEY not in text and "postgres:***@h" in text


def test_mlflow_params_config_json_and_runs_config_are_redacted(mlflow_server, catalog_url, tmp_path):
    from mlflow import MlflowClient

    from catalog.db import session_scope
    from catalog.models import Run
    from catalog.tracking import Tracker

    config = {"tracking": {"catalog_url": "postgresql://postgres:hunter2@h/catalog"}, "token": "t0ken"}
    tracker = Tracker(tracking_uri=mlflow_server, experiment="redact", catalog_url=catalog_url)
    with tracker.pipeline("p", config=config) as pipe:
        pipe.set_tag("note", "see postgresql://postgres:hunter2@h/catalog")
    client = MlflowClient(mlflow_server)
    run = client.get_run(pipe.mlflow_run_id)
    saved = client.download_artifacts(run.info.run_id, "config.json", str(tmp_path))
    shown = str(run.data.params) + str(run.data.tags) + open(saved).read()
    with session_scope(catalog_url) as s:
        shown += str(s.get(Run, pipe.catalog_run_id).config)
    assert "hunter2" not in shown and "t0ken" not in shown and "postgres:***@h" in shown


def test_a_flow_refuses_secrets_in_its_parameters():
    from core.config_base import ConfigError
    from flows.common import flow_config

    with pytest.raises(ConfigError, match=r"overrides.tracking.catalog_url: holds a secret") as e:
        flow_config("tiny", {"tracking.catalog_url": "postgresql://u:hunter2@h/c"})
    assert "hunter2" not in str(e.value)
