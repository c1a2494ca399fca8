"""The generation engine of a replica: a KV cache of slots and continuous batching.

One background thread owns the model. Each iteration it admits waiting requests (a prefill
pass per request writes the prompt's keys/values into free cache slots and samples the first
token), then runs one decode step for every running sequence at once. Sequences join and leave
the batch between steps, so concurrent clients share forward passes instead of queueing behind
each other (the idea of Orca, Yu et al. OSDI 2022; vLLM's scheduler works the same way).

Running sequences always occupy slots ``0 .. B-1``: when one finishes, the last one is moved
into its slot. The decode step then reads the cache through a view (no gather of B caches),
and attention masks each row to its own length. The forward and the sampler are the model
runtime's own (:meth:`gpt.model.GPT.forward` over a :class:`~gpt.model.KVCache` with per-row
positions, :func:`gpt.sampling.sample_rows`); this module only schedules. Each choice of a
request samples from a generator of its own, so a seeded request gets the same tokens whatever
shares the batch and whichever slot it moves to.

Results go to a per-request ``sink`` callable, invoked from the engine thread with
:class:`Delta` events; serving wraps it to hand events to an asyncio queue.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch.nn import functional as F

from gpt.sampling import SamplingParams, choice_generators, sample_rows
from serving.text import safe_prefix_end, token_bytes

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from gpt.model import GPT

log = logging.getLogger(__name__)

MAX_LOGPROBS = 5  # as the OpenAI completions API


class QueueFull(RuntimeError):
    """The engine's waiting queue is full; the caller should answer 429."""


@dataclass
class Delta:
    """What one sequence produced since the last event."""

    index: int  # choice index within its request
    text: str  # new text (may be empty while a possible stop string is held back)
    token_ids: list[int]
    logprobs: list[tuple[str, float, dict[str, float]]] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" | "length" | None while running
    completion_tokens: int = 0  # tokens sampled so far (stop tokens included)


@dataclass
class _Request:
    id: int
    prompt: list[int]
    params: SamplingParams
    n: int
    sink: Callable[[Delta], None]
    generators: list[torch.Generator]  # one per choice
    submitted: float = field(default_factory=time.perf_counter)
    cancelled: bool = False


@dataclass
class _Seq:
    req: _Request
    index: int
    length: int  # positions filled in the cache
    generator: torch.Generator  # this choice's own
    out: list[int] = field(default_factory=list)
    sampled: int = 0
    sent: int = 0  # characters of text already emitted
    pending_logprobs: list[tuple[str, float, dict[str, float]]] = field(default_factory=list)


def check_request(
    block_size: int, max_batch: int, prompt: Sequence[int], params: SamplingParams, n: int
) -> None:
    """What :meth:`Engine.submit` refuses, as ``ValueError``: also checked before a request crosses
    to an engine process, so the caller gets the same error at once."""
    if not prompt:
        raise ValueError("prompt is empty")
    if len(prompt) + params.max_tokens > block_size:
        raise ValueError(
            f"prompt ({len(prompt)} tokens) + max_tokens ({params.max_tokens}) exceeds the context "
            f"of {block_size} tokens"
        )
    if n > max_batch:
        raise ValueError(f"n={n} exceeds the engine's batch of {max_batch}")


def relayout_linears(model: torch.nn.Module) -> None:
    """Store each linear layer's weight input-major (same values and shape, transposed strides).

    ``F.linear`` then multiplies by a contiguous (in, out) matrix, which MKL's CPU GEMM does about
    30% faster than by the transposed (out, in) one at decode's few rows (1.25 against 1.73 ms for
    a 16-row step of the small preset's linears, one thread; the same at one row, and the same for
    training's thousands of rows). Outputs are unchanged; the tied embedding shares the layout.
    """
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear) and m.weight.stride(1) == 1:
                m.weight.data = m.weight.data.t().contiguous().t()


class Generates:
    """:meth:`generate` for anything with the engine's ``submit`` and ``error``."""

    error: BaseException | None
    submit: Callable[..., int]  # (prompt, params, sink, n) -> request id

    def generate(self, prompt: Sequence[int], params: SamplingParams, n: int = 1) -> list[Delta]:
        """Blocking convenience: run one request to the end and return each choice's final delta
        (whole text, all tokens), in choice order. Used by tests and the in-process benchmark."""
        done = threading.Event()
        acc: dict[int, Delta] = {}

        def sink(d: Delta) -> None:
            a = acc.setdefault(d.index, Delta(d.index, "", []))
            a.text += d.text
            a.token_ids += d.token_ids
            a.logprobs += d.logprobs
            a.completion_tokens = d.completion_tokens
            if d.finish_reason:
                a.finish_reason = d.finish_reason
                if len([x for x in acc.values() if x.finish_reason]) == n:
                    done.set()

        self.submit(prompt, params, sink, n)
        while not done.wait(0.5):
            if self.error is not None:
                raise RuntimeError(f"the generation engine failed: {self.error!r}")
        return [acc[i] for i in range(n)]


