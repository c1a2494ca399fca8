"""Prometheus metrics of a replica (``GET /metrics``), on a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.process_collector import ProcessCollector

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """Args: engine_pid: the engine process's pid, whose memory and CPU are exported as
    ``nightshift_engine_process_*`` (None: the engine is a thread of the replica)."""

    def __init__(self, engine_pid: int | None = None) -> None:
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)  # process_resident_memory_bytes, cpu seconds, open fds
        if engine_pid is not None:
            ProcessCollector(namespace="nightshift_engine", pid=lambda: engine_pid, registry=r)
        self.requests = Counter(
            "nightshift_requests", "HTTP requests by route and status.", ["route", "status"], registry=r
        )
        self.prompt_tokens = Counter("nightshift_prompt_tokens", "Prompt tokens processed.", registry=r)
        self.completion_tokens = Counter("nightshift_completion_tokens", "Tokens generated.", registry=r)
        self.ttft = Histogram(
            "nightshift_time_to_first_token_seconds", "Time to first token.", buckets=_LATENCY, registry=r
        )
        self.latency = Histogram(
            "nightshift_request_seconds", "Whole request time.", ["route"], buckets=_LATENCY, registry=r
        )
        self.running = Gauge("nightshift_engine_running", "Sequences in the running batch.", registry=r)
        self.waiting = Gauge("nightshift_engine_waiting", "Requests waiting for a batch slot.", registry=r)
        self.steps = Gauge("nightshift_engine_decode_steps", "Decode steps since start.", registry=r)
        self.rejected = Counter(
            "nightshift_rejected", "Requests refused because the queue was full.", registry=r
        )
        self.open_streams = Gauge("nightshift_open_streams", "Streaming responses being sent.", registry=r)
        self.stream_writes = Counter(
            "nightshift_stream_writes",
            "Writes of streaming responses (each carries one or more chunks).",
            registry=r,
        )
        self.disconnects = Counter(
            "nightshift_client_disconnects", "Requests dropped after the client left.", registry=r
        )
        self.rate_limited = Counter(
            "nightshift_rate_limited", "Requests refused (429) because their key was over its rate.",
            ["limit"], registry=r,
        )  # fmt: skip
        self.record_failures = Counter(
            "nightshift_record_failures",
            "Requests whose completion rows could not be stored in the catalog (their neighbours were).",
            registry=r,
        )
        self._recorder = None
        self._failures_seen = 0

    def watch_recorder(self, recorder) -> None:
        """Export ``recorder.failures`` (counted by its writer thread) as ``nightshift_record_failures``."""
        self._recorder = recorder

    def render(self, engine_stats: dict[str, int], open_streams: int) -> bytes:
        if self._recorder is not None and (new := self._recorder.failures - self._failures_seen) > 0:
            self.record_failures.inc(new)
            self._failures_seen += new
        self.running.set(engine_stats["running"])
        self.open_streams.set(open_streams)
        self.waiting.set(engine_stats["waiting"])
        self.steps.set(engine_stats["steps"])
        return generate_latest(self.registry)
