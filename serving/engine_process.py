"""The generation engine in a process of its own, driven from the replica over a socket.

In the replica's own process the engine thread and the replica's event loop (HTTP parsing,
JSON, server-sent events) share one GIL, so under many clients each decode step waits for the
loop and the loop waits for the step: a 16-row step that takes about 5 ms alone took 10-19 ms
there. Here the engine runs in a child process (its own interpreter, its own GIL) and the
replica only moves requests and deltas: vLLM splits its engine core from its API server for
the same reason.

Parent -> child messages: ``("submit", id, prompt, params, n)``, ``("cancel", id)``, ``("stop",)``.
Child -> parent: ``("ready", pid)`` once the model is loaded, then one ``("deltas", [(id, Delta),
...], stats)`` per engine iteration, and ``("error", text)`` if the engine fails. The child
exits when the replica closes the socket or dies, so no engine outlives its replica.

:class:`EngineProcess` has the in-process engine's API (``submit``/``cancel``/``stats``/``error``/
``generate``/``stop``), so the replica uses either. Requests are checked in the parent
(:func:`~serving.engine.check_request`), and the parent counts the requests that have not yet
produced a delta to answer :class:`~serving.engine.QueueFull` at once, as the engine would.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch

from gpt.model_io import load_model
from serving.engine import Delta, Engine, Generates, QueueFull, SamplingParams, check_request

log = logging.getLogger(__name__)


@dataclass
class _Live:
    sink: Callable[[Delta], None]
    left: int  # choices not yet finished


class EngineProcess(Generates):
    """A continuous-batching :class:`~serving.engine.Engine` over the ``model`` artifact at
    ``model_dir``, run in a child process.

    Args:
        model_dir: the model artifact directory (already verified by the caller; the child loads
            it again without re-hashing).
        block_size: the model's context (requests are checked against it here).
        max_batch: KV cache slots of the engine.
        max_waiting: requests that may wait for a slot before :meth:`submit` raises QueueFull.
        threads: torch intra-op threads of the child.
        start_timeout_s: how long :meth:`start` waits for the child to load the model.
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        block_size: int,
        max_batch: int = 32,
        max_waiting: int = 256,
        threads: int = 1,
        start_timeout_s: float = 300.0,
    ) -> None:
        self.model_dir = str(model_dir)
        self.block_size = block_size
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self.threads = threads
        self.start_timeout_s = start_timeout_s
        self.error: BaseException | None = None
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._live: dict[int, _Live] = {}
        self._waiting: set[int] = set()  # submitted, no delta yet (in the child's queue)
        self._child_stats: dict[str, int] = {"running": 0, "steps": 0, "tokens_generated": 0}
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._reader: threading.Thread | None = None
        self._stopping = False

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> EngineProcess:
        """Start the child and wait until its model is loaded.

        Raises:
            RuntimeError: the child exited or did not become ready within ``start_timeout_s``.
        """
        if self._proc is not None:
            return self
        mine, theirs = socket.socketpair()
        cmd = [
            sys.executable, "-m", "serving.engine_process",
            "--fd", str(theirs.fileno()),
            "--model", self.model_dir,
            "--threads", str(self.threads),
            "--max-batch", str(self.max_batch),
        ]  # fmt: skip
        # The child imports this package as the replica does (its working directory and path).
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self._proc = subprocess.Popen(cmd, pass_fds=[theirs.fileno()], env=env)
        theirs.close()
        self._conn = Connection(mine.detach())
        if not self._conn.poll(self.start_timeout_s):
            self._kill()
            raise RuntimeError(
                f"the engine process did not load {self.model_dir} within {self.start_timeout_s:.0f} s"
            )
        try:
            msg = self._conn.recv()
        except EOFError:
            code = self._proc.wait(timeout=10)
            raise RuntimeError(
                f"the engine process exited with code {code} while loading {self.model_dir}; "
                "its error is in this replica's log"
            ) from None
        if msg[0] != "ready":
            self._kill()
            raise RuntimeError(f"the engine process could not load {self.model_dir}: {msg[1]}")
        self._reader = threading.Thread(target=self._read, name="nightshift-engine-reader", daemon=True)
        self._reader.start()
        log.info("engine process %d serving %s", self._proc.pid, self.model_dir)
        return self

    @property
    def pid(self) -> int | None:
        """The child's process id (None before :meth:`start` and after :meth:`stop`)."""
        return self._proc.pid if self._proc is not None else None

    def stop(self) -> None:
        self._stopping = True
        if self._conn is not None:
            try:
                self._send(("stop",))
            except OSError:
                pass
        self._kill()

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._conn is not None:
            self._conn.close()

    # --- engine API -----------------------------------------------------------------------------

    def submit(
        self, prompt: Sequence[int], params: SamplingParams, sink: Callable[[Delta], None], n: int = 1
    ) -> int:
        """As :meth:`serving.engine.Engine.submit`."""
        check_request(self.block_size, self.max_batch, prompt, params, n)
        with self._lock:
            if self.error is not None:
                raise RuntimeError(f"the generation engine failed: {self.error!r}")
            if len(self._waiting) >= self.max_waiting:
                raise QueueFull(f"{len(self._waiting)} requests are already waiting")
            rid = next(self._ids)
            self._live[rid] = _Live(sink, n)
            self._waiting.add(rid)
        self._send(("submit", rid, list(prompt), params, n))
        return rid

    def cancel(self, request_id: int) -> None:
        with self._lock:
            known = self._live.pop(request_id, None) is not None
            self._waiting.discard(request_id)
        if known and self.error is None:
            try:
                self._send(("cancel", request_id))
            except OSError:
                pass  # the child is gone; the reader reports it

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {**self._child_stats, "waiting": len(self._waiting)}

    # --- the socket -----------------------------------------------------------------------------

    def _send(self, msg: tuple[Any, ...]) -> None:
        assert self._conn is not None
        with self._send_lock:
            self._conn.send(msg)

    def _read(self) -> None:
        assert self._conn is not None
        try:
            while True:
                msg = self._conn.recv()
                if msg[0] == "deltas":
                    self._deliver(msg[1], msg[2])
                elif msg[0] == "error":
                    self._fail(RuntimeError(msg[1]))
        except (EOFError, OSError):
            if not self._stopping:
                code = self._proc.poll() if self._proc is not None else None
                self._fail(RuntimeError(f"the engine process exited (code {code})"))

    def _deliver(self, batch: list[tuple[int, Delta]], stats: dict[str, int]) -> None:
        out: list[tuple[Callable[[Delta], None], Delta]] = []
        with self._lock:
            self._child_stats = stats
            for rid, d in batch:
                live = self._live.get(rid)
                self._waiting.discard(rid)
                if live is None:
                    continue  # cancelled here while the child was still running it
                out.append((live.sink, d))
                if d.finish_reason:
                    live.left -= 1
                    if live.left == 0:
                        del self._live[rid]
        for sink, d in out:
            sink(d)

    def _fail(self, e: BaseException) -> None:
        log.error("generation engine process failed: %s", e)
        with self._lock:
            if self.error is None:
                self.error = e
            live, self._live = self._live, {}
            self._waiting.clear()
        for entry in live.values():
            for i in range(entry.left):
                entry.sink(Delta(i, "", [], finish_reason="error"))


