"""The one config system: typed sections with help text, YAML presets, dotted overrides.

A pipeline config is one :class:`Config` made of one section per concern (``data``, ``model``,
``train``, ``tracking``, ``ray``, ``stack``). Each section is a pydantic model whose fields carry
their help text as ``description``; ``nightshift config --fields`` prints them.

Configs come from a preset (``configs/<name>.yaml`` or a path to a YAML file) and dotted
overrides, from the CLI (``--data.vocab_size 4096``) or from a Prefect parameter
(``{"data.vocab_size": 4096}``). Every problem — an unknown key, a wrong type, an inconsistent
combination — is collected and raised at once in one :class:`ConfigError`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError

from core.cluster_config import ClusterConfig
from core.config_base import ConfigError, Section, did_you_mean
from core.data_config import DataConfig
from core.eval_config import EvalConfig
from core.files import write_atomic
from core.model_config import ModelConfig
from core.rlhf_config import RLHFConfig
from core.serve_config import ServeConfig
from core.train_config import TrainConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
PRESETS = ("tiny", "small", "gpt2-124m")


def nightshift_home() -> Path:
    """The root of all local state: ``$NIGHTSHIFT_HOME``, default ``./.nightshift``."""
    return Path(os.environ.get("NIGHTSHIFT_HOME", ".nightshift")).expanduser().resolve()


class TrackingConfig(Section):
    # --- MLflow ---
    mlflow_uri: str = Field(
        default_factory=lambda: os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000"),
        description="MLflow tracking URI; `nightshift up` serves one on http://127.0.0.1:5000.",
    )
    experiment: str = Field("nightshift", description="MLflow experiment that holds every pipeline run.")
    # --- catalog and artifacts ---
    catalog_url: str = Field(
        default_factory=lambda: os.environ.get(
            "NIGHTSHIFT_CATALOG_URL", f"sqlite:///{nightshift_home() / 'catalog.db'}"
        ),
        description="SQLAlchemy URL of the lineage catalog (SQLite by default, Postgres in production).",
    )
    artifact_root: str = Field(
        default_factory=lambda: os.environ.get("NIGHTSHIFT_ARTIFACTS", str(nightshift_home() / "artifacts")),
        description="Directory or fsspec URL under which stage artifacts are published by content hash.",
    )
    prefect_ui: str = Field(
        default_factory=lambda: os.environ.get("NIGHTSHIFT_PREFECT_UI", "http://127.0.0.1:4200"),
        description="Base URL of the Prefect UI, for links in summaries.",
    )

    def problems(self) -> list[str]:
        out = []
        if not self.experiment.strip():
            out.append("experiment: must not be empty")
        return out


class RayConfig(Section):
    address: str = Field(
        default_factory=lambda: os.environ.get("RAY_ADDRESS", "local"),
        description="'local' starts an in-process Ray; 'auto' joins the running head (nightshift up); "
        "or a cluster address such as ray://head:10001.",
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a 'local' Ray (default: all).")
    # --- how stages size what they ask Ray for (training/placement.py) ---
    placement: Literal["auto", "fit", "exact"] = Field(
        "auto",
        description="How a stage sizes its Ray workers (pretraining, RLHF, ingestion). 'fit': from the CPUs "
        "free when the stage starts, beside the Serve replicas: the configured worker count shares them "
        "(each at least min_worker_cpus), or fewer workers (a count that divides the batch) when they do "
        "not fit. 'exact': the configured workers and CPUs, waiting up to placement_timeout_s for a "
        "cluster autoscaler. 'auto': 'fit' when every Ray node is on this machine's loopback (the local "
        "stack, a local Ray), else 'exact'.",
    )
    min_worker_cpus: float = Field(
        0.25, gt=0, le=64, description="'fit': the smallest CPU share a worker may reserve."
    )
    placement_timeout_s: float = Field(
        120.0,
        gt=0,
        description="How long a stage waits for Ray to place its workers before it fails with a message "
        "naming what it asked for and what holds the rest (raise it for a cluster autoscaler).",
    )


LOOPBACK_HOSTS = ("127.", "localhost", "::1")


def is_loopback(host: str) -> bool:
    return host.startswith(LOOPBACK_HOSTS)


class StackConfig(Section):
    host: str = Field(
        "127.0.0.1",
        description="Address the local services bind to. Anything but loopback needs mlflow_auth, "
        "prefect_auth and dashboard_identity_header (the dashboard itself stays on loopback).",
    )
    # --- auth, required off loopback ---
    mlflow_auth: bool = Field(
        False,
        description="Run MLflow's basic-auth app (admin password generated in "
        "$NIGHTSHIFT_HOME/mlflow-admin-password; the stack's clients get MLFLOW_TRACKING_USERNAME/PASSWORD).",
    )
    prefect_auth: bool = Field(
        False,
        description="Give the Prefect server an auth string (generated in "
        "$NIGHTSHIFT_HOME/prefect-auth-string; the stack's clients get PREFECT_API_AUTH_STRING).",
    )
    dashboard_identity_header: str | None = Field(
        None,
        description="The header an authenticating proxy in front of the dashboard sets to the user's name "
        "(e.g. X-Forwarded-User); the dashboard binds loopback and trusts only that proxy.",
    )
    prefect_port: int = Field(4200, ge=1, le=65535, description="Prefect server (API and UI).")
    mlflow_port: int = Field(5000, ge=1, le=65535, description="MLflow tracking server and UI.")
    ray_port: int = Field(6379, ge=1, le=65535, description="Ray head GCS port.")
    ray_dashboard_port: int = Field(8265, ge=1, le=65535, description="Ray dashboard.")
    ray_num_cpus: int | None = Field(None, ge=1, description="CPUs the Ray head offers (default: all).")
    ray_client_port: int = Field(10001, ge=1, le=65535, description="Ray client server (ray://) port.")
    dashboard_port: int = Field(8501, ge=1, le=65535, description="Streamlit dashboard.")
    ray_dashboard_agent_port: int = Field(
        52365, ge=1, le=65535, description="HTTP port of the Ray head's dashboard agent."
    )
    ray_metrics_port: int = Field(
        8080,
        ge=1,
        le=65535,
        description="Ray head's Prometheus metrics port: every Serve replica's metrics (serving/metrics.py), "
        "tagged by replica, and Ray's own; scrape http://HOST:PORT/metrics.",
    )
    ray_object_store_bytes: int = Field(
        1_000_000_000, ge=78_643_200, description="Object store memory of the Ray head, in bytes."
    )
    ray_temp_dir: str | None = Field(
        None,
        description="Ray's temp/session dir (default: $NIGHTSHIFT_HOME/ray, or a short /tmp path when that "
        "is too long for Ray's unix sockets).",
    )
    work_pool: str = Field("nightshift-local", description="Prefect process work pool the worker serves.")
    start_timeout_s: float = Field(120.0, gt=0, description="How long `up` waits for each health check.")
    set_profile: bool = Field(
        True,
        description="`up` creates and activates a Prefect profile 'nightshift' pointing at the local server "
        "(`down` re-activates the previous one), so plain `prefect ...` commands reach it.",
    )
    # --- storage backends (nightshift/backends.py) ---
    backend: Literal["embedded", "postgres"] = Field(
        default_factory=lambda: os.environ.get("NIGHTSHIFT_STACK_BACKEND") or "embedded",
        description="'embedded': SQLite for Prefect, MLflow and the catalog, artifacts on local disk. "
        "'postgres': Prefect, MLflow and the catalog on PostgreSQL (`up` starts one on loopback unless "
        "postgres_url names an external one); artifacts on local disk, or on S3 when s3_endpoint is set.",
    )
    postgres_url: str | None = Field(
        default_factory=lambda: os.environ.get("NIGHTSHIFT_POSTGRES_URL") or None,
        description="An existing PostgreSQL server for backend 'postgres' "
        "(postgresql://user:password@host:5432); `up` creates the databases prefect, mlflow and catalog "
        "on it. Unset: `up` runs a local Postgres 15.",
    )
    postgres_port: int = Field(5433, ge=1, le=65535, description="The local Postgres of backend 'postgres'.")
    postgres_dir: str | None = Field(
        None,
        description="Where the local Postgres keeps its cluster (default: $NIGHTSHIFT_HOME/postgres). Run as "
        "root, the server runs as user postgres, which must be able to reach this directory.",
    )
    s3_endpoint: str | None = Field(
        default_factory=lambda: os.environ.get("NIGHTSHIFT_S3_ENDPOINT") or None,
        description="An S3-compatible endpoint for backend 'postgres' (https://...; credentials from "
        "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY). Unset: artifacts stay on the local disk.",
    )
    s3_bucket: str = Field(
        "nightshift",
        description="Bucket holding s3://<bucket>/artifacts and MLflow's s3://<bucket>/mlflow.",
    )

    def problems(self) -> list[str]:
        ports = {
            "prefect_port": self.prefect_port,
            "mlflow_port": self.mlflow_port,
            "ray_port": self.ray_port,
            "ray_dashboard_port": self.ray_dashboard_port,
            "ray_client_port": self.ray_client_port,
            "ray_dashboard_agent_port": self.ray_dashboard_agent_port,
            "ray_metrics_port": self.ray_metrics_port,
            "dashboard_port": self.dashboard_port,
        }
        if self.backend == "postgres" and not self.postgres_url:
            ports["postgres_port"] = self.postgres_port
        seen: dict[int, str] = {}
        out = []
        if not is_loopback(self.host):
            missing = [
                name
                for name, ok in (
                    ("stack.mlflow_auth: true", self.mlflow_auth),
                    ("stack.prefect_auth: true", self.prefect_auth),
                    (
                        "stack.dashboard_identity_header: <header your proxy sets>",
                        self.dashboard_identity_header,
                    ),
                )
                if not ok
            ]
            if missing:
                out.append(
                    f"host: {self.host!r} is not loopback, and on it MLflow, Prefect and the dashboard would "
                    f"answer anyone without auth; set {', '.join(missing)} (or keep host 127.0.0.1)"
                )
        if self.postgres_url and not self.postgres_url.startswith(("postgresql://", "postgres://")):
            out.append(
                f"postgres_url: {self.postgres_url.split('@')[-1]!r} is not a postgresql:// URL; write "
                "postgresql://user:password@host:5432"
            )
        if self.s3_endpoint and not self.s3_endpoint.startswith(("http://", "https://")):
            out.append(f"s3_endpoint: {self.s3_endpoint!r} is not an http(s):// URL")
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", self.s3_bucket):
            out.append(
                f"s3_bucket: {self.s3_bucket!r} is not a valid bucket name; use 3-63 lowercase letters, "
                "digits, dots and hyphens"
            )
        for name, port in ports.items():
            if port in seen:
                out.append(f"{name}: port {port} is already used by {seen[port]}; pick another")
            seen[port] = name
            # Ray hands 10002-19999 to its worker processes and refuses a head port inside that range.
            if name.startswith("ray_") and 10002 <= port <= 19999:
                out.append(f"{name}: port {port} is in Ray's worker port range 10002-19999; pick another")
        return out


# The stages whose results a night reuses (training/stage_cache.py); deploy always runs.
CACHED_STAGES = ("ingest", "tokenize", "pretrain", "sft", "reward", "ppo", "dpo", "grpo", "evaluate")


class NightConfig(Section):
    """How long a night's stages may run before the night counts as stuck (flows/watchdog.py), and
    which stages may reuse a cached result (training/stage_cache.py)."""

    stage_limit_s: float = Field(
        6 * 3600.0,
        gt=0,
        description="A stage of a night that runs longer than this is stuck: the flow ends the night "
        "`Crashed` with the reason (so the next night can run) and `nightshift status` flags it.",
    )
    stage_limits: dict[str, float] = Field(
        default_factory=dict,
        description="Per-stage limits in seconds that replace stage_limit_s, e.g. {pretrain: 43200} "
        "(stages: ingest, tokenize, pretrain, sft, reward, ppo, dpo, grpo, evaluate, deploy).",
    )

    cache: bool = Field(
        True,
        description="Reuse a stage's result when an earlier run of the same identity (input hashes, the "
        "config it reads, the code version) published it and it still verifies; a re-run night resumes "
        "at the stage that failed. false (the pretrain flow's no_cache parameter) runs every stage.",
    )
    rerun: list[str] = Field(
        default_factory=list,
        description="Stages that run even when a cached result exists, e.g. [pretrain] (stages: "
        "ingest, tokenize, pretrain, sft, reward, ppo, dpo, grpo, evaluate).",
    )

    def limit(self, stage: str) -> float:
        """The limit of ``stage`` in seconds."""
        return float(self.stage_limits.get(stage, self.stage_limit_s))

    def cached(self, stage: str) -> bool:
        """Whether ``stage`` may reuse a cached result."""
        return self.cache and stage not in self.rerun

    def problems(self) -> list[str]:
        out = [
            f"stage_limits.{k}: {v} must be above 0 seconds" for k, v in self.stage_limits.items() if v <= 0
        ]
        out += [
            f"rerun: unknown stage {s!r}; stages that cache: {', '.join(CACHED_STAGES)}"
            for s in self.rerun
            if s not in CACHED_STAGES
        ]
        return out


class GCConfig(Section):
    """What `nightshift gc` and the maintenance/gc deployment keep (catalog/retention.py)."""

    keep_nights: int = Field(
        7,
        ge=1,
        description="Artifacts (and checkpoints) that the newest N pipeline runs read or wrote are kept.",
    )
    keep_versions: int = Field(
        5,
        ge=1,
        description="Registry versions kept besides those with an alias or a deployment: the newest N. "
        "Older ones are deleted from the registry (with their logged model) and their model artifacts go.",
    )
    min_age_s: float = Field(
        3600.0,
        ge=0,
        description="Nothing younger than this is removed, whatever references it (a night in flight).",
    )
    keep_history_nights: int = Field(
        90,
        ge=1,
        description="MLflow keeps the runs (metrics, params, reports) of the newest N pipeline runs, and the "
        "run of every kept registry version; older ones are deleted from MLflow. The catalog keeps every "
        "run's row and lineage.",
    )
    log_max_bytes: int = Field(
        20_000_000,
        ge=10_000,
        description="A local service's log over this size is rotated (by `up` and by gc): "
        "<name>.log -> <name>.log.1 ...",
    )
    log_backups: int = Field(3, ge=1, description="Rotated logs kept per service.")
    prefect_days: float = Field(
        90.0,
        ge=1,
        description="The stack's Prefect server deletes flow runs (and their logs) and events older than "
        "this, with its own database vacuum.",
    )


class Config(Section):
    """The whole pipeline config, one section per concern."""

    preset: str = Field("tiny", description="Name of the preset this config was loaded from.")
    seed: int = Field(1337, description="Global seed; every stage derives its own from it.")
    data: DataConfig = Field(default_factory=DataConfig, description="Ingestion, tokenizer and shards.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="GPT architecture.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Pretraining loop.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow and the catalog.")
    ray: RayConfig = Field(default_factory=RayConfig, description="Where Ray work runs.")
    stack: StackConfig = Field(default_factory=StackConfig, description="The local stack of `nightshift up`.")
    rlhf: RLHFConfig = Field(default_factory=RLHFConfig, description="SFT, reward model, PPO, DPO, GRPO.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation and promotion gates.")
    serve: ServeConfig = Field(default_factory=ServeConfig, description="Serving on Ray Serve.")
    cluster: ClusterConfig = Field(
        default_factory=ClusterConfig, description="The GPU cluster `nightshift infra render` targets."
    )
    night: NightConfig = Field(
        default_factory=NightConfig, description="Limits of a night's stages, and stage caching."
    )
    gc: GCConfig = Field(default_factory=GCConfig, description="Retention: what gc keeps.")

    def problems(self) -> list[str]:
        out: list[str] = []
        sections = (
            "data", "model", "train", "tracking", "ray", "stack", "rlhf", "eval", "serve", "cluster",
            "night", "gc",
        )  # fmt: skip
        for name in sections:
            section: Section = getattr(self, name)
            out.extend(f"{name}.{p}" for p in section.problems())
        t = self.train
        out.extend(self.cluster.problems_for(t.num_workers, t.use_gpu, t.cpus_per_worker))
        if self.model.vocab_size < self.data.vocab_size:
            out.append(
                f"model.vocab_size: {self.model.vocab_size} is smaller than data.vocab_size "
                f"{self.data.vocab_size}; the model must cover every token id"
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def save(self, path: str | Path) -> Path:
        """Write this config as YAML (atomically), e.g. next to the artifact it produced."""
        return write_atomic(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def _preset_path(preset: str | Path) -> Path:
    p = Path(preset)
    if p.suffix in (".yaml", ".yml"):
        return p
    return CONFIG_DIR / f"{preset}.yaml"


def _set_dotted(tree: dict[str, Any], key: str, value: Any, problems: list[str]) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            problems.append(f"{key}: '{part}' is a value, not a section")
            return
        node = child
    node[parts[-1]] = value


def _format_validation_error(err: ValidationError) -> list[str]:
    out = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        if e["type"] == "extra_forbidden":
            hint = did_you_mean(loc, [key for key, _, _ in describe_fields()])
            out.append(f"{loc}: unknown key{hint} (`nightshift config --fields` lists the known ones)")
        else:
            out.append(f"{loc}: {e['msg']} (got {e.get('input')!r})")
    return out


def parse_value(text: str) -> Any:
    """Parse a CLI override value as YAML, so ``4096`` is an int, ``false`` a bool, ``[a, b]`` a list."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_cli_overrides(args: Sequence[str]) -> dict[str, Any]:
    """Turn ``["--data.vocab_size", "4096", "--train.lr=3e-4"]`` into ``{"data.vocab_size": 4096, ...}``.

    Raises:
        ConfigError: for a token that is not a ``--section.key`` override or that lacks a value.
    """
    out: dict[str, Any] = {}
    problems = []
    i = 0
    args = list(args)
    while i < len(args):
        tok = args[i]
        if not tok.startswith("--") or "." not in tok.split("=", 1)[0]:
            problems.append(
                f"{tok}: not an override; write --section.key VALUE (e.g. --data.vocab_size 4096)"
            )
            i += 1
            continue
        if "=" in tok:
            key, value = tok[2:].split("=", 1)
            i += 1
        elif i + 1 < len(args) and not (args[i + 1].startswith("--") and "." in args[i + 1]):
            key, value = tok[2:], args[i + 1]
            i += 2
        else:
            problems.append(f"{tok}: missing a value")
            i += 1
            continue
        out[key] = parse_value(value)
    if problems:
        raise ConfigError(problems, source="command line")
    return out