class Engine(Generates):
    """Continuous-batching generation over one GPT.

    Args:
        model: the GPT (eval mode; its device is used).
        tokenizer: the model's tokenizer (decodes text deltas and stop strings).
        max_batch: KV cache slots, i.e. sequences decoded together.
        max_waiting: requests that may wait for a slot; :meth:`submit` raises :class:`QueueFull` beyond.
        on_step: called by the engine thread after each prefill round and each decode step (an
            engine process sends their deltas in one message from it).
    """

    def __init__(
        self,
        model: GPT,
        tokenizer: Tokenizer,
        *,
        max_batch: int = 32,
        max_waiting: int = 256,
        on_step: Callable[[], None] | None = None,
    ):
        self.model = model.eval()
        if model.transformer.wte.weight.device.type == "cpu":
            relayout_linears(model)
        self.tok = tokenizer
        self.cfg = model.cfg
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self.cache = model.new_cache(max_batch)  # slot i is row i
        self.device = model.transformer.wte.weight.device
        self._waiting: deque[_Request] = deque()
        self._running: list[_Seq] = []  # _running[i] lives in cache slot i
        self._lock = threading.Condition()
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._stop = False
        self.steps = 0
        self.tokens_generated = 0
        self.error: BaseException | None = None
        self._on_step = on_step or (lambda: None)

    # --- public API (any thread) ----------------------------------------------------------------

    def start(self) -> Engine:
        """Run the decode loop on a thread of its own (see :meth:`run`)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="nightshift-engine", daemon=True)
            self._thread.start()
        return self

    def run(self) -> None:
        """Run the decode loop in the calling thread until :meth:`stop` (or until the engine fails).

        With more than one torch thread, run the loop in the thread that did the process's other
        torch work (its main thread, usually): GNU OpenMP shortens its spin-wait to almost nothing
        once it manages more threads than there are CPUs, which a second thread's team of workers
        makes happen. A decode loop on a new thread of a process whose main thread already ran
        parallel torch ops then pays a sleep and a wake-up for every operator; on 2 CPUs a small
        matmul took 4x as long.
        """
        self._loop()

    def stop(self) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def submit(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        sink: Callable[[Delta], None],
        n: int = 1,
        *,
        request_id: int | None = None,
    ) -> int:
        """Queue ``n`` samples of ``prompt``; returns the request id (for :meth:`cancel`).

        Raises:
            ValueError: an empty prompt, or prompt + max_tokens beyond the context, or n > max_batch.
            QueueFull: too many requests are waiting.
        """
        check_request(self.cfg.block_size, self.max_batch, prompt, params, n)
        rid = next(self._ids) if request_id is None else request_id
        req = _Request(rid, list(prompt), params, n, sink, choice_generators(params.seed, n))
        with self._lock:
            if self.error is not None:
                raise RuntimeError(f"the generation engine failed: {self.error!r}")
            if len(self._waiting) >= self.max_waiting:
                raise QueueFull(f"{len(self._waiting)} requests are already waiting")
            self._waiting.append(req)
            self._lock.notify_all()
        return req.id

    def cancel(self, request_id: int) -> None:
        """Drop a request (a client that went away): from the queue now, from the batch at the next step."""
        with self._lock:
            for r in self._waiting:
                if r.id == request_id:
                    r.cancelled = True
            for s in self._running:
                if s.req.id == request_id:
                    s.req.cancelled = True

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "running": len(self._running),
                "waiting": len(self._waiting),
                "steps": self.steps,
                "tokens_generated": self.tokens_generated,
            }

    # --- engine thread --------------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            with torch.inference_mode():
                while True:
                    with self._lock:
                        while not self._stop and not self._waiting and not self._running:
                            self._lock.wait()
                        if self._stop:
                            return
                        admit = []
                        free = self.max_batch - len(self._running)
                        while self._waiting and self._waiting[0].n <= free:
                            r = self._waiting.popleft()
                            if not r.cancelled:
                                admit.append(r)
                                free -= r.n
                        self._drop_cancelled()
                    for r in admit:
                        self._prefill(r)
                    if admit:
                        self._on_step()  # first tokens go out now, not after the decode step
                    if self._running:
                        self._decode()
                    self._on_step()
        except BaseException as e:  # a bug or OOM: fail every request loudly rather than hang them
            log.exception("generation engine failed")
            with self._lock:
                self.error = e
                for s in self._running:
                    s.req.sink(Delta(s.index, "", [], finish_reason="error", completion_tokens=s.sampled))
                for r in self._waiting:
                    for i in range(r.n):
                        r.sink(Delta(i, "", [], finish_reason="error"))
                self._running.clear()
                self._waiting.clear()
            self._on_step()

    def _drop_cancelled(self) -> None:
        i = 0
        while i < len(self._running):
            if self._running[i].req.cancelled:
                self._release(i)
            else:
                i += 1

    def _release(self, slot: int) -> None:
        """Free ``slot``; the last running sequence moves into it so slots stay contiguous."""
        last = len(self._running) - 1
        if slot != last:
            self.cache.copy_row(last, slice(slot, slot + 1), self._running[last].length)
            self._running[slot] = self._running[last]
        self.cache.reset(slice(last, last + 1))
        self._running.pop()

    def _prefill(self, r: _Request) -> None:
        """The prompt's pass, once for all ``n`` choices: its keys/values are copied into n slots."""
        slot = len(self._running)
        T = len(r.prompt)
        idx = torch.tensor([r.prompt], dtype=torch.long, device=self.device)
        self.cache.reset(slice(slot, slot + 1))
        logits, _ = self.model(idx, cache=self.cache, rows=slice(slot, slot + 1), last_only=True)
        if r.n > 1:
            self.cache.copy_row(slot, slice(slot + 1, slot + r.n), T)
        seqs = [_Seq(r, j, T, generator=r.generators[j]) for j in range(r.n)]
        self._running.extend(seqs)
        self._accept(seqs, logits[:, 0, :].expand(r.n, -1))  # (n, vocab)

    def _decode(self) -> None:
        """One token for every running sequence, each at its own position."""
        seqs = self._running
        B = len(seqs)
        last = torch.tensor(
            [[s.out[-1] if s.out else s.req.prompt[-1]] for s in seqs], dtype=torch.long, device=self.device
        )
        logits, _ = self.model(last, cache=self.cache, rows=slice(0, B))
        for s in seqs:
            s.length += 1
        self._accept(list(seqs), logits[:, 0, :])
        self.steps += 1

    def _accept(self, seqs: list[_Seq], logits: torch.Tensor) -> None:
        """Sample for ``seqs`` (rows of ``logits``), emit deltas, and release finished sequences."""
        tokens = sample_rows([s.req.params for s in seqs], [s.generator for s in seqs], logits).tolist()
        want_lp = [s.req.params.logprobs is not None for s in seqs]
        lp = F.log_softmax(logits.float(), dim=-1) if any(want_lp) else None
        finished: list[_Seq] = []
        for row, (s, t) in enumerate(zip(seqs, tokens, strict=True)):
            if s.req.cancelled:
                finished.append(s)
                continue
            p = s.req.params
            s.sampled += 1
            self.tokens_generated += 1
            reason = None
            if t in p.stop_ids:
                reason = "stop"
            else:
                s.out.append(t)
                if lp is not None and p.logprobs is not None:
                    s.pending_logprobs.append(self._logprob_entry(lp[row], t, p.logprobs))
            text = self.tok.decode(s.out, skip_special_tokens=False)
            end = len(text)
            if reason is None and p.stop:
                hits = [i for x in p.stop if (i := text.find(x)) >= 0]
                if hits:
                    end, reason = min(hits), "stop"
            if reason is None and (s.sampled >= p.max_tokens or s.length >= self.cfg.block_size):
                reason = "length"
            if reason is None:
                end = safe_prefix_end(text, p.stop)
            new_text = text[s.sent : end] if end > s.sent else ""
            s.sent = max(s.sent, end)
            delta = Delta(
                s.index,
                new_text,
                [t] if t not in p.stop_ids else [],
                s.pending_logprobs,
                reason,
                s.sampled,
            )
            s.pending_logprobs = []
            s.req.sink(delta)
            if reason is not None:
                finished.append(s)
        for s in finished:
            self._release(self._running.index(s))

    def _logprob_entry(self, lp: torch.Tensor, token: int, top: int) -> tuple[str, float, dict[str, float]]:
        alts: dict[str, float] = {}
        if top > 0:
            vals, ids = lp.topk(min(top, MAX_LOGPROBS))
            alts = {self._token_text(i): v for v, i in zip(vals.tolist(), ids.tolist(), strict=True)}
        return self._token_text(token), float(lp[token]), alts

    def _token_text(self, token: int) -> str:
        """A token as text; a token that is only part of a UTF-8 character is written as its bytes
        (``bytes:\\xe2\\x80``, as the OpenAI API does), so that different tokens never share a key."""
        text = self.tok.decode([token], skip_special_tokens=False)
        if "\ufffd" not in text:
            return text
        raw = token_bytes(self.tok, token)
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
