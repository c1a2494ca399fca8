"""Render every deployment file from one config, write them atomically, and find drift.

:func:`render` maps each file's path (relative to the repository root, or to ``--out``) to its
text. The committed files under ``infra/`` are ``render(load_config(DEFAULT_PRESET))``;
``nightshift infra check`` and the tests fail when they differ from a fresh render.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.config import Config, load_config
from core.files import write_atomic
from nightshift.manifests import DEFAULT_PRESET, docker, kuberay, launcher, pods, prefect_pool
from nightshift.manifests.text import dump_json, dump_yaml

LAUNCHER = "infra/cluster/ray-cluster.yaml"
LAUNCHER_PARAMS = "infra/cluster/pretrain-params.json"
RAYJOB = "infra/k8s/rayjob-pretrain.yaml"
RAYSERVICE = "infra/k8s/rayservice.yaml"
NETWORK_POLICY = "infra/k8s/networkpolicy.yaml"
PREFECT_TEMPLATE = "infra/k8s/prefect-base-job-template.json"
PREFECT_PARAMS = "infra/k8s/pretrain-params.json"
DOCKERFILE = "infra/docker/Dockerfile"
DOCKERIGNORE = ".dockerignore"


def _header(preset: str | Path, overrides: Mapping[str, Any]) -> str:
    sets = "".join(f" --set {k}={v}" for k, v in sorted(overrides.items()))
    return (
        f"# Rendered by `nightshift infra render --preset {preset}{sets}`; do not edit: change the\n"
        "# config (or nightshift/manifests/) and re-render. `nightshift infra check` finds drift.\n"
    )


def render(cfg: Config, preset: str | Path, overrides: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Every deployment file for ``cfg``, by relative path.

    Args:
        cfg: the loaded config (``load_config(preset, overrides)``).
        preset: the preset it came from; runs in the cluster load it again (a name, or a YAML file
            inside the repository, which the image holds).
        overrides: the dotted overrides it was loaded with; those a cluster run needs are passed on.

    Raises:
        ValueError: for a preset file outside the repository.
    """
    overrides = dict(overrides or {})
    head = _header(preset, overrides)
    vm_params = prefect_pool.pretrain_params(cfg, preset, overrides, ray_address="auto")
    k8s_params = prefect_pool.pretrain_params(
        cfg, preset, overrides, ray_address=pods.ray_client_address(cfg.cluster)
    )
    return {
        LAUNCHER: head + dump_yaml(launcher.launcher(cfg)),
        LAUNCHER_PARAMS: dump_json(vm_params),
        RAYJOB: head + dump_yaml(kuberay.rayjob(cfg, preset, overrides)),
        RAYSERVICE: head + dump_yaml(kuberay.rayservice(cfg)),
        NETWORK_POLICY: head + dump_yaml(pods.network_policy(cfg)),
        PREFECT_TEMPLATE: dump_json(prefect_pool.base_job_template(cfg)),
        PREFECT_PARAMS: dump_json(k8s_params),
        DOCKERFILE: docker.dockerfile(cfg),
        DOCKERIGNORE: docker.dockerignore(),
    }


def render_preset(preset: str | Path = DEFAULT_PRESET, overrides: Mapping[str, Any] | None = None) -> dict:
    """:func:`render` of ``load_config(preset, overrides)`` (raises ``ConfigError`` for a bad config)."""
    overrides = dict(overrides or {})
    return render(load_config(preset, overrides), preset, overrides)


def write_files(files: Mapping[str, str], out: str | Path) -> list[Path]:
    """Write each file under ``out`` atomically (a temporary sibling renamed into place)."""
    written = []
    for rel, text in files.items():
        written.append(write_atomic(Path(out) / rel, text))
    return written


def drift(files: Mapping[str, str], out: str | Path) -> dict[str, str]:
    """For each file that differs from (or is missing under) ``out``: a unified diff, committed -> fresh."""
    out_diffs = {}
    for rel, text in files.items():
        path = Path(out) / rel
        old = path.read_text() if path.is_file() else ""
        if old != text:
            diff = difflib.unified_diff(
                old.splitlines(keepends=True),
                text.splitlines(keepends=True),
                fromfile=f"{rel} (on disk)" if path.is_file() else f"{rel} (missing)",
                tofile=f"{rel} (fresh render)",
            )
            out_diffs[rel] = "".join(diff)
    return out_diffs
