"""Server-sent event streams of the OpenAI API, as a mixin of the Serve deployment class.

A stream sends what the engine produced since the last write in one write: under load a replica
makes tokens faster than one SSE write each can carry through the proxy, so coalescing what is
ready keeps streaming cheap, while a lone client still gets each token as soon as it exists.
The interval between writes grows with the number of open streams (``serve.stream_writes_per_s``),
so the replica's write rate, and the proxy's work, stays bounded however many clients stream.
"""

import asyncio
import time
from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse

from serving import errors
from serving.engine import Delta
from serving.responses import DONE, Choice, chat_chunk, chat_logprobs, completion_chunk, sse, usage


class EventQueue(asyncio.Queue):
    """A request's engine events; a stream waiting out its interval is woken by a finished choice,
    so the last chunk (and the client's next request) is not held back by the interval."""

    def __init__(self) -> None:
        super().__init__()
        self.wake: asyncio.Future[None] | None = None

    def put_nowait(self, item: tuple[int, Delta]) -> None:
        super().put_nowait(item)
        if item[1].finish_reason and self.wake is not None and not self.wake.done():
            self.wake.set_result(None)

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or until a choice finishes."""
        loop = asyncio.get_running_loop()
        self.wake = loop.create_future()
        timer = loop.call_later(seconds, lambda f: f.done() or f.set_result(None), self.wake)
        try:
            await self.wake
        finally:
            timer.cancel()
            self.wake = None


class StreamingMixin:
    """Streaming responses; needs ``cfg``, ``engine``, ``metrics``, ``name``, ``headers``, ``_record``."""

    _open_streams = 0

    def stream_gap(self) -> float:
        """Seconds between a stream's writes now: ``serve.stream_interval_ms``, or longer when the
        open streams would otherwise write more than ``serve.stream_writes_per_s`` in all.

        Each write costs the replica and the Serve proxy about the same whatever it carries, and
        on a busy machine that cost comes out of the decode loop's CPU: 16 streams writing every
        20 ms made about 800 writes/s, which took the proxy and the replica's event loop about 0.8
        of a core (bench/serve.py). A bounded write rate gives each of 16 streams a write every
        ~64 ms at the default, still many tokens per second each.
        """
        gap = self.cfg.stream_interval_ms / 1000
        if self.cfg.stream_writes_per_s > 0:
            gap = max(gap, self._open_streams / self.cfg.stream_writes_per_s)
        return gap

    async def _events(
        self, q: EventQueue, ids: list[int], total: int
    ) -> AsyncIterator[list[tuple[int, Delta]]]:
        """Batches of events: everything queued is sent in one write, at most one write per
        ``serve.stream_interval_ms`` after the first; a finished choice goes out at once.

        Every write crosses from the replica to the proxy as a message of its own, and under load
        a replica makes tokens far faster than per-token messages can carry them; writing what
        accumulated every few tens of milliseconds keeps a stream cheap without a visible delay
        (vLLM's ``stream_interval`` does the same). The first text goes out at once, so the time
        to first token is not affected.
        """
        done = 0
        last_sent: float | None = None
        self._open_streams += 1
        try:
            while done < total:
                batch = [await q.get()]
                gap = self.stream_gap()
                if last_sent is not None and gap > 0 and not batch[0][1].finish_reason:
                    wait = last_sent + gap - time.perf_counter()
                    if wait > 0:
                        await q.sleep(wait)
                while not q.empty():
                    batch.append(q.get_nowait())
                if any(d.text or d.finish_reason for _, d in batch):
                    last_sent = time.perf_counter()
                    self.metrics.count_stream_write()
                for _, d in batch:
                    if d.finish_reason == "error":
                        raise errors.APIError(503, "the generation engine failed", code="engine_error")
                    if d.finish_reason:
                        done += 1
                yield batch
        finally:
            self._open_streams -= 1
            if done < total:  # the client went away (or the stream failed): free the batch slots
                for rid in ids:
                    self.engine.cancel(rid)
                self.metrics.disconnects.inc()

    def _stream_completions(self, q, ids, rid, texts, n_tokens, total, body, who) -> StreamingResponse:
        async def gen() -> AsyncIterator[str]:
            created, t0 = int(time.time()), time.perf_counter()
            choices = [Choice(i, i // body.n) for i in range(total)]
            first = True
            async for batch in self._events(q, ids, total):
                if first:
                    self.metrics.ttft.observe(time.perf_counter() - t0)
                    first = False
                out = []
                for pi, d in batch:
                    idx = pi * body.n + d.index
                    choices[idx].add(d)
                    if d.text or d.finish_reason or d.logprobs:
                        out.append(
                            sse(completion_chunk(rid, self.name, created, idx, d, body.logprobs is not None))
                        )
                if out:
                    yield "".join(out)
            await self._record("completions", rid, texts, choices, body.n, n_tokens, body, who)
            tail = ""
            if body.stream_options and body.stream_options.include_usage:
                u = usage(sum(n_tokens), sum(c.completion_tokens for c in choices))
                tail = sse(
                    {
                        "id": rid,
                        "object": "text_completion",
                        "created": created,
                        "model": self.name,
                        "choices": [],
                        "usage": u,
                    }
                )
            self._finish_stream("completions", choices, sum(n_tokens), t0)
            yield tail + DONE

        return StreamingResponse(gen(), media_type="text/event-stream", headers=self.headers)

    def _stream_chat(self, q, ids, rid, prompt_text, n_prompt, body, who) -> StreamingResponse:
        async def gen() -> AsyncIterator[str]:
            created, t0 = int(time.time()), time.perf_counter()
            choices = [Choice(i, 0) for i in range(body.n)]
            yield "".join(
                sse(chat_chunk(rid, self.name, created, i, {"role": "assistant", "content": ""}, None))
                for i in range(body.n)
            )
            first = True
            async for batch in self._events(q, ids, body.n):
                if first:
                    self.metrics.ttft.observe(time.perf_counter() - t0)
                    first = False
                out = []
                for _, d in batch:
                    choices[d.index].add(d)
                    lp = None
                    if body.logprobs and d.logprobs:
                        c = Choice(d.index, 0)
                        c.add(d)
                        lp = chat_logprobs(c)
                    if d.text or lp:
                        out.append(
                            sse(chat_chunk(rid, self.name, created, d.index, {"content": d.text}, None, lp))
                        )
                    if d.finish_reason:
                        out.append(sse(chat_chunk(rid, self.name, created, d.index, {}, d.finish_reason)))
                if out:
                    yield "".join(out)
            await self._record("chat", rid, [prompt_text], choices, body.n, [n_prompt], body, who)
            tail = ""
            if body.stream_options and body.stream_options.include_usage:
                u = usage(n_prompt, sum(c.completion_tokens for c in choices))
                tail = sse(
                    {
                        "id": rid,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": self.name,
                        "choices": [],
                        "usage": u,
                    }
                )
            self._finish_stream("chat", choices, n_prompt, t0)
            yield tail + DONE

        return StreamingResponse(gen(), media_type="text/event-stream", headers=self.headers)

    def _finish_stream(self, route: str, choices: list[Choice], prompt_tokens: int, t0: float) -> None:
        self.metrics.count_answer(
            route, time.perf_counter() - t0, prompt_tokens, sum(c.completion_tokens for c in choices)
        )
