"""The generation engine of a replica: a KV cache of slots and continuous batching.

One background thread owns the model. Each iteration it admits waiting requests (a prefill
pass per request writes the prompt's keys/values into free cache slots and samples the first
token), then runs one decode step for every running sequence at once. Sequences join and leave
the batch between steps, so concurrent clients share forward passes instead of queueing behind
each other (the idea of Orca, Yu et al. OSDI 2022; vLLM's scheduler works the same way).

Running sequences always occupy slots ``0 .. B-1``: when one finishes, the last one is moved
into its slot. The decode step then reads the cache through a view (no gather of B caches),
and attention masks each row to its own length.

Results go to a per-request ``sink`` callable, invoked from the engine thread with
:class:`Delta` events; serving wraps it to hand events to an asyncio queue.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch.nn import functional as F

from serving.text import safe_prefix_end, token_bytes

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from training.model import GPT

log = logging.getLogger(__name__)

MAX_LOGPROBS = 5  # as the OpenAI completions API
# Below this a temperature samples greedily: logits / 1e-300 overflow float32 to inf, and the
# softmax of inf is NaN (a request with such a temperature got arbitrary tokens).
MIN_TEMPERATURE = 1e-6


class QueueFull(RuntimeError):
    """The engine's waiting queue is full; the caller should answer 429."""


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_ids: tuple[int, ...] = ()  # tokens that end a sequence without being part of its text
    logprobs: int | None = None  # top-n alternatives per token (0 .. MAX_LOGPROBS)


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
    generator: torch.Generator
    submitted: float = field(default_factory=time.perf_counter)
    cancelled: bool = False


@dataclass
class _Seq:
    req: _Request
    index: int
    length: int  # positions filled in the cache
    out: list[int] = field(default_factory=list)
    sampled: int = 0
    sent: int = 0  # characters of text already emitted
    pending_logprobs: list[tuple[str, float, dict[str, float]]] = field(default_factory=list)


