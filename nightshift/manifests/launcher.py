"""The Ray cluster launcher config (``ray up infra/cluster/ray-cluster.yaml``) for GPU VMs.

Every node runs our image in Docker (the launcher starts the container and runs ``ray start``
inside it), so the VMs get exactly the pinned requirements of the Kubernetes pods; a setup
command refuses an image whose Ray is not ``cluster.ray_version``. The provider and node configs
come from ``cluster.launcher_provider`` / ``head_node_config`` / ``worker_node_config`` (AWS by
default); the nodes' environment points at the same in-cluster storage as the pods.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from core.config import Config
from nightshift.manifests import pods

# Ray's object manager port, fixed so security groups can allow it; the launcher's default.
OBJECT_MANAGER_PORT = 8076


def _version_check(version: str) -> str:
    """A setup command that fails, naming both versions, when the image's Ray is not ``version``."""
    want = json.dumps(version)
    code = (
        f"import ray, sys; sys.exit(ray.__version__ != {want} and "
        f'"the image has Ray " + ray.__version__ + ", cluster.ray_version is " + {want})'
    )
    return shlex.join(["python", "-c", code])


def launcher(cfg: Config) -> dict[str, Any]:
    """The launcher YAML as a dict (keys in the order of Ray's example configs)."""
    cc = cfg.cluster
    env = pods.cluster_env(cfg)
    run_options = ["--ulimit nofile=65536:65536", f"--volume {cc.home_dir}:{cc.home_dir}"]
    run_options += [f"--env {k}={shlex.quote(v)}" for k, v in env.items()]
    head_flags = (
        f"--head --port={pods.RAY_GCS_PORT} --object-manager-port={OBJECT_MANAGER_PORT} "
        f"--autoscaling-config=~/ray_bootstrap_config.yaml --dashboard-host=0.0.0.0 "
        f"--num-cpus={cc.head_cpus} --num-gpus={cc.head_gpus}"
    )
    worker_flags = (
        f"--address=$RAY_HEAD_IP:{pods.RAY_GCS_PORT} --object-manager-port={OBJECT_MANAGER_PORT} "
        f"--num-cpus={cc.worker_cpus} --num-gpus={cc.worker_gpus}"
    )
    return {
        "cluster_name": cc.name,
        "max_workers": cc.worker_max_replicas,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": cc.idle_timeout_minutes,
        "provider": dict(cc.launcher_provider),
        "auth": {"ssh_user": cc.launcher_ssh_user},
        "docker": {
            "image": cc.image,
            "container_name": cc.name,
            "pull_before_run": True,
            "run_options": run_options,
        },
        "available_node_types": {
            "head": {
                "node_config": dict(cc.head_node_config),
                "resources": {"CPU": cc.head_cpus, "GPU": cc.head_gpus},
                "min_workers": 0,
                "max_workers": 0,
            },
            "gpu-workers": {
                "node_config": dict(cc.worker_node_config),
                "resources": {"CPU": cc.worker_cpus, "GPU": cc.worker_gpus},
                "min_workers": cc.worker_min_replicas,
                "max_workers": cc.worker_max_replicas,
            },
        },
        "head_node_type": "head",
        # Shared storage: mount the same network filesystem at cluster.home_dir on every VM
        # (e.g. EFS in initialization_commands); the container sees it through --volume above.
        "file_mounts": {},
        "initialization_commands": [],
        "setup_commands": [_version_check(cc.resolved_ray_version())],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": ["ray stop", f"ulimit -n 65536; ray start {head_flags}"],
        "worker_start_ray_commands": ["ray stop", f"ulimit -n 65536; ray start {worker_flags}"],
    }
