"""Completions and feedback into the catalog, written by one background thread in batches.

Every response waits until its completion rows are committed (so a client can post feedback on a
completion id the moment it has it, and nothing is lost if the replica dies after answering), but
concurrent requests share one transaction: under load the writer commits many rows at once
instead of one small transaction per request.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from typing import Any

from catalog.db import migrate, session_scope
from catalog.models import Completion, Feedback

log = logging.getLogger(__name__)


class Recorder:
    def __init__(self, catalog_url: str):
        self.url = catalog_url
        migrate(catalog_url)
        self._q: queue.Queue[tuple[list[dict[str, Any]], Future[None]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="nightshift-recorder", daemon=True)
        self._thread.start()

    def record(self, rows: list[dict[str, Any]]) -> Future[None]:
        """Queue completion rows (``Completion`` column values); the future resolves once committed."""
        fut: Future[None] = Future()
        self._q.put((rows, fut))
        return fut

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            batch = [item]
            while True:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._q.put(None)
                    break
                batch.append(nxt)
            try:
                with session_scope(self.url) as s:
                    s.add_all(Completion(**r) for rows, _ in batch for r in rows)
            except Exception as e:
                log.exception("could not record %d completion batch(es)", len(batch))
                for _, fut in batch:
                    fut.set_exception(e)
            else:
                for _, fut in batch:
                    fut.set_result(None)

    # --- synchronous reads/writes (run in a worker thread by the app) ----------------------------

    def add_feedback(self, body: Any, labeller: str | None) -> int:
        """Store a rating or comparison; raises LookupError naming a completion id that does not exist."""
        with session_scope(self.url) as s:
            for field, cid in (
                ("completion_id", body.completion_id),
                ("other_completion_id", body.other_completion_id),
            ):
                if cid is not None and s.get(Completion, cid) is None:
                    raise LookupError(
                        f"{field}: no completion {cid!r}; use the id of a response of this server"
                    )
            fb = Feedback(
                kind=body.kind,
                completion_id=body.completion_id,
                other_completion_id=body.other_completion_id,
                rating=body.rating,
                preferred=body.preferred,
                unsafe=body.unsafe,
                note=body.note,
                labeller=labeller,
                source="api",
            )
            s.add(fb)
            s.flush()
            return fb.id
