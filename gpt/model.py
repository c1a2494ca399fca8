"""The whole GPT-2 model in one file: attention, MLP, block, model, and the KV cache.

GPT-2 as published (Radford et al. 2019): learned absolute positions, pre-LayerNorm blocks, a
GELU MLP of width 4 x n_embd (the exact GELU by default, GPT-2's tanh approximation on request), a
final LayerNorm, and an output head tied to the token embedding. Weights use GPT-2's
initialisation. Attention goes through ``F.scaled_dot_product_attention``, which picks the
flash / memory-efficient kernels on GPU.
Parameter names follow ``GPT2LMHeadModel`` closely so :mod:`gpt.hf` maps them one to one.

One forward serves training and every kind of decoding: with a :class:`KVCache` it continues
rows of the cache from their own positions (:meth:`GPT.forward`). Sampling lives in
:mod:`gpt.sampling`, the generation loop in :mod:`gpt.generate`. No training code lives here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

from core.model_config import ModelConfig
from gpt.generate import sample
from gpt.losses import linear_cross_entropy, token_cross_entropy
from gpt.sampling import SamplingParams


class KVCache:
    """Keys and values of past positions for every layer, preallocated to ``max_len`` per row.

    Each row has its own length (``lengths[b]`` positions filled): a forward pass with the cache
    continues a contiguous range of rows from their own positions, writes the new keys/values
    there and advances those rows. Rows of one call may sit at different positions when each
    adds one token (the serving engine's decode step), or at the same position for any number
    of tokens (a prefill, a batch of samples of one prompt).
    """

    def __init__(
        self, n_layer: int, batch: int, n_head: int, max_len: int, head_dim: int, like: torch.Tensor
    ):
        shape = (batch, n_head, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=like.dtype, device=like.device) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, dtype=like.dtype, device=like.device) for _ in range(n_layer)]
        self.lengths = [0] * batch  # a list: reading a length never waits for the device
        self.max_len = max_len

    def copy_row(self, src: int, dst: slice, length: int) -> None:
        """Rows ``dst`` become copies of row ``src``'s first ``length`` positions."""
        for k, v in zip(self.k, self.v, strict=True):
            k[dst, :, :length] = k[src, :, :length]
            v[dst, :, :length] = v[src, :, :length]
        for b in range(dst.start, dst.stop):
            self.lengths[b] = length

    def plan(self, rows: slice, T: int, device: torch.device, dtype: torch.dtype) -> _Step:
        """How a forward of ``T`` tokens for ``rows`` reads and writes the cache (one plan, all layers)."""
        starts = self.lengths[rows]
        if not starts:
            raise ValueError(f"rows {rows} are outside the cache's {len(self.lengths)} rows")
        if max(starts) + T > self.max_len:
            raise ValueError(f"{max(starts) + T} positions exceed the cache's {self.max_len}")
        p = starts[0]
        if all(x == p for x in starts):
            return _Step(rows, p, T, p + T)
        if T != 1:
            raise ValueError("rows at different positions can only add one token each")
        # Row b may attend to keys 0 .. starts[b] (its own past and the new token). An additive
        # float mask: SDPA's CPU kernels take it about a third faster than a boolean one.
        pos = torch.tensor(starts, device=device)
        L = max(starts) + 1
        visible = torch.arange(L, device=device)[None, :] <= pos[:, None]
        mask = torch.zeros(len(starts), 1, 1, L, dtype=dtype, device=device)
        mask.masked_fill_(~visible.view(len(starts), 1, 1, L), float("-inf"))
        index = torch.arange(rows.start, rows.stop, device=device)
        return _Step(rows, None, T, L, pos, mask, index)

    def reset(self, rows: slice) -> None:
        """Rows ``rows`` hold nothing: the next forward for them starts at position 0."""
        for b in range(rows.start, rows.stop):
            self.lengths[b] = 0

    def advance(self, step: _Step) -> None:
        for b in range(step.rows.start, step.rows.stop):
            self.lengths[b] += step.T


@dataclass
class _Step:
    """One forward's use of the cache: rows ``rows`` gain ``T`` tokens; they attend to ``L`` keys."""

    rows: slice
    start: int | None  # the rows' common position, or None when they differ (then T == 1)
    T: int
    L: int
    pos: torch.Tensor | None = None  # (B,) each row's position when they differ
    mask: torch.Tensor | None = None  # (B, 1, 1, L) additive mask when they differ
    index: torch.Tensor | None = None  # (B,) the rows' indices in the cache when they differ

    def positions(self, device: torch.device) -> torch.Tensor:
        """Positions of the new tokens: (T,) when the rows share them, else (B, 1)."""
        if self.start is not None:
            return torch.arange(self.start, self.start + self.T, dtype=torch.long, device=device)
        assert self.pos is not None
        return self.pos.unsqueeze(1)

    def attend(
        self, cache: KVCache, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """Write this step's keys/values into the cache and attend over the rows' past."""
        ck, cv = cache.k[layer], cache.v[layer]
        r = self.rows
        if self.start is None:  # one new token per row, each at its own position
            assert self.pos is not None and self.index is not None
            ck[self.index, :, self.pos] = k[:, :, 0]
            cv[self.index, :, self.pos] = v[:, :, 0]
            return F.scaled_dot_product_attention(
                q, ck[r, :, : self.L], cv[r, :, : self.L], attn_mask=self.mask
            )
        p, T = self.start, self.T
        ck[r, :, p : p + T] = k
        cv[r, :, p : p + T] = v
        if p == 0:  # a prefill: the new keys are all there is
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        mask = None
        if T > 1:
            # SDPA's is_causal aligns the mask top-left, which is wrong when queries start at p;
            # query i (absolute position p+i) may see keys 0..p+i.
            mask = torch.ones(T, p + T, dtype=torch.bool, device=q.device).tril(diagonal=p)
        return F.scaled_dot_product_attention(q, ck[r, :, : p + T], cv[r, :, : p + T], attn_mask=mask)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.head_dim = cfg.n_embd // cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.c_proj.residual = True  # scaled at init, see GPT._init_weights
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, step: _Step | None = None
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        if cache is not None and step is not None:
            y = step.attend(cache, layer, q, k, v)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
            )
        y = y.transpose(1, 2).reshape(B, T, C)  # re-assemble the heads
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.c_proj.residual = True
        self.dropout = nn.Dropout(cfg.dropout)
        # GPT-2 used the tanh approximation of GELU ("gelu_new" in transformers); the exact one is
        # the presets' choice because its CPU kernel is the faster one.
        self.approximate = "tanh" if cfg.activation == "gelu_tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias, eps=1e-5)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias, eps=1e-5)
        self.mlp = MLP(cfg)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, step: _Step | None = None
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer, step)  # pre-LN: normalise the input of each branch
        return x + self.mlp(self.ln_2(x))


