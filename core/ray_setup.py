"""Start or join Ray the same way everywhere (CLI, Prefect tasks, tests, benchmarks), and run Ray Train."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from core.config import RayConfig
from core.serve_config import proxy_env

# Ray is imported inside the functions that use it, not here: it takes a second or more to
# import, and not every user of this module needs it.

log = logging.getLogger(__name__)

# A local Ray's shared-memory object store: enough for streaming ingestion, small enough to share
# a laptop or CI machine with other processes.
LOCAL_OBJECT_STORE_BYTES = 768 * 2**20
_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
_CLUSTER_MODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def quiet_ray_data() -> None:
    """Turn off Ray Data's progress bars and per-run banners; errors are still raised and logged."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    ctx.verbose_stats_logs = False


def _loopback_only() -> None:
    """Keep a local Ray's processes (GCS, raylet, agents, workers) on 127.0.0.1.

    Ray swaps a loopback node address for the machine's outbound one, and then listens on every
    interface, unless its "cluster mode" is off. A local Ray is one machine, so it is turned off
    here, unless the user set ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` themselves. Ray's processes read
    the variable from the environment they inherit; this process read it when Ray was imported, so
    the constant is set too (the one place Ray consults it is ``services.get_node_ip_address``).
    """
    if os.environ.setdefault(_CLUSTER_MODE_ENV, "0") == "0":
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False


LOCAL_SYSTEM_CONFIG = {"task_events_report_interval_ms": 0, "enable_metrics_collection": False}


def _serve_proxy_env() -> None:
    """Give a local Ray's processes the Serve proxy's header timeout (``serving/proxy_guard.py``).

    The proxy reads it from the environment it inherits from its raylet, so it must be set before Ray
    starts; ``$NIGHTSHIFT_SERVE_HEADER_TIMEOUT_S`` already set (``serving.deploy`` sets it from
    ``serve.header_timeout_s``) wins.
    """
    for key, value in proxy_env().items():
        os.environ.setdefault(key, value)


def init_ray(cfg: RayConfig | None = None) -> None:
    """Initialise Ray once per process; later calls are no-ops.

    ``address='local'`` starts an in-process Ray with ``cfg.num_cpus`` CPUs, no dashboard, a
    768 MB object store and worker logs kept out of the driver's output. ``'auto'`` or a cluster
    address (``ray://head:10001``) joins an existing cluster.

    Args:
        cfg: where Ray runs; default ``RayConfig()`` (``$RAY_ADDRESS`` or local).
    """
    import ray

    cfg = cfg or RayConfig()
    if not ray.is_initialized():
        with _keep_sigterm_handler():
            _init(cfg)
    quiet_ray_data()


@contextlib.contextmanager
def _keep_sigterm_handler() -> Iterator[None]:
    """Put back the SIGTERM handler that ``ray.init`` replaces with ``sys.exit``.

    A Prefect flow run is cancelled by SIGTERM, which Prefect's own handler turns into a
    cancellation (the run ends ``Cancelled`` and its ``on_cancellation`` hooks run). ``ray.init``
    swaps in a handler of its own, so a night cancelled while it waits on Ray ended ``Crashed``.
    The driver's Ray work (Train controller, workers, placement groups) is released when the process
    ends either way.
    """
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if main and before is not None:
            signal.signal(signal.SIGTERM, before)


def _init(cfg: RayConfig) -> None:
    import ray

    # Workers must import this repository's packages even when it is not pip-installed.
    runtime_env = {"env_vars": {"PYTHONPATH": _REPO_ROOT}}
    if cfg.address == "local":
        log.info("starting a local Ray (num_cpus=%s)", cfg.num_cpus)
        _loopback_only()
        _serve_proxy_env()
        ray.init(
            # "local" always starts a new Ray: without it, ray.init() joins a head that `ray start`
            # (or `nightshift up`) runs on this machine, and then refuses num_cpus.
            address="local",
            num_cpus=cfg.num_cpus,
            include_dashboard=False,
            object_store_memory=LOCAL_OBJECT_STORE_BYTES,
            log_to_driver=False,
            configure_logging=True,
            logging_level=logging.WARNING,
            runtime_env=runtime_env,
            # Without a dashboard nothing reads task events or metrics, yet every Ray process
            # reports them every second or so: on 2 CPUs that background work cost training
            # about 2% of its throughput (bench/train_throughput.py).
            _system_config=LOCAL_SYSTEM_CONFIG,
        )
    else:
        log.info("joining Ray at %s", cfg.address)
        ray.init(
            address=cfg.address,
            log_to_driver=False,
            logging_level=logging.WARNING,
            runtime_env=runtime_env,
        )
