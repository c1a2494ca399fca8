"""The pieces every rendered manifest shares: the in-cluster environment, containers, pod templates,
KubeRay head/worker groups, and the config overrides a run inside the cluster gets.

All of it is plain data (dicts and lists) built from a loaded :class:`~core.config.Config`;
the values that differ between a laptop and the cluster (MLflow, catalog, artifacts, Ray address)
come from the ``cluster`` section, never from this machine's environment, so the same config
renders the same files everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.cluster_config import ClusterConfig
from core.config import CONFIG_DIR, Config
from core.serve_config import proxy_env
from nightshift.manifests import REPO_ROOT

RAY_CLIENT_PORT = 10001
RAY_GCS_PORT = 6379
RAY_DASHBOARD_PORT = 8265
RAY_METRICS_PORT = 8080
HOME_VOLUME = "nightshift-home"
# Group "users" of python:3.11-slim; the image's user `ray` is in it, and fsGroup makes Kubernetes
# hand the shared volume to that group so a freshly provisioned claim is writable.
FS_GROUP = 100
RUN_AS_USER = 1000  # the image's user `ray` (infra/docker/Dockerfile)
SECRETS_DIR = "/var/run/secrets/nightshift"
# Each key of cluster.secret_name: (the file's name, the variable naming it, the pods that get it).
SECRET_FILES = {
    "pgpass": ("pgpass", "PGPASSFILE", ("head", "flow")),
    "aws-credentials": ("aws-credentials", "AWS_SHARED_CREDENTIALS_FILE", ("head", "worker", "flow")),
    "ray-token": ("ray-token", "RAY_AUTH_TOKEN_PATH", ("head", "worker", "flow")),
}
SECRET_VOLUME = "nightshift-secrets"
LABELS = {"app.kubernetes.io/part-of": "nightshift"}


def secret_mounts(
    cc: ClusterConfig, role: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, str]]:
    """(volumes, mounts, env) giving the pod of ``role`` (head, worker, flow) only the secret keys it
    needs, as read-only files (mode 0440: root's, readable by the pod's fsGroup), never as variables."""
    if not cc.secret_name:
        return [], [], {"RAY_AUTH_MODE": "token"}
    keys = [(k, f, var) for k, (f, var, roles) in SECRET_FILES.items() if role in roles]
    volume = {
        "name": SECRET_VOLUME,
        "secret": {
            "secretName": cc.secret_name,
            "optional": True,  # pods start without it and fail only where a credential is needed
            "defaultMode": 0o440,
            "items": [{"key": k, "path": f} for k, f, _ in keys],
        },
    }
    mount = {"name": SECRET_VOLUME, "mountPath": SECRETS_DIR, "readOnly": True}
    env = {var: f"{SECRETS_DIR}/{f}" for _, f, var in keys} | {"RAY_AUTH_MODE": "token"}
    return [volume], [mount], env


def pod_security() -> dict[str, Any]:
    """The pod's securityContext: never root, the runtime's default seccomp profile."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": FS_GROUP,
        "fsGroup": FS_GROUP,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security() -> dict[str, Any]:
    """Each container's securityContext: no privilege escalation, no Linux capabilities."""
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def head_service(cc: ClusterConfig) -> str:
    """DNS name of the RayService's head Service (KubeRay names it ``<rayservice>-head-svc``)."""
    return f"{cc.name}-head-svc.{cc.namespace}.svc.cluster.local"


def ray_client_address(cc: ClusterConfig) -> str:
    """Where flow-run pods reach the long-lived Ray cluster: the RayService's Ray Client port."""
    return f"ray://{head_service(cc)}:{RAY_CLIENT_PORT}"


def prefect_ui(cc: ClusterConfig) -> str:
    """The Prefect UI behind ``prefect_api_url`` (links in run summaries)."""
    url = cc.prefect_api_url.rstrip("/")
    return url[: -len("/api")] if url.endswith("/api") else url


def cluster_env(cfg: Config) -> dict[str, str]:
    """Environment of every pod: the ``tracking.*`` defaults read these, so stages agree on storage."""
    cc = cfg.cluster
    return {
        "NIGHTSHIFT_HOME": cc.home_dir,
        "NIGHTSHIFT_REPO": cc.repo_dir,
        "MLFLOW_TRACKING_URI": cc.mlflow_uri,
        "NIGHTSHIFT_CATALOG_URL": cc.catalog_url,
        "NIGHTSHIFT_ARTIFACTS": cc.artifact_root,
        "PREFECT_API_URL": cc.prefect_api_url,
        "NIGHTSHIFT_PREFECT_UI": prefect_ui(cc),
        # Ray's processes inherit these: the Serve proxy's header timeout (serving/proxy_guard.py).
        **proxy_env(cfg.serve.header_timeout_s),
    }