class Engine:
    """Continuous-batching generation over one GPT.

    Args:
        model: the GPT (eval mode; its device is used).
        tokenizer: the model's tokenizer (decodes text deltas and stop strings).
        max_batch: KV cache slots, i.e. sequences decoded together.
        max_waiting: requests that may wait for a slot; :meth:`submit` raises :class:`QueueFull` beyond.
    """

    def __init__(self, model: GPT, tokenizer: Tokenizer, *, max_batch: int = 32, max_waiting: int = 256):
        self.model = model.eval()
        self.tok = tokenizer
        self.cfg = model.cfg
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        p = model.transformer.wte.weight
        shape = (max_batch, self.cfg.n_head, self.cfg.block_size, self.cfg.n_embd // self.cfg.n_head)
        self.k = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in range(self.cfg.n_layer)]
        self.v = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in range(self.cfg.n_layer)]
        self.device = p.device
        self._waiting: deque[_Request] = deque()
        self._running: list[_Seq] = []  # _running[i] lives in cache slot i
        self._lock = threading.Condition()
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._stop = False
        self.steps = 0
        self.tokens_generated = 0
        self.error: BaseException | None = None

    # --- public API (any thread) ----------------------------------------------------------------

    def start(self) -> Engine:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="nightshift-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def submit(
        self, prompt: Sequence[int], params: SamplingParams, sink: Callable[[Delta], None], n: int = 1
    ) -> int:
        """Queue ``n`` samples of ``prompt``; returns the request id (for :meth:`cancel`).

        Raises:
            ValueError: an empty prompt, or prompt + max_tokens beyond the context, or n > max_batch.
            QueueFull: too many requests are waiting.
        """
        if not prompt:
            raise ValueError("prompt is empty")
        if len(prompt) + params.max_tokens > self.cfg.block_size:
            raise ValueError(
                f"prompt ({len(prompt)} tokens) + max_tokens ({params.max_tokens}) exceeds the context "
                f"of {self.cfg.block_size} tokens"
            )
        if n > self.max_batch:
            raise ValueError(f"n={n} exceeds the engine's batch of {self.max_batch}")
        gen = torch.Generator(device="cpu")
        gen.manual_seed(params.seed if params.seed is not None else secrets.randbits(63))
        req = _Request(next(self._ids), list(prompt), params, n, sink, gen)
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
                    if self._running:
                        self._decode()
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
            n = self._running[last].length
            for layer in range(self.cfg.n_layer):
                self.k[layer][slot, :, :n] = self.k[layer][last, :, :n]
                self.v[layer][slot, :, :n] = self.v[layer][last, :, :n]
            self._running[slot] = self._running[last]
        self._running.pop()

    def _block(self, i: int, x: torch.Tensor, attend: Callable[..., torch.Tensor]) -> torch.Tensor:
        blk = self.model.transformer.h[i]
        h = blk.ln_1(x)
        B, T, C = h.shape
        nh, hs = self.cfg.n_head, C // self.cfg.n_head
        q, k, v = blk.attn.c_attn(h).split(C, dim=2)
        q, k, v = (t.view(B, T, nh, hs).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = attend(i, q, k, v).transpose(1, 2).reshape(B, T, C)
        x = x + blk.attn.c_proj(y)
        return x + blk.mlp(blk.ln_2(x))

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(self.model.transformer.ln_f(x))

    def _prefill(self, r: _Request) -> None:
        slot = len(self._running)
        T = len(r.prompt)
        idx = torch.tensor([r.prompt], dtype=torch.long, device=self.device)
        pos = torch.arange(T, device=self.device)
        x = self.model.transformer.wte(idx) + self.model.transformer.wpe(pos)

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            # The same prompt for all n choices: one pass, its keys/values copied into n slots.
            self.k[i][slot : slot + r.n, :, :T] = k
            self.v[i][slot : slot + r.n, :, :T] = v
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        for i in range(self.cfg.n_layer):
            x = self._block(i, x, attend)
        logits = self._logits(x[:, -1, :]).expand(r.n, -1)  # (n, vocab)
        seqs = [_Seq(r, j, T) for j in range(r.n)]
        self._running.extend(seqs)
        self._accept(seqs, logits)

    def _decode(self) -> None:
        seqs = self._running
        B = len(seqs)
        last = torch.tensor([s.out[-1] if s.out else s.req.prompt[-1] for s in seqs], device=self.device)
        lengths = torch.tensor([s.length for s in seqs], device=self.device)  # position of the new token
        L = int(lengths.max()) + 1
        x = (self.model.transformer.wte(last) + self.model.transformer.wpe(lengths)).unsqueeze(1)
        rows = torch.arange(B, device=self.device)
        # Row b may attend to keys 0 .. lengths[b] (its own past and the new token). An additive
        # float mask: SDPA's CPU kernels take it about a third faster than a boolean one.
        visible = torch.arange(L, device=self.device)[None, :] <= lengths[:, None]
        mask = torch.zeros(B, 1, 1, L, dtype=x.dtype, device=self.device).masked_fill_(
            ~visible.view(B, 1, 1, L), float("-inf")
        )

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            self.k[i][rows, :, lengths] = k[:, :, 0]
            self.v[i][rows, :, lengths] = v[:, :, 0]
            return F.scaled_dot_product_attention(
                q, self.k[i][:B, :, :L], self.v[i][:B, :, :L], attn_mask=mask
            )

        for i in range(self.cfg.n_layer):
            x = self._block(i, x, attend)
        for s in seqs:
            s.length += 1
        self._accept(list(seqs), self._logits(x[:, 0, :]))
        self.steps += 1

    def _sample(self, seqs: list[_Seq], logits: torch.Tensor) -> torch.Tensor:
        """One token per row, each row with its own temperature / top-k / top-p and generator.

        Batched inverse-CDF sampling: each row draws one uniform from its request's generator, and
        how a row is sampled depends only on its own parameters, so a seeded request gets the same
        tokens whatever else shares the batch.
        """
        out = logits.argmax(dim=-1)
        plain, filtered = [], []
        for i, s in enumerate(seqs):
            p = s.req.params
            if p.temperature >= MIN_TEMPERATURE:
                (plain if p.top_p >= 1.0 and not p.top_k else filtered).append(i)
        if not plain and not filtered:
            return out
        V = logits.size(-1)
        dev = logits.device
        u = {i: torch.rand(1, generator=seqs[i].req.generator) for i in plain + filtered}
        for rows, needs_sort in ((plain, False), (filtered, True)):
            if not rows:
                continue
            idx = torch.tensor(rows, device=dev)
            temp = torch.tensor([seqs[i].req.params.temperature for i in rows], device=dev)
            z = logits[idx].float() / temp[:, None]
            uu = torch.cat([u[i] for i in rows]).to(dev)
            if not needs_sort:
                # Plain temperature sampling needs no sorted order: the inverse CDF works on any
                # order, and skipping the (B, vocab) sort is most of the sampling cost.
                cdf = z.softmax(dim=-1).cumsum(dim=-1)
                pick = torch.searchsorted(cdf, (uu * cdf[:, -1]).unsqueeze(1)).clamp_(max=V - 1)
                out[idx] = pick.squeeze(1)
                continue
            sorted_z, order = z.sort(dim=-1, descending=True)
            probs = sorted_z.softmax(dim=-1)
            top_k = torch.tensor([seqs[i].req.params.top_k or V for i in rows], device=dev)
            top_p = torch.tensor([seqs[i].req.params.top_p for i in rows], device=dev)
            # Keep a token when it is within the top k and the tokens before it have not reached top_p.
            keep = (torch.arange(V, device=dev)[None, :] < top_k[:, None]) & (
                probs.cumsum(dim=-1) - probs < top_p[:, None]
            )
            cdf = (probs * keep).cumsum(dim=-1)
            pick = torch.searchsorted(cdf, (uu * cdf[:, -1]).unsqueeze(1)).clamp_(max=V - 1)
            out[idx] = order.gather(1, pick).squeeze(1)
        return out

    def _accept(self, seqs: list[_Seq], logits: torch.Tensor) -> None:
        """Sample for ``seqs`` (rows of ``logits``), emit deltas, and release finished sequences."""
        tokens = self._sample(seqs, logits).tolist()
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
