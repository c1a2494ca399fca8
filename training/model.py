"""The whole GPT-2 model in one file: attention, MLP, block, model, KV cache and sampling.

GPT-2 as published (Radford et al. 2019): learned absolute positions, pre-LayerNorm blocks, a
GELU MLP of width 4 x n_embd (the exact GELU by default, GPT-2's tanh approximation on request), a
final LayerNorm, and an output head tied to the token embedding. Weights use GPT-2's
initialisation. Attention goes through ``F.scaled_dot_product_attention``, which picks the
flash / memory-efficient kernels on GPU.
Parameter names follow ``GPT2LMHeadModel`` closely so :mod:`training.hf` maps them one to one.

No training code lives here.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

from training.losses import linear_cross_entropy, token_cross_entropy
from training.model_config import ModelConfig


class KVCache:
    """Keys and values of past positions for every layer, preallocated to ``max_len``.

    ``pos`` is the number of positions already filled; a forward pass with a cache writes its
    new keys/values at ``[pos, pos + T)`` and advances ``pos`` once all layers have run.
    """

    def __init__(
        self, n_layer: int, batch: int, n_head: int, max_len: int, head_dim: int, like: torch.Tensor
    ):
        shape = (batch, n_head, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=like.dtype, device=like.device) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, dtype=like.dtype, device=like.device) for _ in range(n_layer)]
        self.pos = 0
        self.max_len = max_len


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

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        mask, causal = None, True
        if cache is not None:
            p = cache.pos
            cache.k[layer][:, :, p : p + T] = k
            cache.v[layer][:, :, p : p + T] = v
            k, v = cache.k[layer][:, :, : p + T], cache.v[layer][:, :, : p + T]  # (B, nh, p+T, hs)
            if p > 0:
                # SDPA's is_causal aligns the mask top-left, which is wrong when queries start at p;
                # query i (absolute position p+i) may see keys 0..p+i.
                causal = False
                if T > 1:
                    mask = torch.ones(T, p + T, dtype=torch.bool, device=x.device).tril(diagonal=p)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=causal
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads
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

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)  # pre-LN: normalise the input of each branch
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
        return_logits: bool = True,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Logits for ``idx`` (B, T); with ``targets`` also the mean cross-entropy (ignore index -100).

        With a ``cache`` the tokens are positions ``cache.pos ..`` of a longer sequence, and the
        cache is advanced by T. ``return_logits=False`` (with ``targets``) returns ``(None, loss)``
        and lets a training step on CPU fuse the output head with the loss
        (:func:`~training.losses.linear_cross_entropy`).
        """
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if start + T > self.cfg.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size {self.cfg.block_size}")
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.transformer.h):
            x = block(x, cache, i)
        if cache is not None:
            cache.pos += T
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
        """Sample continuations of one prompt with the KV cache.

        Args:
            prompt: token ids of the prompt.
            max_new_tokens: at most this many new tokens per sample (capped by the context).
            temperature: 0 means greedy; otherwise logits are divided by it.
            top_k: keep only the k most likely tokens.
            top_p: nucleus sampling, keep the smallest set with cumulative probability >= top_p.
            seed: makes sampling reproducible (a private generator; global RNG untouched).
            eos_id: a token that ends a sample (excluded from the output).
            stop: token sequences that end a sample (excluded from the output).
            num_samples: independent samples of the same prompt, decoded as one batch.
        """
        device = self.transformer.wte.weight.device
        ids = torch.as_tensor(list(prompt) if not torch.is_tensor(prompt) else prompt, dtype=torch.long)
        if ids.numel() == 0:
            raise ValueError("prompt is empty; give at least one token (e.g. the end-of-text token)")
        if ids.numel() >= self.cfg.block_size:
            raise ValueError(
                f"prompt of {ids.numel()} tokens leaves no room in block_size {self.cfg.block_size}"
            )
        max_new_tokens = min(max_new_tokens, self.cfg.block_size - ids.numel())
        gen = torch.Generator(device=device)
        gen.manual_seed(seed if seed is not None else secrets.randbits(63))
        was_training = self.training
        self.eval()
        out: list[list[int]] = [[] for _ in range(num_samples)]
        reason = ["length"] * num_samples
        done = [False] * num_samples
        try:
            cache = self.new_cache(num_samples, ids.numel() + max_new_tokens)
            logits, _ = self(ids.to(device).unsqueeze(0).expand(num_samples, -1), cache=cache)
            for step in range(max_new_tokens):
                nxt = sample_next(logits[:, -1, :], temperature, top_k, top_p, gen)  # (B,)
                for b, t in enumerate(nxt.tolist()):
                    if done[b]:
                        continue
                    if eos_id is not None and t == eos_id:
                        done[b], reason[b] = True, "stop"
                        continue
                    out[b].append(t)
                    for s in stop:
                        if s and out[b][-len(s) :] == list(s):
                            del out[b][-len(s) :]
                            done[b], reason[b] = True, "stop"
                            break
                # No forward pass after the last sampled token: its logits would never be used.
                if all(done) or step == max_new_tokens - 1:
                    break
                logits, _ = self(nxt.unsqueeze(1), cache=cache)
        finally:
            self.train(was_training)
        return SampleOutput(tokens=out, finish_reason=reason)


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token per row of ``logits`` (B, vocab) under temperature, top-k and top-p."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens before it already reach top_p (the first one always stays).
        drop = cum - sorted_logits.softmax(dim=-1) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
