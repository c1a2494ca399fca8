"""The image every pod and launcher node runs: Python 3.11, uv.lock's runtime set, this repository.

One image for the Ray head and workers, the Serve replicas and the Prefect flow-run pods, so
every process imports the same code against the same pinned packages. torch comes from the
PyTorch index named by the build argument ``TORCH_INDEX_URL`` (CPU wheels by default; a CUDA
index for GPU nodes), at the version uv.lock pins; then uv installs the rest of the lock's
runtime set, hash-checked: no dev tools, the extras a cluster uses (``postgres``, ``s3``).
"""

from __future__ import annotations

import tomllib
from importlib import metadata

from core.config import Config
from nightshift.manifests import REPO_ROOT

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# The optional parts (pyproject's extras) a cluster needs: its catalog on Postgres, artifacts on S3.
IMAGE_EXTRAS = ("postgres", "s3")


def uv_version() -> str:
    """The uv that pyproject's ``[tool.uv] required-version`` pins (``==0.13.8`` -> ``0.13.8``)."""
    with open(REPO_ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["uv"]["required-version"].removeprefix("==")


def _pinned(package: str) -> str:
    """The installed version without a local label (``2.13.0+cpu`` -> ``2.13.0``), as the lock pins it."""
    return metadata.version(package).split("+", 1)[0]


def dockerfile(cfg: Config) -> str:
    cc = cfg.cluster
    torch = _pinned("torch")
    return f"""\
# syntax=docker/dockerfile:1
# Rendered by `nightshift infra render` from the config (core/cluster_config.py); edit the config
# or nightshift/manifests/, then re-render. Build from the repository root:
#   docker build -f infra/docker/Dockerfile -t {cc.image} .
#   GPU nodes: add --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 (a CUDA index)
FROM python:3.11-slim

# torch's wheel index: CPU wheels by default, a CUDA one (cu126, cu128, ...) for GPU nodes.
ARG TORCH_INDEX_URL={CPU_INDEX}
ARG TORCH_VERSION={torch}

ENV PYTHONDONTWRITEBYTECODE=1 \\
    PYTHONUNBUFFERED=1 \\
    PIP_NO_CACHE_DIR=1 \\
    PIP_DISABLE_PIP_VERSION_CHECK=1 \\
    NIGHTSHIFT_REPO={cc.repo_dir} \\
    NIGHTSHIFT_HOME={cc.home_dir}

# KubeRay's health probes call wget; git lets MLflow record the code version.
RUN apt-get update \\
    && apt-get install -y --no-install-recommends wget git \\
    && rm -rf /var/lib/apt/lists/*

# User `ray` (uid 1000) in group `users` (100), the group the pods' fsGroup gives the shared volume.
RUN useradd --create-home --uid 1000 --gid 100 --shell /bin/bash ray \\
    && mkdir -p {cc.repo_dir} {cc.home_dir} \\
    && chown ray:users {cc.repo_dir} {cc.home_dir}

WORKDIR {cc.repo_dir}

# Dependencies first, so a code change does not reinstall them: torch from its index, then uv.lock's
# runtime set (no dev group; extras {", ".join(IMAGE_EXTRAS)}), every file checked against the lock's hashes.
COPY pyproject.toml uv.lock ./
RUN pip install "uv=={uv_version()}" \\
    && pip install --index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION" \\
    && uv export --frozen --no-dev --no-emit-project --no-emit-package torch \\
        {" ".join(f"--extra {e}" for e in IMAGE_EXTRAS)} -o /tmp/runtime.txt \\
    && uv pip install --system --no-deps --require-hashes -r /tmp/runtime.txt \\
    && rm /tmp/runtime.txt

# The package, editable: configs/, prefect.yaml and flows/ stay where the code looks for them.
COPY --chown=ray:users . ./
RUN pip install --no-deps -e .

USER ray
CMD ["bash"]
"""


def dockerignore() -> str:
    return """\
# Rendered by `nightshift infra render`; keeps local state and build litter out of the image.
.git
.venv
.nightshift
**/__pycache__
**/*.pyc
*.egg-info
.pytest_cache
.ruff_cache
build
dist
mlruns
mlflow.db
tests
bench
"""
