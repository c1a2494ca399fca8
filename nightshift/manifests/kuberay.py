"""KubeRay custom resources (``ray.io/v1``): the pretraining RayJob and the serving RayService.

- The **RayJob** runs the whole ``pretrain`` flow on a Ray cluster KubeRay creates for it and
  deletes afterwards: the driver runs on the head, Ray Train puts one worker per GPU pod.
- The **RayService** is the long-lived cluster: it serves the registry's champion through
  ``serving.app:build_app`` (its ``serveConfigV2`` is the Serve config ``nightshift serve
  --write-config`` writes, plus each deployment's replica settings from ``serve.*``), and its GPU
  workers scale from ``cluster.worker_min_replicas`` when flow runs send Ray Train work to it.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import yaml

from core.config import Config
from nightshift.manifests import pods
from nightshift.manifests.text import BlockStr, dump_yaml
from serving.options import deployment_options, serve_app_args, serve_config_yaml

# Characters a shell expands, or that JSON escapes with a backslash, inside a double-quoted string.
_SHELL_SPECIAL = "$`\\"

# The RayJob's entrypoint calls the flow function with the same parameters a Prefect deployment run
# gets (those of infra/cluster/pretrain-params.json: Ray at "auto"), passed as one JSON argument.
_FLOW_CALL = "import json, sys; from flows.pretrain import pretrain; pretrain(**json.loads(sys.argv[1]))"


def pretrain_entrypoint(params: dict[str, Any]) -> str:
    """The shell command of the RayJob: ``python -c <call the flow> '<params JSON>'``.

    The command is parsed by a shell twice (KubeRay's submitter script, then Ray's job supervisor,
    after ``ray job submit`` re-quotes it with double quotes), so the parameters may not hold
    characters a shell expands inside double quotes.

    Raises:
        ValueError: naming the override that holds ``$``, a backquote, a backslash or a double quote.
    """
    text = json.dumps(params, sort_keys=True, ensure_ascii=False)
    if any(c in text for c in _SHELL_SPECIAL):
        bad = [
            f"--set {k}={v!r}"
            for k, v in {"preset": params.get("preset"), **params.get("overrides", {})}.items()
            if any(c in json.dumps(v, ensure_ascii=False) for c in _SHELL_SPECIAL)
        ]
        raise ValueError(
            f"{', '.join(bad)}: holds $, `, \\ or \", which the RayJob's shells would expand; put the value "
            "in a preset file inside the repository instead"
        )
    return shlex.join(["python", "-c", _FLOW_CALL, text])


def rayjob(cfg: Config, preset: str | Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """The pretraining RayJob: a fixed-size cluster of ``cluster.worker_replicas`` workers for one run."""
    cc = cfg.cluster
    params = pods.run_params(cfg, preset, overrides, ray_address="auto")
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {
            "name": f"{cc.name}-pretrain",
            "namespace": cc.namespace,
            "labels": {"app.kubernetes.io/part-of": "nightshift", "app.kubernetes.io/component": "pretrain"},
        },
        "spec": {
            "entrypoint": BlockStr(pretrain_entrypoint(params)),
            # The cluster exists for this run only; keep it an hour for `kubectl logs` and the dashboard.
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 3600,
            "rayClusterSpec": pods.ray_cluster_spec(cfg, autoscaling=False, replicas=cc.worker_replicas),
        },
    }


def serve_config(cfg: Config) -> dict[str, Any]:
    """The Serve config of the RayService: ``nightshift serve --write-config``'s, seen from the cluster.

    The proxy binds 0.0.0.0 (the Kubernetes Service must reach it), the replicas record to the
    in-cluster catalog and MLflow, and each deployment carries the replica settings
    (:func:`serving.options.deployment_options`) so the file states what will run.
    """
    cc = cfg.cluster
    inside = cfg.model_copy(deep=True)
    inside.serve.host = "0.0.0.0"
    inside.tracking.catalog_url = cc.catalog_url
    inside.tracking.mlflow_uri = cc.mlflow_uri
    args = serve_app_args(inside, cc.serve_model_uri(cfg.serve.registered_model))
    doc = yaml.safe_load(serve_config_yaml(args, inside))
    doc["applications"][0]["deployments"] = [
        {"name": "NightshiftServer", **deployment_options(inside.serve)},
    ]
    return doc


def rayservice(cfg: Config) -> dict[str, Any]:
    """The serving RayService; its cluster also runs the Ray Train work of Prefect flow runs."""
    cc = cfg.cluster
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {
            "name": cc.name,
            "namespace": cc.namespace,
            "labels": {"app.kubernetes.io/part-of": "nightshift", "app.kubernetes.io/component": "serve"},
        },
        "spec": {
            "serveConfigV2": BlockStr(dump_yaml(serve_config(cfg))),
            "rayClusterConfig": pods.ray_cluster_spec(cfg, autoscaling=True, replicas=cc.worker_min_replicas),
        },
    }