@dataclass
class SampleOutput:
    tokens: list[list[int]]  # generated ids per row (prompt excluded, stop sequence excluded)
    finish_reason: list[str]  # "stop" (EOS or a stop sequence) or "length"


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        problems = cfg.problems()
        if problems:
            raise ValueError("model config: " + "; ".join(problems))
        self.cfg = cfg
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
                wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
                drop=nn.Dropout(cfg.dropout),
                h=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer)),
                ln_f=nn.LayerNorm(cfg.n_embd, bias=cfg.bias, eps=1e-5),
            )
        )
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        # Weight tying (Press & Wolf 2017): one matrix embeds tokens and scores them.
        self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "residual", False):
                # GPT-2: scale the projections into the residual stream by 1/sqrt(2 * n_layer) so the
                # variance of the stream does not grow with depth.
                std /= math.sqrt(2 * self.cfg.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    # --- sizes and cost -------------------------------------------------------------------------

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameters; by default without the position embedding (the token one is the tied head)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): 6N plus attention (PaLM, appendix B)."""
        T = seq_len or self.cfg.block_size
        return 6 * self.num_params() + 12 * self.cfg.n_layer * self.cfg.n_embd * T

    # --- forward --------------------------------------------------------------------------------

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
        *,
        rows: slice | None = None,
        return_logits: bool = True,
        last_only: bool = False,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Logits for ``idx`` (B, T); with ``targets`` also the mean cross-entropy (ignore index -100).

        With a ``cache``, ``idx`` continues the cache's rows ``rows`` (default: all of them, B
        rows) from each row's own length, and those rows advance by T. ``return_logits=False``
        (with ``targets``) returns ``(None, loss)`` and lets a training step on CPU fuse the output
        head with the loss (:func:`~gpt.losses.linear_cross_entropy`). ``last_only`` returns the
        logits of the last position only (B, 1, vocab): what a decoder samples from.
        """
        B, T = idx.shape
        step = None
        if cache is not None:
            rows = rows if rows is not None else slice(0, B)
            step = cache.plan(rows, T, idx.device, self.transformer.wte.weight.dtype)
            if step.L > self.cfg.block_size:
                raise ValueError(f"sequence of {step.L} tokens exceeds block_size {self.cfg.block_size}")
            pos = step.positions(idx.device)
        else:
            if T > self.cfg.block_size:
                raise ValueError(f"sequence of {T} tokens exceeds block_size {self.cfg.block_size}")
            pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.transformer.h):
            x = block(x, cache, i, step)
        if cache is not None and step is not None:
            cache.advance(step)
        if last_only:
            x = x[:, -1:, :]
            T = 1
        x = self.transformer.ln_f(x)
        if targets is not None and not return_logits:
            return None, linear_cross_entropy(x.view(B * T, -1), self.lm_head.weight, targets.view(-1))
        logits = self.lm_head(x)  # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = token_cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        p = self.transformer.wte.weight
        return KVCache(
            self.cfg.n_layer,
            batch,
            self.cfg.n_head,
            max_len or self.cfg.block_size,
            self.cfg.n_embd // self.cfg.n_head,
            like=p,
        )

    # --- sampling -------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        prompt: Sequence[int] | torch.Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        eos_id: int | None = None,
        stop: Sequence[Sequence[int]] = (),
        num_samples: int = 1,
    ) -> SampleOutput:
        """Sample continuations of one prompt (:func:`gpt.generate.sample`).

        Args:
            prompt: token ids of the prompt.
            max_new_tokens: at most this many new tokens per sample (capped by the context).
            temperature: 0 means greedy; otherwise logits are divided by it.
            top_k: keep only the k most likely tokens.
            top_p: nucleus sampling, keep the smallest set with cumulative probability >= top_p.
            seed: makes sampling reproducible (private generators; global RNG untouched).
            eos_id: a token that ends a sample (excluded from the output).
            stop: token sequences that end a sample (excluded from the output).
            num_samples: independent samples of the same prompt, decoded as one batch.
        """
        ids = list(prompt.tolist()) if torch.is_tensor(prompt) else list(prompt)
        if not ids:
            raise ValueError("prompt is empty; give at least one token (e.g. the end-of-text token)")
        if len(ids) >= self.cfg.block_size:
            raise ValueError(
                f"prompt of {len(ids)} tokens leaves no room in block_size {self.cfg.block_size}"
            )
        seqs = [list(x) for x in stop if len(x)]

        def ends(row: list[int]) -> int:
            return next((len(x) for x in seqs if row[-len(x) :] == x), 0)

        out = sample(
            self,
            [ids],
            SamplingParams(
                max_tokens=min(max_new_tokens, self.cfg.block_size - len(ids)),
                temperature=temperature,
                top_k=top_k or 0,
                top_p=top_p if top_p is not None else 1.0,
                seed=seed,
            ),
            n=num_samples,
            stop_ids=() if eos_id is None else (eos_id,),
            stop_when=ends if seqs else None,
        )
        tokens, reasons = [], []
        for row, finished in zip(out.tokens, out.finished, strict=True):
            if finished:
                cut = 1 if eos_id is not None and row[-1] == eos_id else ends(row)
                row = row[: len(row) - cut]
            tokens.append(row)
            reasons.append("stop" if finished else "length")
        return SampleOutput(tokens=tokens, finish_reason=reasons)
