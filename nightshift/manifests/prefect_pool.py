"""The Prefect Kubernetes work pool's base job template, and the parameters of a cluster run.

A flow run of ``pretrain/nightly`` on the pool ``cluster.prefect_work_pool`` becomes a Kubernetes
Job: one pod of our image (the pipeline's driver) with the cluster environment, the secret and
the shared home; its Ray work goes to the RayService's cluster through Ray Client
(``RAY_ADDRESS=ray://<name>-head-svc...:10001``). The layout of ``job_configuration`` follows
what Prefect's Kubernetes worker requires of a job manifest (one container named
``prefect-job``, ``restartPolicy: Never``, ``parallelism``/``completions`` 1 in the pod spec).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.config import Config
from nightshift.manifests import pods


def base_job_template(cfg: Config) -> dict[str, Any]:
    """``{"job_configuration", "variables"}`` for ``prefect work-pool create --base-job-template``."""
    cc = cfg.cluster
    secret_vols, secret_mount, secret_env = pods.secret_mounts(cc, "flow")
    env = {**pods.cluster_env(cfg), **secret_env, "RAY_ADDRESS": pods.ray_client_address(cc)}
    vols, mounts = pods.volumes(cc, shm=False)
    vols, mounts = vols + secret_vols, mounts + secret_mount
    main: dict[str, Any] = {
        "name": "prefect-job",
        "image": "{{ image }}",
        "imagePullPolicy": "{{ image_pull_policy }}",
        "args": "{{ command }}",
        "env": "{{ env }}",
    }
    main["resources"] = {
        "requests": {"cpu": "{{ cpu }}", "memory": "{{ memory }}"},
        "limits": {"memory": "{{ memory }}"},
    }
    main["volumeMounts"] = mounts
    main["securityContext"] = pods.container_security()
    pod_spec: dict[str, Any] = {
        "parallelism": 1,
        "completions": 1,
        "restartPolicy": "Never",
        "serviceAccountName": "{{ service_account_name }}",
        "securityContext": pods.pod_security(),
        "containers": [main],
        "volumes": vols,
    }
    job_manifest = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"labels": "{{ labels }}", "namespace": "{{ namespace }}", "generateName": "{{ name }}-"},
        "spec": {
            # A failed night is retried by Prefect's task retries, not by a second pod.
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": "{{ finished_job_ttl }}",
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/part-of": "nightshift"}},
                "spec": pod_spec,
            },
        },
    }
    job_configuration = {
        "command": "{{ command }}",
        "env": "{{ env }}",
        "labels": "{{ labels }}",
        "name": "{{ name }}",
        "namespace": "{{ namespace }}",
        "job_manifest": job_manifest,
        "job_watch_timeout_seconds": "{{ job_watch_timeout_seconds }}",
        "pod_watch_timeout_seconds": "{{ pod_watch_timeout_seconds }}",
        "stream_output": "{{ stream_output }}",
    }
    return {"job_configuration": job_configuration, "variables": _variables(cfg, env)}


def _variables(cfg: Config, env: dict[str, str]) -> dict[str, Any]:
    """The JSON schema of what a deployment may set (``job_variables``), with the cluster's defaults."""
    cc = cfg.cluster
    props: dict[str, Any] = {
        "name": {"title": "Name", "description": "Name given to the Job (a prefix).", "type": "string"},
        "namespace": {"title": "Namespace", "type": "string", "default": cc.namespace},
        "image": {
            "title": "Image",
            "description": "Image of the flow-run pod (built from infra/docker/Dockerfile).",
            "type": "string",
            "default": cc.image,
        },
        "image_pull_policy": {
            "title": "Image pull policy",
            "type": "string",
            "enum": ["IfNotPresent", "Always", "Never"],
            "default": cc.image_pull_policy,
        },
        "service_account_name": {"title": "Service account", "type": "string", "default": cc.service_account},
        "command": {
            "title": "Command",
            "description": "Command of the container (default: Prefect's flow-run command).",
            "type": "string",
        },
        "env": {
            "title": "Environment",
            "description": "Environment of the flow-run pod; secrets come as files (PGPASSFILE, ...).",
            "type": "object",
            "additionalProperties": {"type": "string"},
            "default": env,
        },
        "labels": {"title": "Labels", "type": "object", "additionalProperties": {"type": "string"}},
        "cpu": {
            "title": "CPU request",
            "description": "CPUs of the pipeline's driver pod (a Kubernetes quantity).",
            "type": "string",
            "default": str(cc.flow_cpus),
        },
        "memory": {
            "title": "Memory",
            "description": "Memory request and limit of the driver pod (a Kubernetes quantity).",
            "type": "string",
            "default": cc.flow_memory,
        },
        "finished_job_ttl": {
            "title": "Finished job TTL",
            "description": "Seconds a finished Job (and its pod's logs) is kept.",
            "type": "integer",
            "minimum": 0,
            "default": 86400,
        },
        "job_watch_timeout_seconds": {
            "title": "Job watch timeout",
            "description": "Seconds to wait for each Job event; unset waits as long as the night takes.",
            "type": "integer",
            "minimum": 1,
        },
        "pod_watch_timeout_seconds": {
            "title": "Pod watch timeout",
            "description": "Seconds for the pod to start; the first pull of a multi-GB image takes minutes.",
            "type": "integer",
            "minimum": 1,
            "default": 600,
        },
        "stream_output": {"title": "Stream output", "type": "boolean", "default": True},
    }
    return {"type": "object", "properties": props}


def pretrain_params(cfg: Config, preset: str | Path, overrides: dict[str, Any], ray_address: str) -> dict:
    """Parameters of ``pretrain/nightly`` for a cluster run (``prefect deploy --params``)."""
    return pods.run_params(cfg, preset, overrides, ray_address=ray_address)
