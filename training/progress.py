"""Progress of long work (pretraining steps, ingested documents, RLHF iterations, evaluation parts).

On a terminal it is a live bar (rich) with the latest figures and the ETA; anywhere else (a Prefect
flow run, a log file, a pipe) it is one log line every ``every`` steps and at the end, so a
night's log says how far each stage got::

    pretrain: step 120/250 (48%) train_loss 3.412 tokens_per_s 3,912 ETA 1m04s

One :class:`Progress` per piece of work; ``update`` takes the position reached and any figures.
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as Bar

# Ray is imported inside the functions that use it, not here: it takes a second or more to
# import, and not every user of this module needs it.

log = logging.getLogger(__name__)


def _live_default() -> bool:
    """A live bar only for a person at a terminal: not under Prefect, CI or a pipe."""
    if os.environ.get("NIGHTSHIFT_PROGRESS") in ("log", "bar"):
        return os.environ["NIGHTSHIFT_PROGRESS"] == "bar"
    return sys.stderr.isatty() and "PREFECT__FLOW_RUN_ID" not in os.environ and not os.environ.get("CI")


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


class Progress:
    """How far one piece of work got.

    Args:
        what: what is counted, e.g. ``pretrain`` or ``ingest``.
        total: the position at the end (None: unknown; no percentage or ETA).
        unit: the name of one position (``step``, ``docs``).
        every: a log line every this many positions (and at the end).
        live: a live bar (default: when stderr is a terminal outside Prefect and CI; the environment
            variable ``NIGHTSHIFT_PROGRESS=log|bar`` forces one or the other).
    """

    def __init__(
        self, what: str, total: int | None, *, unit: str = "step", every: int = 10, live: bool | None = None
    ) -> None:
        self.what, self.total, self.unit, self.every = what, total, unit, max(1, every)
        self.live = _live_default() if live is None else live
        self.done = 0
        self.figures: dict[str, Any] = {}
        self._start: tuple[float, int] | None = None  # (time, position) of the first update
        self._logged = -1
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        if self.live:
            self._bar = Bar(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[figures]}"),
                console=Console(stderr=True),  # stdout is the command's output (JSON for some verbs)
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.what, total=self.total, figures="")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def eta_s(self) -> float | None:
        """Seconds left at the rate since the first update (None when unknown)."""
        if self.total is None or self._start is None or self.done <= self._start[1]:
            return None
        t0, p0 = self._start
        return (time.monotonic() - t0) / (self.done - p0) * (self.total - self.done)

    def line(self) -> str:
        """``pretrain: step 120/250 (48%) train_loss 3.412 ETA 1m04s``."""
        where = f"{self.unit} {self.done:,}"
        if self.total:
            where += f"/{self.total:,} ({100 * self.done / self.total:.0f}%)"
        figures = " ".join(f"{k} {_fmt(v)}" for k, v in self.figures.items())
        eta = self.eta_s()
        return " ".join(
            p for p in (f"{self.what}: {where}", figures, f"ETA {format_duration(eta)}" if eta else "") if p
        )

    def update(self, done: int, **figures: Any) -> None:
        """The work reached position ``done``; ``figures`` (loss, tokens/s, ...) are the latest ones."""
        if self._start is None:
            self._start = (time.monotonic(), done)
        self.done = done
        self.figures.update({k: v for k, v in figures.items() if v is not None})
        if self._bar is not None:
            text = " ".join(f"{k} {_fmt(v)}" for k, v in self.figures.items())
            self._bar.update(self._task, completed=done, figures=text)
        elif done // self.every != self._logged // self.every or done == self.total:
            self._logged = done
            log.info("%s", self.line())

    def advance(self, n: int = 1, **figures: Any) -> None:
        self.update(self.done + n, **figures)

    def close(self) -> None:
        """Stop the bar (leaving its last state on screen) or log the final line."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif self._logged != self.done:
            self._logged = self.done
            log.info("%s", self.line())


class QueueSink:
    """What a Ray worker calls with ``(position, figures)``: puts them on a Ray queue that the driver
    drains into its :class:`Progress` (:func:`relayed`). Picklable, so it travels in the worker's
    config."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def __call__(self, done: int, figures: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait((done, figures))
        except Exception:  # full or gone: progress is never worth stalling training for
            pass


@contextmanager
def relayed(progress: Progress) -> Iterator[QueueSink]:
    """A sink for Ray workers whose updates reach ``progress`` in this process: a Ray queue (an actor
    with no CPU), drained by a thread here until the block ends."""
    from ray.util.queue import Empty, Queue

    queue = Queue(maxsize=1000, actor_options={"num_cpus": 0})
    stop = threading.Event()

    def drain(timeout: float) -> bool:
        try:
            done, figures = queue.get(timeout=timeout)
        except Empty:
            return False
        progress.update(done, **figures)
        return True

    def loop() -> None:
        while not stop.is_set():
            try:
                drain(0.5)
            except Exception as e:  # the queue actor died with the Ray it ran on
                log.warning("%s: progress relay from the Ray workers stopped: %r", progress.what, e)
                return

    # The thread runs in a copy of this context: Prefect finds the flow and task run a log record
    # belongs to in context variables, and without them its API handler drops the thread's lines
    # (they would reach the worker's console but not the flow run's log).
    thread = threading.Thread(
        target=contextvars.copy_context().run, args=(loop,), name="nightshift-progress", daemon=True
    )
    thread.start()
    try:
        yield QueueSink(queue)
    finally:
        stop.set()
        thread.join(timeout=5)
        try:
            while drain(0.1):
                pass
            queue.shutdown()
        except Exception as e:
            log.warning("%s: progress queue already gone: %r", progress.what, e)
