"""How much of Ray a stage asks for, and a deadline for getting it.

Training and serving share the machine (the local stack) or the cluster. Every stage that puts work
on Ray (pretraining and RLHF on Ray Train, ingestion on Ray Data) asks here first:

- :func:`plan_workers` sizes the stage's workers. ``ray.placement`` decides how:
  - ``fit`` (the default on a Ray whose nodes all live on this machine: the local stack, a local
    Ray): from the CPUs free at that moment, i.e. beside the Serve replicas. The configured worker
    count is kept and the free CPUs are split among the workers, each at least
    ``ray.min_worker_cpus``; when they do not fit, fewer workers (a count that divides the stage's
    global batch). torch threads still follow the machine's cores: a Ray CPU is a reservation, not a
    core, and an idle replica leaves its cores to training.
  - ``exact`` (the default on a cluster): exactly the configured workers and CPUs, and the stage
    waits for the autoscaler to provide them.
- :func:`reserve` then places the plan as one placement group and waits at most
  ``ray.placement_timeout_s``. It either returns (and frees the group for the stage's own) or raises
  :class:`PlacementError`, whose message names what was asked for, what is in use and by whom (the
  Serve replicas, another run's placement group, tasks) and the settings to change. Nothing waits
  without a deadline.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from core.config import RayConfig

# Ray is imported inside the functions that use it, not here: it takes a second or more to
# import, and not every user of this module needs it.

log = logging.getLogger(__name__)

# Ray keeps resource amounts to 1e-4; shares are rounded down to this so that N of them always fit.
_GRAIN = 0.01
# While a stage waits for its resources, the log says so this often.
_WAIT_LOG_EVERY_S = 15.0
_LOOPBACK = ("127.", "localhost", "::1")
# Ray Train's own deadline for placing a worker group, propagated from the driver to its controller.
TRAIN_START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"


class PlacementError(RuntimeError):
    """A stage's Ray resources could not be placed in time; the message says what holds them."""


@dataclass(frozen=True)
class Holder:
    """Something that holds Ray resources: a Serve replica, another run's workers, tasks."""

    who: str
    resources: Mapping[str, float]


@dataclass(frozen=True)
class Usage:
    """The Ray cluster's resources at one moment, and who holds what is not free."""

    total: Mapping[str, float]
    free: Mapping[str, float]
    holders: list[Holder] = field(default_factory=list)

    def describe(self) -> str:
        cpu_total, cpu_free = self.total.get("CPU", 0.0), self.free.get("CPU", 0.0)
        parts = [f"{_num(cpu_total)} CPU in all, {_num(cpu_free)} free"]
        if self.total.get("GPU"):
            parts[0] += f", {_num(self.total['GPU'])} GPU in all, {_num(self.free.get('GPU', 0.0))} free"
        held = [f"{_res(h.resources)} by {h.who}" for h in self.holders]
        if held:
            parts.append("in use: " + "; ".join(held))
        return ". ".join(parts)


@dataclass(frozen=True)
class WorkerPlan:
    """What one stage asks Ray for."""

    stage: str
    num_workers: int
    cpus: float  # Ray CPUs reserved by each worker
    threads: int  # torch threads of each worker
    gpus: float
    mode: str  # 'fit' or 'exact'
    note: str  # how it was decided, for the log and the stage's MLflow params

    @property
    def bundle(self) -> dict[str, float]:
        out = {"CPU": self.cpus}
        if self.gpus:
            out["GPU"] = self.gpus
        return out

    def params(self) -> dict[str, Any]:
        """The plan as MLflow params of the stage run (``placement.*``)."""
        return {
            "placement.mode": self.mode,
            "placement.num_workers": self.num_workers,
            "placement.cpus_per_worker": self.cpus,
            "placement.threads_per_worker": self.threads,
            "placement.note": self.note,
        }


def _num(x: float) -> str:
    return f"{x:g}"


def _res(resources: Mapping[str, float]) -> str:
    return ", ".join(f"{_num(resources[k])} {k}" for k in ("CPU", "GPU") if resources.get(k)) or "nothing"