def resources(cc: ClusterConfig, cpus: int, memory: str, gpus: int) -> dict[str, Any]:
    """Requests equal to limits: Ray sizes its logical resources from them, so they must be real."""
    amounts: dict[str, str] = {"cpu": str(cpus), "memory": memory}
    if gpus:
        amounts[cc.gpu_resource] = str(gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def volumes(cc: ClusterConfig, shm: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(pod volumes, container mounts): the shared home, and a RAM-backed /dev/shm for Ray's object store."""
    vols: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if cc.shared_volume_claim:
        vols.append({"name": HOME_VOLUME, "persistentVolumeClaim": {"claimName": cc.shared_volume_claim}})
        mounts.append({"name": HOME_VOLUME, "mountPath": cc.home_dir})
    if shm:
        vols.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    return vols, mounts


def container(
    cfg: Config, name: str, role: str, cpus: int, memory: str, gpus: int, ports: dict[str, int] | None = None
) -> dict[str, Any]:
    """One container of our image with the cluster environment, its secret files and the volumes."""
    cc = cfg.cluster
    _, secret_mount, secret_env = secret_mounts(cc, role)
    env = [{"name": k, "value": v} for k, v in {**cluster_env(cfg), **secret_env}.items()]
    if role == "head":
        # The dashboard binds the pod's own address ($(POD_IP) in rayStartParams), not every interface.
        env.append({"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    out: dict[str, Any] = {
        "name": name,
        "image": cc.image,
        "imagePullPolicy": cc.image_pull_policy,
        "env": env,
    }
    if ports:
        out["ports"] = [{"name": n, "containerPort": p} for n, p in ports.items()]
    out["resources"] = resources(cc, cpus, memory, gpus)
    out["volumeMounts"] = volumes(cc, shm=True)[1] + secret_mount
    out["securityContext"] = container_security()
    return out


def pod_template(cfg: Config, main: dict[str, Any], gpu: bool, role: str) -> dict[str, Any]:
    """A pod template around ``main``; GPU pods get the node selector and tolerations."""
    cc = cfg.cluster
    spec: dict[str, Any] = {
        "serviceAccountName": cc.service_account,
        "securityContext": pod_security(),
        "containers": [main],
        "volumes": volumes(cc, shm=True)[0] + secret_mounts(cc, role)[0],
    }
    if gpu:
        if cc.gpu_node_selector:
            spec["nodeSelector"] = dict(cc.gpu_node_selector)
        if cc.gpu_tolerations:
            spec["tolerations"] = [dict(t) for t in cc.gpu_tolerations]
    return {"metadata": {"labels": dict(LABELS)}, "spec": spec}


def head_group(cfg: Config) -> dict[str, Any]:
    """KubeRay ``headGroupSpec``: the head also hosts the Serve proxy and the Ray Client server."""
    cc = cfg.cluster
    ports = {
        "gcs-server": RAY_GCS_PORT,
        "dashboard": RAY_DASHBOARD_PORT,
        "client": RAY_CLIENT_PORT,
        "serve": cfg.serve.port,
        "metrics": RAY_METRICS_PORT,
    }
    main = container(cfg, "ray-head", "head", cc.head_cpus, cc.head_memory, cc.head_gpus, ports)
    return {
        # rayStartParams values are strings (they become `ray start` flags); Kubernetes expands
        # $(POD_IP) in the command KubeRay builds from them.
        "rayStartParams": {
            "dashboard-host": "$(POD_IP)",
            "num-cpus": str(cc.head_cpus),
            "num-gpus": str(cc.head_gpus),
        },
        "template": pod_template(cfg, main, gpu=cc.head_gpus > 0, role="head"),
    }


def worker_group(cfg: Config, replicas: int) -> dict[str, Any]:
    """KubeRay ``workerGroupSpecs[0]``: the GPU workers (Ray Train workers, one per GPU)."""
    cc = cfg.cluster
    main = container(cfg, "ray-worker", "worker", cc.worker_cpus, cc.worker_memory, cc.worker_gpus)
    return {
        "groupName": "gpu-workers" if cc.worker_gpus else "workers",
        "replicas": replicas,
        "minReplicas": min(cc.worker_min_replicas, replicas),
        "maxReplicas": max(cc.worker_max_replicas, replicas),
        "rayStartParams": {"num-cpus": str(cc.worker_cpus), "num-gpus": str(cc.worker_gpus)},
        "template": pod_template(cfg, main, gpu=cc.worker_gpus > 0, role="worker"),
    }


def ray_cluster_spec(cfg: Config, *, autoscaling: bool, replicas: int) -> dict[str, Any]:
    """A KubeRay RayCluster spec (``rayClusterSpec`` of a RayJob, ``rayClusterConfig`` of a RayService)."""
    return {
        "rayVersion": cfg.cluster.resolved_ray_version(),
        "enableInTreeAutoscaling": autoscaling,
        "headGroupSpec": head_group(cfg),
        "workerGroupSpecs": [worker_group(cfg, replicas)],
    }


def network_policy(cfg: Config) -> dict[str, Any]:
    """Ingress to our pods: the Serve port from anywhere; every port from our own pods (Ray's nodes,
    the flow runs); the Ray dashboard port from the KubeRay operator's namespace. Nothing else."""
    cc = cfg.cluster
    ours = {"podSelector": {"matchLabels": dict(LABELS)}}
    operator = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": cc.kuberay_namespace}}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": f"{cc.name}-ingress", "namespace": cc.namespace, "labels": dict(LABELS)},
        "spec": {
            "podSelector": {"matchLabels": dict(LABELS)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"ports": [{"protocol": "TCP", "port": cfg.serve.port}]},
                {"from": [ours]},
                {"from": [operator], "ports": [{"protocol": "TCP", "port": RAY_DASHBOARD_PORT}]},
            ],
        },
    }


