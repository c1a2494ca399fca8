"""A small JSON schema of the Kubernetes and KubeRay (``ray.io/v1``) objects we render.

Not the full OpenAPI schema (that ships with a Kubernetes client we do not install): the fields
these manifests use, and their common neighbours, with their real names and types. Unknown keys
are errors, so a misspelt field fails here instead of being dropped by the API server. Field
names follow the Kubernetes API reference (core/v1 PodSpec, Container) and KubeRay's v1 CRDs
(RayCluster, RayJob, RayService).
"""

from __future__ import annotations

from typing import Any

DNS_LABEL = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
QUANTITY = {
    "type": ["string", "integer"],
    "pattern": r"^[+]?[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$",
}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}


def _obj(required: list[str], props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props, "additionalProperties": False}


ENV_VAR = _obj(
    ["name"],
    {
        "name": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_.-]*$"},
        "value": {"type": "string"},
        "valueFrom": {"type": "object"},
    },
)
ENV_FROM = _obj(
    [],
    {
        "prefix": {"type": "string"},
        "secretRef": _obj(["name"], {"name": DNS_LABEL, "optional": {"type": "boolean"}}),
        "configMapRef": _obj(["name"], {"name": DNS_LABEL, "optional": {"type": "boolean"}}),
    },
)
PORT = _obj(
    ["containerPort"],
    {
        "containerPort": {"type": "integer", "minimum": 1, "maximum": 65535},
        # IANA_SVC_NAME: at most 15 characters, lowercase letters, digits and '-'.
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 15},
        "protocol": {"enum": ["TCP", "UDP", "SCTP"]},
        "hostPort": {"type": "integer"},
    },
)
RESOURCES = _obj(
    [],
    {
        "requests": {"type": "object", "additionalProperties": QUANTITY},
        "limits": {"type": "object", "additionalProperties": QUANTITY},
    },
)
VOLUME_MOUNT = _obj(
    ["name", "mountPath"],
    {
        "name": DNS_LABEL,
        "mountPath": {"type": "string", "pattern": "^/"},
        "readOnly": {"type": "boolean"},
        "subPath": {"type": "string"},
    },
)
CONTAINER = _obj(
    ["name", "image"],
    {
        "name": DNS_LABEL,
        "image": {"type": "string", "minLength": 1, "pattern": r"^\S+$"},
        "imagePullPolicy": {"enum": ["IfNotPresent", "Always", "Never"]},
        "command": {"type": "array", "items": {"type": "string"}},
        "args": {"type": "array", "items": {"type": "string"}},
        "workingDir": {"type": "string"},
        "env": {"type": "array", "items": ENV_VAR},
        "envFrom": {"type": "array", "items": ENV_FROM},
        "ports": {"type": "array", "items": PORT},
        "resources": RESOURCES,
        "volumeMounts": {"type": "array", "items": VOLUME_MOUNT},
        "securityContext": {"type": "object"},
        "lifecycle": {"type": "object"},
        "livenessProbe": {"type": "object"},
        "readinessProbe": {"type": "object"},
        "startupProbe": {"type": "object"},
    },
)
VOLUME = {
    **_obj(
        ["name"],
        {
            "name": DNS_LABEL,
            "persistentVolumeClaim": _obj(
                ["claimName"], {"claimName": DNS_LABEL, "readOnly": {"type": "boolean"}}
            ),
            "emptyDir": _obj([], {"medium": {"enum": ["", "Memory"]}, "sizeLimit": QUANTITY}),
            "configMap": {"type": "object"},
            "secret": {"type": "object"},
            "hostPath": {"type": "object"},
        },
    ),
    "minProperties": 2,  # a name and one source
    "maxProperties": 2,
}
TOLERATION = _obj(
    [],
    {
        "key": {"type": "string"},
        "operator": {"enum": ["Exists", "Equal"]},
        "value": {"type": "string"},
        "effect": {"enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"]},
        "tolerationSeconds": {"type": "integer"},
    },
)
POD_SPEC = _obj(
    ["containers"],
    {
        "containers": {"type": "array", "minItems": 1, "items": CONTAINER},
        "initContainers": {"type": "array", "items": CONTAINER},
        "volumes": {"type": "array", "items": VOLUME},
        "serviceAccountName": DNS_LABEL,
        "securityContext": _obj(
            [],
            {
                "fsGroup": {"type": "integer"},
                "runAsUser": {"type": "integer"},
                "runAsGroup": {"type": "integer"},
                "runAsNonRoot": {"type": "boolean"},
            },
        ),
        "nodeSelector": STRING_MAP,
        "tolerations": {"type": "array", "items": TOLERATION},
        "affinity": {"type": "object"},
        "restartPolicy": {"enum": ["Always", "OnFailure", "Never"]},
        "imagePullSecrets": {"type": "array", "items": _obj(["name"], {"name": DNS_LABEL})},
        "priorityClassName": {"type": "string"},
        "terminationGracePeriodSeconds": {"type": "integer"},
    },
)
METADATA = _obj(
    ["name"],
    {"name": DNS_LABEL, "namespace": DNS_LABEL, "labels": STRING_MAP, "annotations": STRING_MAP},
)
POD_TEMPLATE = _obj(
    ["spec"],
    {"metadata": _obj([], {"labels": STRING_MAP, "annotations": STRING_MAP}), "spec": POD_SPEC},
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