# --- the child --------------------------------------------------------------------------------


def _child(fd: int, model_dir: str, threads: int, max_batch: int) -> None:
    torch.set_num_threads(threads)
    conn = Connection(fd)
    try:
        model, tok, _ = load_model(model_dir, verify=False)
    except Exception as e:  # the parent raises it from start()
        conn.send(("failed", f"{type(e).__name__}: {e}"))
        raise
    out: list[tuple[int, Delta]] = []  # appended and flushed by the decode loop (this thread) only
    engine: Engine
    running_sent = -1

    def flush() -> None:
        nonlocal running_sent
        stats = engine.stats()
        del stats["waiting"]  # the parent counts its own
        if out or stats["running"] != running_sent:  # a cancel changes it with no delta
            conn.send(("deltas", out.copy(), stats))
            out.clear()
            running_sent = stats["running"]
        if engine.error is not None:
            conn.send(("error", f"the generation engine failed: {engine.error!r}"))

    # The parent bounds the queue (it answers 429 before a request crosses), so none is refused here.
    engine = Engine(model, tok, max_batch=max_batch, max_waiting=sys.maxsize, on_step=flush)

    def read() -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break  # the replica is gone
            if msg[0] == "submit":
                _, rid, prompt, params, n = msg
                try:
                    engine.submit(prompt, params, lambda d, rid=rid: out.append((rid, d)), n, request_id=rid)
                except RuntimeError:
                    pass  # the engine failed: flush() has told the parent
            elif msg[0] == "cancel":
                engine.cancel(msg[1])
            elif msg[0] == "stop":
                break
        os._exit(0)  # the decode loop may be mid-step; nothing of it needs to outlive the replica

    # Requests are read on a thread and decoded on this one, which loaded the model: all of the
    # process's parallel torch work stays on one thread, so OpenMP's workers keep spin-waiting
    # between operators instead of sleeping (Engine.run).
    threading.Thread(target=read, name="nightshift-engine-reader", daemon=True).start()
    conn.send(("ready", os.getpid()))
    engine.run()  # returns only if the engine fails; the reader then answers until the replica goes
    threading.Event().wait()


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="nightshift generation engine process (started by a replica)")
    ap.add_argument("--fd", type=int, required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-batch", type=int, default=32)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s engine %(levelname)s %(message)s")
    _child(a.fd, a.model, a.threads, a.max_batch)


if __name__ == "__main__":
    main()