def preset_in_image(preset: str | Path, cc: ClusterConfig) -> str:
    """The preset as a run inside the image names it: a preset name, or a YAML path under ``repo_dir``.

    Raises:
        ValueError: for a YAML file outside this repository (the image holds only the repository).
    """
    p = Path(preset)
    if p.suffix not in (".yaml", ".yml"):
        return str(preset)
    full = p.resolve()
    if full.parent == CONFIG_DIR and full.is_file():
        return full.stem
    try:
        rel = full.relative_to(REPO_ROOT)
    except ValueError:
        raise ValueError(
            f"--preset {preset}: the file is outside the repository {REPO_ROOT}, so the image would not "
            "contain it; move it into the repository (e.g. configs/) and rebuild the image"
        ) from None
    return f"{cc.repo_dir.rstrip('/')}/{rel.as_posix()}"


# Overrides a run in the cluster must not inherit from the command line that rendered it: the storage
# and Ray address are the cluster's (set below), the local stack and the cluster section do not apply.
_LOCAL_ONLY = ("tracking.", "stack.", "cluster.", "ray.", "preset")


def run_params(
    cfg: Config, preset: str | Path, overrides: dict[str, Any], ray_address: str
) -> dict[str, Any]:
    """``{"preset", "overrides"}`` of the pretrain flow when it runs in the cluster.

    Keeps the user's own overrides (``--set train.max_steps=100``) and pins what the cluster
    decides: in-cluster storage, the Ray address, CPUs per Ray Train worker (a pod's share, see
    :meth:`ClusterConfig.train_cpus_per_worker`) and ``serve.deploy_stage: false``, since the
    RayService, not the flow, owns the endpoint on Kubernetes.
    """
    cc, t = cfg.cluster, cfg.train
    kept = {k: v for k, v in sorted(overrides.items()) if not k.startswith(_LOCAL_ONLY)}
    pinned: dict[str, Any] = {
        "ray.address": ray_address,
        "serve.deploy_stage": False,
        "tracking.artifact_root": cc.artifact_root,
        "tracking.catalog_url": cc.catalog_url,
        "tracking.mlflow_uri": cc.mlflow_uri,
        "tracking.prefect_ui": prefect_ui(cc),
        "train.cpus_per_worker": cc.train_cpus_per_worker(t.use_gpu, t.cpus_per_worker),
    }
    return {"preset": preset_in_image(preset, cc), "overrides": {**kept, **pinned}}
