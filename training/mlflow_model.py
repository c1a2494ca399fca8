"""An MLflow pyfunc flavour for the ``model`` artifact, so registry versions load and predict anywhere.

The logged MLflow model holds the artifact directory itself (hash-verified again on load), the
``training`` and ``catalog`` packages as ``code_paths`` (so it loads without this repo installed)
and pinned requirements. Logging goes through an explicit ``MlflowClient`` and run id: it never
starts, ends or switches the active run, and never changes the global tracking URI, so a stage run
held open in another thread is untouched.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow.pyfunc
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import LoggedModelOutput, LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from catalog.tracking import TAG_ARTIFACT
from gpt.generate import generate_text
from gpt.model_io import load_model

if TYPE_CHECKING:
    from mlflow.models import ModelSignature

    from catalog.artifacts import ArtifactRef

log = logging.getLogger(__name__)

# Defaults of the predict params; also the params schema of the signature.
PARAM_DEFAULTS: dict[str, Any] = {
    "max_new_tokens": 64,
    "temperature": 1.0,
    "top_k": 0,
    "top_p": 1.0,
    "seed": -1,
}
_PACKAGES = ("core", "gpt", "training", "catalog")  # what the model's code needs, copied next to it
_REQUIREMENTS = ("torch", "tokenizers", "safetensors", "pydantic", "numpy")


def _prompts(model_input: Any) -> list[str]:
    """Prompts from a DataFrame with a ``prompt`` column, a list of strings, a dict or one string."""
    if isinstance(model_input, pd.DataFrame):
        if "prompt" not in model_input.columns:
            raise ValueError(f"input DataFrame needs a 'prompt' column, got {list(model_input.columns)}")
        out: list[str] = []
        for cell in model_input["prompt"].tolist():
            # MLflow turns {"prompt": [a, b]} into one row holding the list.
            if isinstance(cell, str) or not hasattr(cell, "__iter__"):
                out.append(str(cell))
            else:
                out.extend(str(p) for p in cell)
        return out
    if isinstance(model_input, dict):
        if "prompt" not in model_input:
            raise ValueError(f"input dict needs a 'prompt' key, got {sorted(model_input)}")
        p = model_input["prompt"]
        return [p] if isinstance(p, str) else [str(x) for x in p]
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, list | tuple) and all(isinstance(p, str) for p in model_input):
        return list(model_input)
    raise ValueError(
        f"unsupported input {type(model_input).__name__}: give a DataFrame with a 'prompt' column"
    )


class NightshiftGPT(mlflow.pyfunc.PythonModel):
    """One completion per prompt; params ``max_new_tokens``, ``temperature``, ``top_k``, ``top_p``, ``seed``.

    ``top_k`` 0 and ``top_p`` 1.0 switch those filters off; ``seed`` -1 means not seeded. Each prompt
    of a batch gets ``seed + i`` so that rows differ but the call is reproducible.
    """

    def load_context(self, context: Any) -> None:
        """Load (and hash-verify) the ``model`` artifact that was logged with the MLflow model."""
        self.model, self.tokenizer, self.ref = load_model(context.artifacts["model"])

    # model_input is left unannotated on purpose: MLflow derives a signature from predict's type hints
    # and warns about any hint but list[...]; the explicit signature in log_model is the contract.
    def predict(self, context: Any, model_input, params: dict[str, Any] | None = None) -> list[str]:
        """Generated texts, one per prompt, in input order."""
        p = {**PARAM_DEFAULTS, **{k: v for k, v in (params or {}).items() if v is not None}}
        seed = int(p["seed"])
        return [
            generate_text(
                self.model,
                self.tokenizer,
                prompt,
                max_new_tokens=int(p["max_new_tokens"]),
                temperature=float(p["temperature"]),
                top_k=int(p["top_k"]) or None,
                top_p=float(p["top_p"]),
                seed=seed + i if seed >= 0 else None,
            )[0].text
            for i, prompt in enumerate(_prompts(model_input))
        ]


def signature() -> ModelSignature:
    """Input: a ``prompt`` string column; output: one string per row; params with their defaults."""

    types = {int: "long", float: "double"}
    params = ParamSchema([ParamSpec(k, types[type(v)], v) for k, v in PARAM_DEFAULTS.items()])
    return ModelSignature(
        inputs=Schema([ColSpec("string", "prompt")]), outputs=Schema([ColSpec("string")]), params=params
    )


def input_example() -> tuple[dict[str, list[str]], dict[str, Any]]:
    """What the MLflow UI shows as the way to call a logged model: a prompt column and two params."""
    return {"prompt": ["The", "Once upon a time"]}, {"max_new_tokens": 16, "temperature": 0.8}


def pip_requirements() -> list[str]:
    """Runtime requirements pinned to the installed versions (local tags like ``+cpu`` dropped)."""
    return [f"{name}=={version(name).split('+')[0]}" for name in _REQUIREMENTS]


def _model_code(directory: Path) -> Path:
    """The "models from code" entry file, so the logged model holds code and safetensors, no pickle."""
    path = directory / "nightshift_gpt_model.py"
    path.write_text(
        "import mlflow\n\nfrom training.mlflow_model import NightshiftGPT\n\n"
        "mlflow.models.set_model(NightshiftGPT())\n"
    )
    return path


def log_model(
    ref: ArtifactRef,
    *,
    run_id: str,
    tracking_uri: str,
    name: str = "model",
    registered_model_name: str | None = None,
) -> str:
    """Log a ``model`` artifact as an MLflow pyfunc model of the (already open) run ``run_id``.

    The logged model lands in the run's experiment and is linked to the run as an output; the run
    stays open. With ``registered_model_name`` it also becomes a new version of that registered model.

    Args:
        ref: the ``model`` artifact.
        run_id: the run that produced it (not ended by this call).
        tracking_uri: the MLflow tracking server.
        name: the logged model's name.
        registered_model_name: register the model under this name (created if missing).

    Returns:
        The model URI, ``models:/<model_id>``; ``mlflow.pyfunc.load_model`` takes it.
    """

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    run = client.get_run(run_id)
    logged = client.create_logged_model(
        experiment_id=run.info.experiment_id,
        name=name,
        source_run_id=run_id,
        tags={TAG_ARTIFACT: ref.sha256},
    )
    repo = Path(__file__).resolve().parent.parent
    try:
        with tempfile.TemporaryDirectory(prefix="nightshift-mlflow-") as tmp:
            local = Path(tmp) / "model"
            mlflow.pyfunc.save_model(
                path=str(local),
                python_model=str(_model_code(Path(tmp))),
                artifacts={"model": str(ref.path)},
                code_paths=[str(repo / pkg) for pkg in _PACKAGES],
                signature=signature(),
                input_example=input_example(),
                pip_requirements=pip_requirements(),
                metadata={"nightshift_artifact_sha256": ref.sha256},
                mlflow_model=Model(
                    artifact_path=logged.artifact_location,
                    run_id=run_id,
                    model_uuid=logged.model_id,
                    model_id=logged.model_id,
                ),
            )
            for pycache in local.rglob("__pycache__"):
                # Bytecode of the copied packages: not needed, and it differs from machine to machine.
                shutil.rmtree(pycache, ignore_errors=True)
            client.log_model_artifacts(logged.model_id, str(local))
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    except Exception:
        client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    uri = f"models:/{logged.model_id}"
    if registered_model_name:
        try:
            client.create_registered_model(registered_model_name)
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        mv = client.create_model_version(
            registered_model_name, source=uri, run_id=run_id, model_id=logged.model_id
        )
        log.info("registered %s version %s from %s", registered_model_name, mv.version, uri)
    return uri
