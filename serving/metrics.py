"""A replica's metrics, through ``ray.serve.metrics``.

Ray tags every sample with its ``application``, ``deployment`` and ``replica`` and exports them on
each node's Ray metrics port (``ray start --metrics-export-port``: ``stack.ray_metrics_port`` on the
local stack, 8080 in the cluster manifests), so one scrape per node sees every replica, each as its
own series: ``ray_nightshift_requests_total{replica="...", route="completions", status="200"}``.
A scrape of the API port would reach one replica, a different one each time.

Counters and histograms move with the requests; the gauges (batch, queue, open streams, the
replica's and its engine process's memory and CPU) are sampled every ``interval_s`` by a thread.
The same figures for one replica, now, are in its ``GET /health``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import psutil
from ray.serve import metrics

log = logging.getLogger(__name__)

_LATENCY = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30]


def process_figures(pid: int | None = None) -> dict[str, float]:
    """Resident memory (bytes), CPU seconds and start time (Unix s) of process ``pid`` (default: this)."""
    p = psutil.Process(pid)
    with p.oneshot():
        cpu = p.cpu_times()
        return {
            "resident_memory_bytes": float(p.memory_info().rss),
            "cpu_seconds": cpu.user + cpu.system,
            "start_time_seconds": p.create_time(),
        }


class Metrics:
    """The replica's metrics.

    Args:
        engine_pid: the engine process's pid, whose memory and CPU are exported as
            ``nightshift_engine_process_*`` (None: the engine is a thread of the replica).
    """

    def __init__(self, engine_pid: int | None = None) -> None:
        self.engine_pid = engine_pid
        self.requests = metrics.Counter(
            "nightshift_requests", "HTTP requests by route and status.", tag_keys=("route", "status")
        )
        self.prompt_tokens = metrics.Counter("nightshift_prompt_tokens", "Prompt tokens processed.")
        self.completion_tokens = metrics.Counter("nightshift_completion_tokens", "Tokens generated.")
        self.ttft = metrics.Histogram(
            "nightshift_time_to_first_token_seconds", "Time to first token.", boundaries=_LATENCY
        )
        self.latency = metrics.Histogram(
            "nightshift_request_seconds", "Whole request time.", boundaries=_LATENCY, tag_keys=("route",)
        )
        self.rejected = metrics.Counter("nightshift_rejected", "Requests refused because the queue was full.")
        self.stream_writes = metrics.Counter(
            "nightshift_stream_writes", "Writes of streaming responses (each carries one or more chunks)."
        )
        self.disconnects = metrics.Counter(
            "nightshift_client_disconnects", "Requests dropped after the client left."
        )
        self.rate_limited = metrics.Counter(
            "nightshift_rate_limited",
            "Requests refused (429) because their key was over its rate.",
            tag_keys=("limit",),
        )
        self.record_failures = metrics.Counter(
            "nightshift_record_failures",
            "Requests whose completion rows could not be stored in the catalog (their neighbours were).",
        )
        self._gauges = {
            name: metrics.Gauge(f"nightshift_{name}", text)
            for name, text in (
                ("engine_running", "Sequences in the running batch."),
                ("engine_waiting", "Requests waiting for a batch slot."),
                ("engine_decode_steps", "Decode steps since start."),
                ("open_streams", "Streaming responses being sent."),
                ("process_resident_memory_bytes", "Resident memory of the replica process."),
                ("process_cpu_seconds", "CPU time of the replica process."),
                ("process_start_time_seconds", "Start time of the replica process (Unix s)."),
                ("engine_process_resident_memory_bytes", "Resident memory of the engine process."),
                ("engine_process_cpu_seconds", "CPU time of the engine process."),
            )
        }
        self.stream_writes_total = 0  # also in /health, for a reading of this replica alone
        self._recorder: Any = None
        self._failures_seen = 0
        self._stop = threading.Event()

    def watch_recorder(self, recorder: Any) -> None:
        """Export ``recorder.failures`` (counted by its writer thread) as ``nightshift_record_failures``."""
        self._recorder = recorder

    def count_answer(self, route: str, seconds: float, prompt_tokens: int, completion_tokens: int) -> None:
        """A generation request answered (200): its count, time and tokens."""
        self.requests.inc(tags={"route": route, "status": "200"})
        self.latency.observe(seconds, tags={"route": route})
        # A Ray counter takes only positive steps.
        if prompt_tokens:
            self.prompt_tokens.inc(prompt_tokens)
        if completion_tokens:
            self.completion_tokens.inc(completion_tokens)

    def count_stream_write(self) -> None:
        self.stream_writes.inc()
        self.stream_writes_total += 1

    def snapshot(self, engine_stats: dict[str, int], open_streams: int) -> dict[str, float]:
        """The gauges' values now (also what ``GET /health`` shows of this replica)."""
        out: dict[str, float] = {
            "engine_running": engine_stats["running"],
            "engine_waiting": engine_stats["waiting"],
            "engine_decode_steps": engine_stats["steps"],
            "open_streams": open_streams,
        }
        out.update({f"process_{k}": v for k, v in process_figures().items()})
        if self.engine_pid is not None:
            try:
                engine = process_figures(self.engine_pid)
            except Exception:  # the engine process is gone: /health and the health check say so
                engine = {}
            out.update({f"engine_process_{k}": v for k, v in engine.items() if k != "start_time_seconds"})
        return out

    def sample(self, engine_stats: dict[str, int], open_streams: int) -> None:
        """Set every gauge, and count the recorder's new failures."""
        if self._recorder is not None and (new := self._recorder.failures - self._failures_seen) > 0:
            self.record_failures.inc(new)
            self._failures_seen += new
        for name, value in self.snapshot(engine_stats, open_streams).items():
            self._gauges[name].set(value)

    def start(self, read: Callable[[], tuple[dict[str, int], int]], interval_s: float = 2.0) -> None:
        """Sample the gauges every ``interval_s`` on a daemon thread; ``read`` gives (engine stats,
        open streams)."""

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.sample(*read())
                except Exception:  # a failed sample must not end the sampling
                    log.exception("sampling the replica's gauges failed")

        threading.Thread(target=loop, name="nightshift-metrics", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
