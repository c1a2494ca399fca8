"""`nightshift serve --write-config` writes a Serve config that `serve deploy` accepts."""

from __future__ import annotations

import yaml
from ray.serve.schema import ServeDeploySchema

from nightshift.cli import main


def test_written_config_validates_and_builds(tmp_path, monkeypatch):
    monkeypatch.setenv("NIGHTSHIFT_HOME", str(tmp_path / "home"))
    out = tmp_path / "serve.yaml"
    rc = main(
        [
            "serve",
            "--model",
            "models:/nightshift-gpt@champion",
            "--write-config",
            str(out),
            "--serve.port",
            "8123",
        ]
    )
    assert rc == 0
    doc = yaml.safe_load(out.read_text())
    schema = (
        ServeDeploySchema.model_validate(doc)
        if hasattr(ServeDeploySchema, "model_validate")
        else ServeDeploySchema.parse_obj(doc)
    )
    app = schema.applications[0]
    assert app.import_path == "serving.app:build_app" and doc["http_options"]["port"] == 8123
    assert app.args["model"] == "models:/nightshift-gpt@champion"
    # The args are exactly what build_app validates (no replica is started by building).
    from serving.app import ServeArgs

    assert ServeArgs(**app.args).serve.port == 8123
