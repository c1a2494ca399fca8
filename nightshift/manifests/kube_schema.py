"""The KubeRay (``ray.io/v1``) fields of the RayJob and RayService we render, as a JSON schema.

Only KubeRay's own fields are written here: no package on PyPI ships KubeRay's CRD schemas, and the
machines that build this have no other network. Everything Kubernetes defines inside them (the pod
templates of the head and worker groups) is checked against the real Kubernetes schema by
``kubernetes-validate`` (:mod:`nightshift.manifests.validate`). Unknown keys are errors, so a
misspelt field fails here instead of being dropped by the API server. Field names follow KubeRay's
v1 API reference (RayCluster, RayJob, RayService).
"""

from __future__ import annotations

from typing import Any

DNS_LABEL = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}


def _obj(required: list[str], props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props, "additionalProperties": False}


# Kubernetes' own objects inside a KubeRay resource (pod templates) are checked by the real
# Kubernetes schema (kubernetes-validate, nightshift/manifests/validate.py); here they are objects.
POD_TEMPLATE = {"type": "object", "required": ["spec"]}
METADATA = _obj(
    ["name"],
    {"name": DNS_LABEL, "namespace": DNS_LABEL, "labels": STRING_MAP, "annotations": STRING_MAP},
)

# --- KubeRay ray.io/v1 ---
HEAD_GROUP = _obj(
    ["rayStartParams", "template"],
    {
        "rayStartParams": STRING_MAP,
        "template": POD_TEMPLATE,
        "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
        "enableIngress": {"type": "boolean"},
        "headService": {"type": "object"},
    },
)
WORKER_GROUP = _obj(
    ["groupName", "rayStartParams", "template"],
    {
        "groupName": DNS_LABEL,
        "replicas": {"type": "integer", "minimum": 0},
        "minReplicas": {"type": "integer", "minimum": 0},
        "maxReplicas": {"type": "integer", "minimum": 0},
        "numOfHosts": {"type": "integer", "minimum": 1},
        "idleTimeoutSeconds": {"type": "integer"},
        "suspend": {"type": "boolean"},
        "rayStartParams": STRING_MAP,
        "template": POD_TEMPLATE,
        "scaleStrategy": {"type": "object"},
    },
)
RAY_CLUSTER_SPEC = _obj(
    ["headGroupSpec"],
    {
        "rayVersion": {"type": "string", "pattern": r"^[0-9]+\.[0-9]+\.[0-9]+"},
        "enableInTreeAutoscaling": {"type": "boolean"},
        "autoscalerOptions": {"type": "object"},
        "headServiceAnnotations": STRING_MAP,
        "headGroupSpec": HEAD_GROUP,
        "workerGroupSpecs": {"type": "array", "items": WORKER_GROUP},
        "suspend": {"type": "boolean"},
        "gcsFaultToleranceOptions": {"type": "object"},
    },
)


def _ray_resource(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A KubeRay custom resource (``ray.io/v1``) of ``kind`` with ``spec``."""
    return _obj(
        ["apiVersion", "kind", "metadata", "spec"],
        {"apiVersion": {"const": "ray.io/v1"}, "kind": {"const": kind}, "metadata": METADATA, "spec": spec},
    )


RAYJOB = _ray_resource(
    "RayJob",
    _obj(
        ["entrypoint", "rayClusterSpec"],
        {
            "entrypoint": {"type": "string", "minLength": 1},
            "runtimeEnvYAML": {"type": "string"},
            "jobId": {"type": "string"},
            "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
            "shutdownAfterJobFinishes": {"type": "boolean"},
            "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
            "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
            "backoffLimit": {"type": "integer", "minimum": 0},
            "entrypointNumCpus": {"type": "number"},
            "entrypointNumGpus": {"type": "number"},
            "entrypointResources": {"type": "string"},
            "submitterPodTemplate": POD_TEMPLATE,
            "rayClusterSpec": RAY_CLUSTER_SPEC,
            "clusterSelector": STRING_MAP,
            "suspend": {"type": "boolean"},
        },
    ),
)
RAYSERVICE = _ray_resource(
    "RayService",
    _obj(
        ["serveConfigV2", "rayClusterConfig"],
        {
            "serveConfigV2": {"type": "string", "minLength": 1},
            "rayClusterConfig": RAY_CLUSTER_SPEC,
            "serveService": {"type": "object"},
            "upgradeStrategy": {"type": "object"},
            "excludeHeadPodFromServeSvc": {"type": "boolean"},
            "serviceUnhealthySecondThreshold": {"type": "integer"},
            "deploymentUnhealthySecondThreshold": {"type": "integer"},
        },
    ),
)
