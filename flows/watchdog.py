"""The night's watchdog: a stage that overruns ``night.stage_limits`` ends the night ``Crashed``.

A night whose stage hangs (a lost worker that never reports, a filesystem that stops answering)
would otherwise stay ``Running`` for ever, and with the nightly deployment's ``concurrency_limit: 1``
every later night would queue behind it. :class:`NightWatch` runs a thread beside the flow: when
the stage in progress passes its limit, it logs the reason to the flow run, marks the pipeline and
its running stages failed in the catalog and MLflow, sets the flow run ``Crashed`` with the reason,
and ends the process. Ray frees what the process held (its Train controller, workers and placement
groups belong to this driver), so the next night finds the cluster as the served model left it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.logging.handlers import APILogWorker
from prefect.states import Crashed

from catalog.tracking import PipelineRun, StageRun
from core.config import Config, NightConfig
from nightshift.nights import duration

log = logging.getLogger(__name__)

# How often the thread looks at the stage in progress.
POLL_S = 2.0
# The flow run process's exit status after the watchdog ended it (EX_SOFTWARE).
EXIT_STUCK = 70

_active: NightWatch | None = None


class NightWatch:
    """Watch one flow run's stages against ``night`` limits (see the module docstring).

    Args:
        night: the limits.
        pipeline: the pipeline run whose catalog and MLflow runs are failed when the night is stuck.
        flow_run_id: the Prefect flow run to set ``Crashed``; None outside Prefect (nothing is set).
        exit: end the process once the night is marked (tests pass False and read ``stuck``).
    """

    def __init__(
        self, night: NightConfig, pipeline: PipelineRun, flow_run_id: str | None, *, exit: bool = True
    ) -> None:
        self.night = night
        self.pipeline = pipeline
        self.flow_run_id = flow_run_id
        self.exit = exit
        self.stuck: str | None = None
        self._stage: tuple[str, float] | None = None
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="night-watch", daemon=True)
        self._logger: Any = log

    def __enter__(self) -> NightWatch:
        global _active
        try:
            self._logger = get_run_logger()  # bound to this flow run, usable from the thread
        except Exception:  # outside a flow run
            self._logger = log
        _active = self
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        global _active
        self._done.set()
        self._thread.join(timeout=POLL_S * 2)
        _active = None

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Mark ``name`` as the stage in progress for the block."""
        with self._lock:
            self._stage = (name, time.monotonic())
        try:
            yield
        finally:
            with self._lock:
                self._stage = None

    def _watch(self) -> None:
        while not self._done.wait(POLL_S):
            with self._lock:
                current = self._stage
            if current is None:
                continue
            name, started = current
            limit = self.night.limit(name)
            elapsed = time.monotonic() - started
            if elapsed > limit:
                self._end(
                    f"night stuck: stage {name!r} ran {duration(elapsed)}, over its limit of "
                    f"{duration(limit)} (night.stage_limits.{name}, default night.stage_limit_s); "
                    "ended as Crashed so the next night can run"
                )
                return

    def _end(self, reason: str) -> None:
        self.stuck = reason
        self._logger.error(reason)
        self.pipeline.abandon(reason)
        if self.flow_run_id is not None:
            try:
                with get_client(sync_client=True) as client:
                    client.set_flow_run_state(self.flow_run_id, Crashed(message=reason), force=True)
            except Exception:
                log.exception("could not set flow run %s Crashed", self.flow_run_id)
        if not self.exit:
            return
        try:
            APILogWorker.drain_all(timeout=5)  # the reason above reaches the flow run's log
        except Exception:  # the log is a courtesy; the state above is what counts
            log.debug("could not flush the flow run's logs", exc_info=True)
        # A hard exit: the main thread may be blocked in Ray or a C extension and never unwind. Ray
        # releases this driver's actors and placement groups when its process is gone.
        os._exit(EXIT_STUCK)


@contextmanager
def watched_stage(cfg: Config, pipeline: PipelineRun, name: str) -> Iterator[StageRun]:
    """A tracked stage of the night (``pipeline.stage``) that the active :class:`NightWatch` times."""
    watch = _active
    with pipeline.stage(name, config=cfg.to_dict()) as run:
        if watch is None:
            yield run
        else:
            with watch.stage(name):
                yield run
