"""Config of serving: the Ray Serve application, its engine, auth, limits and autoscaling."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from core.config_base import Section

# The Serve proxy's header timeout (serving/proxy_guard.py) reaches Ray's proxy process through its
# environment, inherited from the raylet: these must be set before Ray starts.
PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "serving.proxy_guard.install"
HEADER_TIMEOUT_ENV = "NIGHTSHIFT_SERVE_HEADER_TIMEOUT_S"
DEFAULT_HEADER_TIMEOUT_S = 10.0


def proxy_env(header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S) -> dict[str, str]:
    """The environment Ray's processes need for the Serve proxy to take ``serve.header_timeout_s``."""
    return {PROXY_CALLBACK_ENV: PROXY_CALLBACK, HEADER_TIMEOUT_ENV: f"{header_timeout_s:g}"}


class ServeConfig(Section):
    # --- where ---
    host: str = Field("127.0.0.1", description="Address the Serve HTTP proxy binds to.")
    port: int = Field(8000, ge=1, le=65535, description="Port of the Serve HTTP proxy.")
    app_name: str = Field("nightshift", description="Ray Serve application name.")
    route_prefix: str = Field("/", description="URL path the application is served under.")
    model_name: str = Field("nightshift-gpt", description="Model id clients pass as `model`.")
    registered_model: str = Field("nightshift-gpt", description="MLflow registered model to serve from.")
    # --- auth and limits ---
    auth: Literal["api_key", "none"] = Field(
        "api_key", description="'api_key': Bearer keys required; 'none': open (local demo only)."
    )
    api_key_hashes: list[str] = Field(
        default_factory=list, description="sha256 hex digests of accepted API keys (never the keys)."
    )
    api_key_file: str | None = Field(
        None,
        description="File of sha256 digests, one per line (default $NIGHTSHIFT_HOME/api-keys.sha256): "
        "static keys (client role, revoked only by a restart); named keys with roles live in the catalog "
        "(`nightshift keys create`). Plain keys may also come from $NIGHTSHIFT_API_KEYS.",
    )
    key_cache_s: float = Field(
        5.0,
        ge=0,
        description="How long a replica keeps a catalog key lookup: a revoked key stops working within this.",
    )
    completions_per_minute: float = Field(
        600,
        ge=0,
        description="Per key and replica: completion requests a minute (429 beyond; 0: no limit; none "
        "with auth 'none', which has no keys).",
    )
    feedback_per_minute: float = Field(
        120, ge=0, description="Per key and replica: feedback posts a minute (429 beyond; 0: no limit)."
    )
    rate_limit_burst_s: float = Field(
        10, gt=0, description="A key may send this many seconds' worth of its rate at once before 429s start."
    )
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest request body accepted (413 above).")
    max_n: int = Field(8, ge=1, description="Largest `n` (choices per prompt) accepted.")
    max_prompts: int = Field(
        32, ge=1, description="Largest prompt list of one /v1/completions request (400 above)."
    )
    # --- slow clients (docs/reliability.md, "Abuse") ---
    body_timeout_s: float = Field(
        30, gt=0, description="A request body must have arrived this long after its headers (408 after)."
    )
    request_timeout_s: float = Field(
        300, gt=0, description="Serve proxy: end-to-end limit of one request, a stream included (then cut)."
    )
    keep_alive_timeout_s: int = Field(
        15, ge=1, description="Serve proxy: an idle keep-alive connection is closed after this many seconds."
    )
    header_timeout_s: float = Field(
        DEFAULT_HEADER_TIMEOUT_S,
        ge=0,
        description="Serve proxy: a request's headers must have arrived this long after it began (408 "
        "and closed after; 0 turns it off). Ray's processes must start with it (serving/proxy_guard.py).",
    )
    # --- engine ---
    max_batch: int = Field(32, ge=1, description="Sequences decoded together (KV cache slots).")
    max_waiting: int = Field(256, ge=1, description="Requests queued beyond the batch; more get 429.")
    torch_threads: int = Field(2, ge=1, description="Intra-op threads of each replica's engine.")
    engine_process: bool = Field(
        True,
        description="Run each replica's engine in a child process (its own GIL, so decode steps do not "
        "wait for the replica's HTTP work); false runs it as a thread of the replica.",
    )
    gil_switch_interval_ms: float = Field(
        0.5, gt=0, description="Python's GIL switch interval in a replica (engine thread vs event loop)."
    )
    stream_interval_ms: float = Field(
        20, ge=0, description="A stream writes what accumulated at most this often after its first token."
    )
    stream_writes_per_s: float = Field(
        250,
        ge=0,
        description="Stream writes per second a replica aims at over all its open streams: with many "
        "streams each writes less often than stream_interval_ms (0: no replica-wide aim).",
    )
    # --- replicas ---
    replica_cpus: float = Field(
        0.5, gt=0, description="Logical CPUs a replica reserves in Ray (small: training needs the rest)."
    )
    min_replicas: int = Field(1, ge=0, description="Autoscaling: fewest replicas.")
    max_replicas: int = Field(1, ge=1, description="Autoscaling: most replicas.")
    target_ongoing_requests: float = Field(16, gt=0, description="Autoscaling: ongoing requests per replica.")
    max_ongoing_requests: int = Field(
        64, ge=1, description="Requests Serve routes to one replica at once (the engine queues within)."
    )
    deploy_stage: bool = Field(
        True, description="pretrain/nightly ends by serving its model (off: train only)."
    )
    rollout_timeout_s: float = Field(300, gt=0, description="How long new replicas may take to answer.")
    record_completions: bool = Field(True, description="Store every completion in the catalog.")

    def problems(self) -> list[str]:
        out = []
        if not self.route_prefix.startswith("/"):
            out.append(f"route_prefix: must start with '/', got {self.route_prefix!r}")
        if self.min_replicas > self.max_replicas:
            out.append(f"min_replicas: {self.min_replicas} is more than max_replicas {self.max_replicas}")
        for h in self.api_key_hashes:
            if len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
                out.append(
                    "api_key_hashes: each entry must be a 64-digit lowercase sha256 hex digest of a key; "
                    "named keys with roles come from `nightshift keys create --name NAME`"
                )
                break
        return out
