"""Config of the GPU cluster the pipeline is deployed to: image, pods, Ray groups, in-cluster storage.

``nightshift infra render`` turns this section (with the rest of the config) into the Ray cluster
launcher YAML, the KubeRay RayJob and RayService, the Prefect Kubernetes work-pool template and
the Dockerfile, so the manifests never restate a value the code reads. Nothing here is read by a
local run; the cross-section rules (:meth:`ClusterConfig.problems_for`) check that the cluster
can hold the Ray Train workers that ``train`` asks for.
"""

from __future__ import annotations

import re
from importlib import metadata
from typing import Any, Literal

from pydantic import Field

from core.config_base import Section

# Kubernetes object names (RFC 1123 labels); KubeRay appends suffixes such as "-head-svc", so the
# base name is kept well under the 63-character limit.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}


def installed_ray_version() -> str:
    """The Ray version installed here, which the image gets from uv.lock."""
    try:
        return metadata.version("ray")
    except metadata.PackageNotFoundError:  # pragma: no cover - ray is a dependency
        return "unknown"


class ClusterConfig(Section):
    # --- image and placement ---
    name: str = Field(
        "nightshift",
        description="Base name of every rendered resource (RayService, RayJob '<name>-pretrain', launcher "
        "cluster); the RayService's head is then reachable as <name>-head-svc.",
    )
    image: str = Field(
        "registry.example.com/nightshift:0.1.0",
        description="Container image built from infra/docker/Dockerfile and pushed where the cluster can "
        "pull it (used by every Ray pod, flow-run pod and launcher node).",
    )
    image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = Field(
        "IfNotPresent", description="Kubernetes imagePullPolicy of every container."
    )
    namespace: str = Field("nightshift", description="Kubernetes namespace of every rendered resource.")
    service_account: str = Field(
        "nightshift", description="Kubernetes service account of the Ray pods and flow-run pods."
    )
    secret_name: str | None = Field(
        "nightshift-secrets",
        description="Kubernetes Secret whose keys are mounted as files, each only in the pods that need it: "
        "'pgpass' (libpq password file: the Ray head and flow-run pods, PGPASSFILE), 'aws-credentials' (an "
        "AWS shared credentials file: every pod, AWS_SHARED_CREDENTIALS_FILE), 'ray-token' (Ray's auth "
        "token: every pod, RAY_AUTH_TOKEN_PATH). API keys live in the catalog. None: no secret.",
    )
    kuberay_namespace: str = Field(
        "kuberay-system",
        description="Namespace of the KubeRay operator: the NetworkPolicy admits it to the Ray dashboard "
        "port, which it calls to submit jobs and deploy Serve.",
    )
    ray_version: str | None = Field(
        None,
        description="Ray version of the image (KubeRay's rayVersion; checked on launcher nodes). None: the "
        "Ray installed here, which the image installs from uv.lock; another value is an error.",
    )
    repo_dir: str = Field(
        "/app", description="Where the image holds the repository ($NIGHTSHIFT_REPO, the flows' workdir)."
    )
    home_dir: str = Field(
        "/mnt/nightshift",
        description="$NIGHTSHIFT_HOME in every pod: run workdirs, Ray Train checkpoints, caches.",
    )
    shared_volume_claim: str | None = Field(
        "nightshift-home",
        description="ReadWriteMany PersistentVolumeClaim mounted at home_dir in every pod, so the flow's "
        "driver and the Ray Train workers see the same checkpoints. None: pod-local (one worker only).",
    )
    # --- Ray head ---
    head_cpus: int = Field(8, ge=1, description="CPUs of the Ray head pod (request = limit).")
    head_memory: str = Field("32Gi", description="Memory of the Ray head pod (a Kubernetes quantity).")
    head_gpus: int = Field(0, ge=0, description="GPUs of the Ray head pod.")
    # --- Ray GPU workers ---
    worker_cpus: int = Field(8, ge=1, description="CPUs of each Ray worker pod.")
    worker_memory: str = Field("48Gi", description="Memory of each Ray worker pod (a Kubernetes quantity).")
    worker_gpus: int = Field(1, ge=0, description="GPUs of each Ray worker pod (one Ray Train worker each).")
    worker_replicas: int = Field(
        8, ge=0, description="Worker pods of the pretraining RayJob (a fixed-size cluster per job)."
    )
    worker_min_replicas: int = Field(
        0, ge=0, description="Autoscaling floor of the RayService cluster's workers and of launcher workers."
    )
    worker_max_replicas: int = Field(
        8, ge=0, description="Autoscaling ceiling of the RayService cluster's workers and launcher workers."
    )
    gpu_resource: str = Field(
        "nvidia.com/gpu", description="Extended resource name of a GPU in the pod spec."
    )
    gpu_node_selector: dict[str, str] = Field(
        {"nvidia.com/gpu.present": "true"},
        description="Node selector of GPU pods; pick the accelerator type here, e.g. "
        "{nvidia.com/gpu.product: NVIDIA-A100-SXM4-80GB} or {cloud.google.com/gke-accelerator: nvidia-l4}.",
    )
    gpu_tolerations: list[dict[str, Any]] = Field(
        [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        description="Tolerations of GPU pods (GPU node pools are usually tainted).",
    )
    # --- flow-run pods (Prefect Kubernetes work pool) ---
    prefect_work_pool: str = Field(
        "nightshift-k8s", description="Prefect work pool of type kubernetes that runs the flows."
    )
    prefect_api_url: str = Field(
        "http://prefect-server.nightshift.svc.cluster.local:4200/api",
        description="PREFECT_API_URL as the pods reach it.",
    )
    flow_cpus: int = Field(4, ge=1, description="CPUs requested by each flow-run pod (the pipeline driver).")
    flow_memory: str = Field("16Gi", description="Memory of each flow-run pod (a Kubernetes quantity).")
    # --- storage as the pods see it (the in-cluster tracking.* values) ---
    mlflow_uri: str = Field(
        "http://mlflow.nightshift.svc.cluster.local:5000",
        description="tracking.mlflow_uri inside the cluster (MLflow server with a Postgres backend store).",
    )
    catalog_url: str = Field(
        "postgresql+psycopg://nightshift@postgres.nightshift.svc.cluster.local:5432/nightshift",
        description="tracking.catalog_url inside the cluster, without a password (PGPASSWORD comes from "
        "the secret).",
    )
    artifact_root: str = Field(
        "s3://nightshift/artifacts", description="tracking.artifact_root inside the cluster."
    )
    serve_model: str | None = Field(
        None,
        description="What the RayService serves; default models:/<serve.registered_model>@champion. Set a "
        "version (models:/nightshift-gpt/7) and re-apply to roll out a new champion.",
    )
    # --- Ray cluster launcher (VMs) ---
    launcher_provider: dict[str, Any] = Field(
        {"type": "aws", "region": "us-west-2", "cache_stopped_nodes": False},
        description="The launcher's provider section (type aws, gcp, azure, ...), as `ray up` expects it.",
    )
    launcher_ssh_user: str = Field("ubuntu", description="SSH user of launcher nodes.")
    head_node_config: dict[str, Any] = Field(
        {"InstanceType": "m5.2xlarge"}, description="Provider node_config of the launcher's head node."
    )
    worker_node_config: dict[str, Any] = Field(
        {"InstanceType": "g5.4xlarge"}, description="Provider node_config of the launcher's GPU workers."
    )
    idle_timeout_minutes: float = Field(
        10, ge=0, description="Launcher: minutes an idle worker node lives before it is removed."
    )

    def resolved_ray_version(self) -> str:
        """``ray_version``, or the installed Ray when unset."""
        return self.ray_version or installed_ray_version()

    def serve_model_uri(self, registered_model: str) -> str:
        """The model the RayService serves: ``serve_model`` or the registry's champion."""
        return self.serve_model or f"models:/{registered_model}@champion"

    def train_workers_per_pod(self, use_gpu: bool, cpus_per_worker: int | None) -> int:
        """How many Ray Train workers one worker pod holds (one per GPU, or by CPUs)."""
        if use_gpu:
            return self.worker_gpus
        return self.worker_cpus // (cpus_per_worker or self.worker_cpus)

    def train_cpus_per_worker(self, use_gpu: bool, cpus_per_worker: int | None) -> int:
        """CPUs per Ray Train worker on this cluster: ``train.cpus_per_worker`` or a pod's share.

        Left unset, the launcher would divide the whole cluster's CPUs (head included) by the workers
        and could ask for more CPUs than one pod has; the manifests pass this value explicitly.
        """
        if cpus_per_worker:
            return cpus_per_worker
        return max(1, self.worker_cpus // max(1, self.worker_gpus)) if use_gpu else self.worker_cpus

    def problems(self) -> list[str]:
        out = []
        for key in ("name", "namespace", "service_account"):
            value = getattr(self, key)
            if not _DNS_LABEL.match(value) or len(value) > 40:
                out.append(
                    f"{key}: {value!r} is not a Kubernetes name (lowercase letters, digits and '-', "
                    "at most 40 characters, starting and ending with a letter or digit)"
                )
        if self.secret_name is not None and not _DNS_LABEL.match(self.secret_name):
            out.append(f"secret_name: {self.secret_name!r} is not a Kubernetes name")
        if self.shared_volume_claim is not None and not _DNS_LABEL.match(self.shared_volume_claim):
            out.append(f"shared_volume_claim: {self.shared_volume_claim!r} is not a Kubernetes name")
        if not self.image.strip() or any(c.isspace() for c in self.image):
            out.append(f"image: {self.image!r} is not an image reference (e.g. ghcr.io/org/nightshift:0.1.0)")
        for key in ("head_memory", "worker_memory", "flow_memory"):
            if not _QUANTITY.match(getattr(self, key)):
                out.append(f"{key}: {getattr(self, key)!r} is not a Kubernetes quantity such as 48Gi")
        for key in ("repo_dir", "home_dir"):
            if not getattr(self, key).startswith("/"):
                out.append(f"{key}: must be an absolute path in the container, got {getattr(self, key)!r}")
        if not self.worker_min_replicas <= self.worker_replicas <= self.worker_max_replicas:
            out.append(
                f"worker_replicas: {self.worker_replicas} must lie between worker_min_replicas "
                f"{self.worker_min_replicas} and worker_max_replicas {self.worker_max_replicas}"
            )
        if re.match(r"^[^:]+://[^/@]*:[^/@]*@", self.catalog_url):
            out.append(
                "catalog_url: holds a password, which would be written into the manifests; remove it and "
                "put PGPASSWORD in the Kubernetes secret (cluster.secret_name)"
            )
        if not self.prefect_api_url.startswith(("http://", "https://")):
            out.append(f"prefect_api_url: must be an http(s) URL, got {self.prefect_api_url!r}")
        if not isinstance(self.launcher_provider.get("type"), str):
            out.append("launcher_provider: needs a 'type' (aws, gcp, azure, ...), as `ray up` requires")
        for t in self.gpu_tolerations:
            if set(t) - _TOLERATION_KEYS:
                out.append(
                    f"gpu_tolerations: unknown keys {sorted(set(t) - _TOLERATION_KEYS)}; a toleration has "
                    f"{sorted(_TOLERATION_KEYS)}"
                )
        installed = installed_ray_version()
        if self.ray_version is not None and self.ray_version != installed:
            out.append(
                f"ray_version: {self.ray_version!r} is not the Ray installed here ({installed}), which the "
                "image installs from uv.lock; leave it unset"
            )
        return out

    def problems_for(self, num_workers: int, use_gpu: bool, cpus_per_worker: int | None) -> list[str]:
        """Whether this cluster can hold ``train``'s Ray Train workers (names relative to the config)."""
        out = []
        per_pod = self.train_workers_per_pod(use_gpu, cpus_per_worker)
        if use_gpu and self.worker_gpus == 0:
            out.append("cluster.worker_gpus: is 0 but train.use_gpu is true; give the worker pods GPUs")
        elif per_pod == 0:
            out.append(
                f"cluster.worker_cpus: {self.worker_cpus} is fewer than train.cpus_per_worker "
                f"{cpus_per_worker}; a Ray Train worker must fit in one pod"
            )
        elif self.worker_replicas * per_pod < num_workers:
            what = f"{self.worker_gpus} GPU(s)" if use_gpu else f"room for {per_pod} worker(s)"
            out.append(
                f"cluster.worker_replicas: {self.worker_replicas} pods with {what} each hold "
                f"{self.worker_replicas * per_pod} Ray Train workers, fewer than train.num_workers "
                f"{num_workers}; raise cluster.worker_replicas or cluster.worker_gpus"
            )
        cpus = self.train_cpus_per_worker(use_gpu, cpus_per_worker)
        if use_gpu and per_pod and cpus * per_pod > self.worker_cpus:
            out.append(
                f"train.cpus_per_worker: {cpus_per_worker} x {per_pod} GPU workers per pod is more than "
                f"cluster.worker_cpus {self.worker_cpus}"
            )
        if num_workers > 1 and self.shared_volume_claim is None:
            out.append(
                "cluster.shared_volume_claim: Ray Train with several workers writes checkpoints that the "
                "driver reads back; name a ReadWriteMany volume claim (or set train.num_workers: 1)"
            )
        return out