def load_config(
    preset: str | Path = "tiny",
    overrides: Mapping[str, Any] | Iterable[str] | None = None,
) -> Config:
    """Load a preset and apply dotted overrides; validate everything at once.

    Args:
        preset: a preset name from ``configs/`` (``tiny``, ``small``, ``gpt2-124m``) or a YAML path.
        overrides: ``{"data.vocab_size": 4096}`` or CLI tokens ``["--data.vocab_size", "4096"]``.

    Raises:
        ConfigError: listing every problem (unknown preset or key, bad type, inconsistent values).
    """
    path = _preset_path(preset)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise ConfigError([f"preset: '{preset}' not found at {path}; known presets: {known}"])
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError([f"{path}: not valid YAML: {e}"]) from e
    if not isinstance(tree, dict):
        raise ConfigError([f"{path}: must hold a mapping of sections, got {type(tree).__name__}"])
    tree.setdefault("preset", Path(preset).stem if path.suffix else str(preset))

    problems: list[str] = []
    if overrides is not None and not isinstance(overrides, Mapping):
        overrides = parse_cli_overrides(list(overrides))
    for key, value in (overrides or {}).items():
        _set_dotted(tree, key, parse_value(value) if isinstance(value, str) else value, problems)
    try:
        cfg = Config.model_validate(tree)
    except ValidationError as e:
        problems.extend(_format_validation_error(e))
        # Also report the cross-field problems of the sections that did validate, so one run of the
        # command shows every mistake rather than the first layer of them.
        for name, field in Config.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, Section) and isinstance(tree.get(name, {}), dict):
                try:
                    section = ann.model_validate(tree.get(name, {}))
                except ValidationError:
                    continue
                problems.extend(f"{name}.{p}" for p in section.problems())
        raise ConfigError(problems, source=str(path)) from None
    problems.extend(cfg.problems())
    if problems:
        raise ConfigError(problems, source=str(path))
    return cfg


def describe_fields(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, help) for every leaf field, for ``--help`` output and the docs."""
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(describe_fields(ann, prefix=f"{key}."))
            continue
        factory = field.default_factory
        if factory is None:
            default = repr(field.default)
        elif factory in (dict, list):
            default = repr(factory())  # an empty container, not something read from the environment
        else:
            default = "(from environment)"
        rows.append((key, default, field.description or ""))
    return rows
