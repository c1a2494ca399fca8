"""Run Ray Train the same way everywhere: a ``TorchTrainer`` without cluster parts on a local Ray, and
one error that names the stage (and what holds Ray) when training cannot start or fails."""

from __future__ import annotations

import contextlib
import os
from typing import Any

from core.config import RayConfig
from training.placement import PlacementError, explain_start_failure, train_start_deadline

# Ray is imported inside the functions that use it, not here: it takes a second or more to
# import, and not every user of this module needs it.

# Ray Train parts that have nothing to do on one machine, turned off by their own variables. Every
# Python process Ray keeps alive wakes 100 times a second (the core worker's signal check), and on
# 2 CPUs each one takes about 0.5% of a core from training (bench/train_throughput.py):
# - the preemption watcher polls for nodes being drained, which a one-machine Ray never has;
# - Ray Train's metrics go to a metrics agent that a local Ray runs without (enable_metrics_collection).
LOCAL_TRAIN_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_METRICS_ENABLED": "0"}


def _lean_callbacks(callbacks: list[Any], datasets: Any) -> list[Any]:
    """Ray Train's default callbacks less the two actors a local run without Ray datasets never uses.

    - ``DatasetsCallback`` starts a DatasetManager actor for every run, datasets or not;
    - ``PlacementGroupCleanerCallback`` starts a detached actor that frees the workers' placement
      group if the driver dies without shutting Ray down, which on a local Ray ends with the driver.
    """
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    drop: tuple[type, ...] = (PlacementGroupCleanerCallback,) + (() if datasets else (DatasetsCallback,))
    return [c for c in callbacks if not isinstance(c, drop)]


def _without_autoscaler_requests(policy: Any) -> Any:
    """``policy`` if elastic, else a fixed-size policy that asks no autoscaler for resources.

    Ray Train's fixed scaling policy starts Ray Data's autoscaling-coordinator actor and sends it
    the workers' resources every 20 s, for a cluster autoscaler to provision; one machine has none,
    and the idle actor is one more process waking 100 times a second.
    """
    from ray.train.v2._internal.execution.scaling_policy import FixedScalingPolicy

    if type(policy) is not FixedScalingPolicy:
        return policy

    class LocalFixedScalingPolicy(FixedScalingPolicy):
        def after_controller_start(self, train_run_context: Any) -> None:
            self._requester_id = f"train-{train_run_context.run_id}"

        def _maybe_send_resource_request(self) -> None:
            pass

        def _send_resource_request(self) -> None:
            pass

    return LocalFixedScalingPolicy(scaling_config=policy.scaling_config)


def torch_trainer(train_fn: Any, ray_cfg: RayConfig, **kwargs: Any) -> Any:
    """A Ray Train ``TorchTrainer``; on a local Ray (``address='local'``), one without cluster parts.

    On a cluster this is ``TorchTrainer(train_fn, **kwargs)``. On a local Ray the preemption watcher,
    Ray Train metrics, the dataset manager (when no ``datasets`` are given), the placement-group
    cleaner and the resource requests to an autoscaler (with their coordinator actor) are left out
    (see ``LOCAL_TRAIN_ENV``, ``_lean_callbacks`` and ``_without_autoscaler_requests``); training,
    checkpoints reported to Ray and restarts under ``FailureConfig`` are the same. The variables in
    ``LOCAL_TRAIN_ENV`` that the user set themselves win.
    """
    from ray.train.torch import TorchTrainer

    if ray_cfg.address != "local":
        return TorchTrainer(train_fn, **kwargs)
    for key, value in LOCAL_TRAIN_ENV.items():
        os.environ.setdefault(key, value)

    class LocalTorchTrainer(TorchTrainer):
        def _create_default_callbacks(self) -> list[Any]:
            # A private hook of Ray Train v2 (pinned in requirements); were it renamed, this override
            # would simply not be called and the run would have every default actor.
            return _lean_callbacks(super()._create_default_callbacks(), self.datasets)

        def _initialize_and_run_controller(self, **controller_kwargs: Any) -> Any:
            # Also private (Ray Train v2, pinned); the policy travels to the controller actor.
            if "scaling_policy" in controller_kwargs:
                controller_kwargs["scaling_policy"] = _without_autoscaler_requests(
                    controller_kwargs["scaling_policy"]
                )
            return super()._initialize_and_run_controller(**controller_kwargs)

    return LocalTorchTrainer(train_fn, **kwargs)


def fit_or_raise(trainer: Any, what: str, placement: tuple[RayConfig, Any, str] | None = None) -> Any:
    """``trainer.fit()``'s result; a failure, raised or held in the result, becomes one error naming ``what``.

    Args:
        trainer: a Ray Train trainer.
        what: the stage, for the message.
        placement: ``(ray config, WorkerPlan, setting prefix)``: a worker group that could not start in
            time becomes a :class:`training.placement.PlacementError` naming what holds Ray.

    Raises:
        PlacementError: the worker group could not be placed within ``ray.placement_timeout_s``.
        RuntimeError: training failed more often than its ``FailureConfig`` allows.
    """
    error: BaseException | None = None
    result = None
    with train_start_deadline(placement[0]) if placement else contextlib.nullcontext():
        try:
            result = trainer.fit()
        except Exception as e:
            error = e
    if error is None and getattr(result, "error", None):
        error = result.error
    if error is None:
        return result
    if placement is not None and (message := explain_start_failure(error, *placement)):
        raise PlacementError(message) from error
    raise RuntimeError(f"{what} on Ray Train failed: {error}") from error
