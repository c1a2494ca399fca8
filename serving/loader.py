"""Resolve what to serve: a ``model`` artifact directory or an MLflow registry URI.

``models:/nightshift-gpt@champion`` (or ``models:/nightshift-gpt/3``, or ``models:/<model_id>``) is
downloaded once into ``$NIGHTSHIFT_HOME/serve-cache`` and the ``model`` artifact inside the logged
MLflow model is loaded from there, hash-verified like any other artifact.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.config import nightshift_home
from gpt.model_io import load_model, open_model

# MLflow is imported inside the functions that use it, not here: it takes a second or more to
# import, and not every user of this module needs it.

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from catalog.artifacts import ArtifactRef
    from core.model_config import ModelConfig
    from gpt.model import GPT

log = logging.getLogger(__name__)


@dataclass
class Served:
    model: GPT | None  # None when loaded without weights (an engine process loads them)
    cfg: ModelConfig
    tokenizer: Tokenizer
    ref: ArtifactRef
    source: str  # what was asked for
    registry: dict[str, Any] = field(default_factory=dict)  # name, version, alias when from the registry


def _registry_version(uri: str, tracking_uri: str) -> dict[str, Any]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    spec = uri.removeprefix("models:/")
    if "@" in spec:
        name, alias = spec.split("@", 1)
        mv = client.get_model_version_by_alias(name, alias)
        return {"name": name, "version": str(mv.version), "alias": alias}
    if "/" in spec:
        name, version = spec.split("/", 1)
        return {"name": name, "version": version}
    return {}


def fetch(
    source: str, *, tracking_uri: str | None = None, cache_dir: str | Path | None = None
) -> tuple[Path, dict]:
    """The local ``model`` artifact directory for ``source`` and its registry facts (no weights loaded).

    Raises:
        ValueError: a ``models:/`` URI without a tracking URI, or a logged model without a
            nightshift ``model`` artifact inside.
    """
    if not source.startswith("models:/"):
        return Path(source.removeprefix("file://")), {}
    if not tracking_uri:
        raise ValueError(f"{source}: a registry URI needs tracking.mlflow_uri (the MLflow server)")
    import mlflow

    registry = _registry_version(source, tracking_uri)
    name = f"{registry['name']}-v{registry['version']}" if registry else source.removeprefix("models:/")
    dest = Path(cache_dir or nightshift_home() / "serve-cache") / name.replace("/", "-")
    if not dest.exists():
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.partial")
        tmp.mkdir(parents=True)
        mlflow.set_tracking_uri(tracking_uri)
        uri = f"models:/{registry['name']}/{registry['version']}" if registry else source
        mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp))
        try:
            tmp.rename(dest)
        except OSError:  # another replica won the race; its copy is as good
            shutil.rmtree(tmp, ignore_errors=True)
    found = [p.parent for p in dest.rglob("artifact.json") if (p.parent / "model.safetensors").is_file()]
    if not found:
        raise ValueError(f"{source}: the logged model at {dest} holds no nightshift `model` artifact")
    return found[0], registry


def load_served(
    source: str,
    *,
    tracking_uri: str | None = None,
    cache_dir: str | Path | None = None,
    weights: bool = True,
) -> Served:
    """Load the model to serve from an artifact path or a ``models:/`` URI (hash-verified).

    ``weights=False`` verifies the artifact and reads its config and tokenizer only (``model`` is
    None): for a replica whose engine process loads the weights itself.

    Raises:
        ValueError: see :func:`fetch`.
        catalog.artifacts.ArtifactError: the artifact is missing, of another kind, or changed.
    """
    path, registry = fetch(source, tracking_uri=tracking_uri, cache_dir=cache_dir)
    if weights:
        model, tok, ref = load_model(path)
        cfg = model.cfg
    else:
        model = None
        cfg, tok, ref = open_model(path)
    log.info("serving %s (artifact %s)", source, ref.sha256[:16])
    return Served(model, cfg, tok, ref, source, registry)
