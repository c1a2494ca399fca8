"""Completions and feedback into the catalog, written by one background thread in batches.

Every response waits until its completion rows are committed (so a client can post feedback on a
completion id the moment it has it, and nothing is lost if the replica dies after answering), but
concurrent requests share one transaction: under load the writer commits many rows at once
instead of one small transaction per request. When a shared transaction fails, each request's rows
are written again on their own, so one bad record fails only its own request; ``failures`` counts
the requests whose rows could not be stored (``nightshift_record_failures_total`` in the replica's metrics).
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from catalog.db import migrate, session_scope
from catalog.models import Completion, Feedback, feedback_target, utcnow

if TYPE_CHECKING:
    from serving.auth import Identity

log = logging.getLogger(__name__)

ANONYMOUS = "anonymous"  # the labeller when serve.auth is 'none'


class NotYours(PermissionError):
    """A client key labelled a completion another key received."""


@dataclass(frozen=True)
class Stored:
    """A stored label: its row id, who it is attributed to, and whether it replaced an earlier one."""

    id: int
    labeller: str
    replaced: bool


def _claim(item: tuple[list[dict[str, Any]], Future[None]]) -> tuple[list[dict[str, Any]], Future[None]]:
    """Mark a request's future running, so that it can no longer be cancelled under the writer.

    A client that leaves while its rows are queued cancels its wait (``asyncio.wrap_future`` cancels
    the future); setting a result on it then raised in the writer thread and ended it, and every
    later response of the replica waited for ever. Its rows are still stored: the completion was
    served, and a lost record is a bug. A left request's outcome goes to a future nobody awaits.
    """
    rows, fut = item
    if not fut.set_running_or_notify_cancel():
        fut = Future()
        fut.set_running_or_notify_cancel()
    return rows, fut


class Recorder:
    def __init__(self, catalog_url: str):
        self.url = catalog_url
        self.failures = 0  # requests whose completion rows could not be stored
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
            batch = [_claim(item)]
            while True:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._q.put(None)
                    break
                batch.append(_claim(nxt))
            try:
                self._write(batch)
            except Exception as e:  # never let the one writer die: every later response would wait for ever
                log.exception("the completion writer failed on a batch of %d requests", len(batch))
                for _, fut in batch:
                    if not fut.done():
                        self._fail(fut, e)

    def _write(self, batch: list[tuple[list[dict[str, Any]], Future[None]]]) -> None:
        try:
            with session_scope(self.url) as s:
                s.add_all(Completion(**r) for rows, _ in batch for r in rows)
        except Exception as e:
            if len(batch) == 1:
                self._fail(batch[0][1], e)
                return
            # One bad row must not fail its neighbours: write each request's rows on their own.
            log.warning("a batch of %d requests failed to record (%s); writing each alone", len(batch), e)
            for one in batch:
                self._write([one])
        else:
            for _, fut in batch:
                fut.set_result(None)

    def _fail(self, fut: Future[None], e: Exception) -> None:
        self.failures += 1
        log.error("could not record a completion: %s", str(e).splitlines()[0] if str(e) else type(e).__name__)
        fut.set_exception(e)

    # --- synchronous reads/writes (run in a worker thread by the app) ----------------------------

    def add_feedback(self, body: Any, who: Identity | None) -> Stored:
        """Store a rating or comparison by ``who``; a repeat on the same target replaces the earlier one.

        Raises:
            LookupError: naming a completion id that does not exist.
            NotYours: ``who`` is a client key and did not receive one of the completions.
        """
        labeller = who.name if who is not None else ANONYMOUS
        target = feedback_target(body.completion_id, body.other_completion_id)
        values = {
            "kind": body.kind,
            "completion_id": body.completion_id,
            "other_completion_id": body.other_completion_id,
            "rating": body.rating,
            "preferred": body.preferred,
            "unsafe": body.unsafe,
            "note": body.note,
            "user": body.user,
            "key_id": who.id if who is not None else None,
        }
        for attempt in range(2):
            try:
                with session_scope(self.url) as s:
                    self._check(s, body, who)
                    row = s.scalars(
                        select(Feedback).where(
                            Feedback.source == "api", Feedback.labeller == labeller, Feedback.target == target
                        )
                    ).first()
                    replaced = row is not None
                    if row is None:
                        row = Feedback(source="api", labeller=labeller, target=target, **values)
                        s.add(row)
                    else:
                        for k, v in values.items():
                            setattr(row, k, v)
                        row.created_at = utcnow()
                    s.flush()
                    return Stored(row.id, labeller, replaced)
            except IntegrityError:
                # The same labeller posted the same target concurrently; the second pass replaces it.
                if attempt:
                    raise
        raise AssertionError("unreachable")

    @staticmethod
    def _check(s: Any, body: Any, who: Identity | None) -> None:
        ids = (("completion_id", body.completion_id), ("other_completion_id", body.other_completion_id))
        for field, cid in ids:
            if cid is None:
                continue
            c = s.get(Completion, cid)
            if c is None:
                raise LookupError(f"{field}: no completion {cid!r}; use the id of a response of this server")
            if who is not None and not who.labels_any and c.key_id != who.id:
                raise NotYours(
                    f"{field}: completion {cid!r} was not served to this key; a client key may give feedback "
                    "only on completions it received (a labeller key, `nightshift keys create --role "
                    "labeller`, may label any)"
                )