def _is_local_node(address: str) -> bool:
    return address.startswith(_LOOPBACK)


def one_machine() -> bool:
    """Whether every live node of the Ray this process joined runs on this machine's loopback."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return bool(nodes) and all(_is_local_node(str(n.get("NodeManagerAddress", ""))) for n in nodes)


def resolved_mode(ray_cfg: RayConfig) -> str:
    """``ray.placement`` with ``auto`` resolved: ``fit`` on one machine, ``exact`` on a cluster."""
    if ray_cfg.placement != "auto":
        return ray_cfg.placement
    return "fit" if ray_cfg.address == "local" or one_machine() else "exact"


def _actor_holders() -> list[Holder]:
    """Live actors outside placement groups that hold resources, named for a person.

    Ray's public state API (``ray.util.state``) needs the dashboard, which a local Ray runs without;
    the GCS's actor table has the same facts (Ray 2.60, pinned).
    """
    from ray._private.state import state
    from ray.core.generated import gcs_pb2

    accessor = state._connect_and_get_accessor()
    out = []
    for raw in accessor.get_actor_table(None, "ALIVE"):
        actor = gcs_pb2.ActorTableData.FromString(raw)
        if actor.placement_group_id and any(actor.placement_group_id):
            continue  # counted with its placement group
        resources = {k: float(v) for k, v in actor.required_resources.items() if k in ("CPU", "GPU") and v}
        if not resources:
            continue
        out.append(Holder(_actor_name(actor.class_name, actor.name), resources))
    return out


def _actor_name(class_name: str, name: str) -> str:
    if class_name.startswith("ServeReplica:"):
        # ServeReplica:<app>:<deployment>
        _, app, deployment = (class_name.split(":", 2) + ["", ""])[:3]
        return f"the Serve replica of {app}/{deployment} (serve.replica_cpus)"
    label = name or class_name or "an actor"
    return f"actor {label}"


def _group_holders() -> list[Holder]:
    import ray.util

    out = []
    for pg in ray.util.placement_group_table().values():
        if pg.get("state") != "CREATED":
            continue
        total: dict[str, float] = {}
        for bundle in (pg.get("bundles") or {}).values():
            for k, v in bundle.items():
                if k in ("CPU", "GPU"):
                    total[k] = total.get(k, 0.0) + float(v)
        name = pg.get("name") or pg.get("placement_group_id", "")[:12]
        n = len(pg.get("bundles") or {})
        out.append(Holder(f"placement group {name} ({n} bundle(s): another run's workers)", total))
    return out


def usage() -> Usage:
    """The connected Ray's resources now: total, free, and the holders of the rest."""
    import ray

    total = {k: float(v) for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
    free = {k: float(v) for k, v in ray.available_resources().items() if k in ("CPU", "GPU")}
    holders: list[Holder] = []
    try:
        holders = _actor_holders() + _group_holders()
    except Exception as e:  # the breakdown is a courtesy; the totals still say enough
        log.debug("could not list Ray's resource holders: %s", e)
    held_cpu = sum(h.resources.get("CPU", 0.0) for h in holders)
    rest = total.get("CPU", 0.0) - free.get("CPU", 0.0) - held_cpu
    if rest > _GRAIN:
        holders.append(Holder("running tasks (Ray Data, or another stage's tasks)", {"CPU": rest}))
    return Usage(total=total, free=free, holders=holders)


def _floor(x: float) -> float:
    return math.floor(x / _GRAIN + 1e-9) * _GRAIN


def plan_workers(
    ray_cfg: RayConfig,
    *,
    stage: str,
    num_workers: int,
    cpus_per_worker: int | None,
    use_gpu: bool,
    allowed: Callable[[int], bool] = lambda w: True,
    setting: str,
) -> WorkerPlan:
    """Size ``stage``'s Ray workers (see the module docstring); Ray must be initialised.

    Args:
        ray_cfg: ``placement``, ``min_worker_cpus`` and ``placement_timeout_s`` are read.
        stage: the stage's name, for messages.
        num_workers: the configured worker count.
        cpus_per_worker: the configured CPUs per worker (None: the cluster's CPUs / workers, at least 1).
        use_gpu: each worker takes one GPU.
        allowed: whether a worker count is valid for the stage (its global batch divides by it).
        setting: the config prefix of the stage's workers (``train``, ``rlhf``; ``ray`` for ingestion's
            read tasks), for messages.

    Raises:
        PlacementError: in ``fit`` mode, not even one worker fits within ``ray.placement_timeout_s``.
    """
    mode = resolved_mode(ray_cfg)
    gpus = 1.0 if use_gpu else 0.0
    now = usage()
    asked = _asked_cpus(now.total.get("CPU", 0.0), num_workers, cpus_per_worker)
    if mode == "exact" or use_gpu:
        # A GPU worker is one GPU: nothing to split. A cluster asks for what the config says.
        note = f"{num_workers} x {_num(asked)} CPU as configured ({setting}.num_workers, .cpus_per_worker)"
        return WorkerPlan(stage, num_workers, asked, max(1, int(asked)), gpus, mode, note)
    deadline = time.monotonic() + ray_cfg.placement_timeout_s
    last_log = time.monotonic()
    while True:
        plan = _fit(stage, now, num_workers, cpus_per_worker, allowed, ray_cfg.min_worker_cpus, setting)
        if plan is not None:
            return plan
        if time.monotonic() >= deadline:
            raise PlacementError(
                _message(
                    stage,
                    f"1 worker x {_num(ray_cfg.min_worker_cpus)} CPU (ray.min_worker_cpus)",
                    ray_cfg,
                    now,
                    setting,
                )
            )
        if time.monotonic() - last_log >= _WAIT_LOG_EVERY_S:
            log.warning("%s: waiting for a free CPU share; %s", stage, now.describe())
            last_log = time.monotonic()
        time.sleep(1.0)
        now = usage()


def _asked_cpus(total_cpu: float, workers: int, cpus_per_worker: int | None) -> float:
    return float(cpus_per_worker) if cpus_per_worker else max(1.0, math.floor(total_cpu / workers))


def _fit(
    stage: str,
    now: Usage,
    num_workers: int,
    cpus_per_worker: int | None,
    allowed: Callable[[int], bool],
    min_cpus: float,
    setting: str,
) -> WorkerPlan | None:
    free, total = now.free.get("CPU", 0.0), now.total.get("CPU", 0.0)
    asked = _asked_cpus(total, num_workers, cpus_per_worker)
    for w in range(num_workers, 0, -1):
        if not allowed(w):
            continue
        # torch threads follow the machine's cores (each worker's share of them), not the reservation.
        threads = max(1, int(_asked_cpus(total, w, cpus_per_worker)))
        share = _floor(min(asked, free / w))
        if share + 1e-9 < min_cpus:
            continue
        if w == num_workers and share >= asked - 1e-9:
            note = f"{w} x {_num(share)} CPU as configured; {_num(free)} CPU were free"
        elif w == num_workers:
            note = (
                f"{w} x {_num(share)} CPU: the {_num(free)} free CPU split among the configured workers "
                f"(asked {_num(asked)} each; {_held_by(now)})"
            )
        else:
            note = (
                f"{w} x {_num(share)} CPU instead of {num_workers} x {_num(asked)}: only {_num(free)} CPU "
                f"were free ({_held_by(now)}); {num_workers} workers need at least "
                f"{_num(num_workers * min_cpus)} free (ray.min_worker_cpus)"
            )
        return WorkerPlan(stage, w, share, threads, 0.0, "fit", note)
    return None


def _held_by(now: Usage) -> str:
    held = [f"{_res(h.resources)} by {h.who}" for h in now.holders]
    return "in use: " + "; ".join(held) if held else "nothing else holds CPUs"


def _message(stage: str, asked: str, ray_cfg: RayConfig, now: Usage, setting: str) -> str:
    own = "ray.min_worker_cpus" if setting == "ray" else f"{setting}.num_workers or {setting}.cpus_per_worker"
    return (
        f"{stage}: could not place {asked} on Ray within {ray_cfg.placement_timeout_s:g} s "
        f"(ray.placement {resolved_mode(ray_cfg)!r}). {now.describe()}. To fix: lower {own}, lower "
        "serve.replica_cpus (or stop the served model), or raise ray.placement_timeout_s (a cluster "
        "autoscaler may need longer)."
    )


def reserve(ray_cfg: RayConfig, plan: WorkerPlan, *, setting: str) -> None:
    """Place ``plan``'s workers as one placement group within ``ray.placement_timeout_s``, then free it.

    A stage calls this before handing the same request to Ray Train or Ray Data, so that a request
    that cannot be placed ends in a message rather than a wait without end (Ray Train retries a
    worker group that cannot start for ever; Ray Data waits for a CPU).

    Raises:
        PlacementError: the workers could not be placed in time.
    """
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    bundles = [plan.bundle for _ in range(plan.num_workers)]
    pg = placement_group(bundles, strategy="PACK", name=f"nightshift-{plan.stage}-check")
    t0 = time.monotonic()
    deadline = t0 + ray_cfg.placement_timeout_s
    try:
        while True:
            left = deadline - time.monotonic()
            ready, _ = ray.wait([pg.ready()], timeout=max(0.0, min(_WAIT_LOG_EVERY_S, left)))
            if ready:
                log.info("%s: placed %s in %.1f s", plan.stage, _asked(plan), time.monotonic() - t0)
                return
            if time.monotonic() >= deadline:
                break
            waited = time.monotonic() - t0
            log.warning(
                "%s: waiting for Ray to place %s (%.0f of %g s); %s",
                plan.stage, _asked(plan), waited, ray_cfg.placement_timeout_s, usage().describe(),
            )  # fmt: skip
    finally:
        remove_placement_group(pg)
    raise PlacementError(_message(plan.stage, _asked(plan), ray_cfg, usage(), setting))


def _asked(plan: WorkerPlan) -> str:
    return f"{plan.num_workers} worker(s) x {{{_res(plan.bundle)}}} (PACK)"


@contextmanager
def train_start_deadline(ray_cfg: RayConfig) -> Iterator[None]:
    """Ray Train's deadline for starting a worker group: ``ray.placement_timeout_s`` during the block.

    The driver's value travels to the Train controller (Ray Train propagates the variable); the
    caller also limits the controller's retries, so a group that cannot start ends the run.
    """
    before = os.environ.get(TRAIN_START_TIMEOUT_ENV)
    os.environ[TRAIN_START_TIMEOUT_ENV] = f"{ray_cfg.placement_timeout_s:g}"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(TRAIN_START_TIMEOUT_ENV, None)
        else:
            os.environ[TRAIN_START_TIMEOUT_ENV] = before


def explain_start_failure(
    error: BaseException, ray_cfg: RayConfig, plan: WorkerPlan, setting: str
) -> str | None:
    """The placement message for a Ray Train run whose worker group could not start in time, else None."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if type(e).__name__ in ("WorkerGroupStartupTimeoutError", "InsufficientClusterResourcesError"):
            return _message(plan.stage, _asked(plan), ray_cfg, usage(), setting)
        inner = getattr(e, "controller_failure", None)
        e = inner if isinstance(inner, BaseException) else (e.__cause__ or e.__context__)
    return None


def driver_threads(ray_cfg: RayConfig, wanted: int | None) -> int | None:
    """torch threads for work that runs in the calling process beside Ray (evaluation).

    Nothing is placed for it, so nothing can wait; on one machine it takes no more threads than Ray
    has CPUs free (at least one), so a stage in the driver does not crowd the Serve replicas. With Ray
    not running here, or on a cluster (the driver has its own machine), ``wanted`` as given.
    """
    import ray

    if not ray.is_initialized() or resolved_mode(ray_cfg) != "fit":
        return wanted
    free = int(math.floor(ray.available_resources().get("CPU", 0.0) + 1e-9))
    cap = max(1, free)
    return min(wanted or os.cpu_count() or 1, cap)
