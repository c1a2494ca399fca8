"""Deployment manifests rendered from the config: the Ray cluster launcher YAML, the KubeRay RayJob
(pretraining) and RayService (serving), the Prefect Kubernetes work-pool template, the Dockerfile.

``nightshift infra render`` writes them (``infra/cluster/``, ``infra/k8s/``, ``infra/docker/``);
``nightshift infra check`` fails when the committed files drift from a fresh render or do not
validate (:mod:`nightshift.manifests.validate`). The modules build plain data; nothing here talks
to a cluster.
"""

from pathlib import Path

# The preset the committed files are rendered from: the GPU preset a cluster runs nightly.
DEFAULT_PRESET = "gpt2-124m"
REPO_ROOT = Path(__file__).resolve().parents[2]
