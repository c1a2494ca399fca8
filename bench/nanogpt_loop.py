"""nanoGPT's ``train.py`` rebuilt for the throughput bench: its model and its training step, here.

Rebuilt rather than fetched, so the bench runs without a network. What it reproduces of
nanoGPT (github.com/karpathy/nanoGPT, ``model.py`` and ``train.py``), because each of these costs
or saves time on a CPU:

- the model: learned token and position embeddings, pre-LayerNorm blocks, one fused QKV
  ``Linear``, attention through ``F.scaled_dot_product_attention(is_causal=True)``, an MLP with
  ``nn.GELU()`` (the exact GELU), a final LayerNorm and a head tied to the token embedding; in
  training the forward computes the logits of every position and ``F.cross_entropy`` over them;
- GPT-2's initialisation (normal 0.02, residual projections scaled by 1/sqrt(2 * layers));
- the optimizer: AdamW with weight decay on the matrices only, ``fused`` only on CUDA (the
  foreach kernels on a CPU);
- the step: a random batch drawn from a ``np.memmap`` of the tokens each micro-step (fetched
  right after the forward, as ``train.py`` prefetches), the loss divided by the accumulation,
  a disabled ``GradScaler`` (fp32) around backward and step, the gradient norm clipped to 1.0,
  ``zero_grad(set_to_none=True)``, the cosine learning rate set by hand each iteration, and
  ``loss.item()`` read every iteration (``train.py`` logs every step by default).

Not reproduced: ``torch.compile`` (``train.py`` compiles by default; the bench compares
uncompiled loops, and compiling did not speed the steady step up on this CPU), checkpointing
and evaluation (outside the timed steps). Shape, batch, bias and dropout come from the bench's
config, so every path trains the same model.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class _Attention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, bias: bool):
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))


class _Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, bias: bool):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = _Attention(n_embd, n_head, bias)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.c_proj(self.gelu(self.c_fc(self.ln_2(x))))


class NanoGPT(nn.Module):
    def __init__(self, n_layer: int, n_head: int, n_embd: int, block_size: int, vocab: int, bias: bool):
        super().__init__()
        self.wte = nn.Embedding(vocab, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList(_Block(n_embd, n_head, bias) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=bias)
        self.lm_head = nn.Linear(n_embd, vocab, bias=False)
        self.lm_head.weight = self.wte.weight
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("c_proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)


def nanogpt_tokens_per_s(
    train_bin: Path,
    *,
    n_layer: int,
    n_head: int,
    n_embd: int,
    block_size: int,
    vocab: int,
    bias: bool,
    batch_size: int,
    steps: int,
    warmup: int,
    lr: float = 6e-4,
    min_lr: float = 6e-5,
    grad_accum: int = 1,
) -> float:
    """Steady tokens/s of the rebuilt ``train.py`` loop on uint16 tokens in ``train_bin``."""
    torch.manual_seed(1337)
    data = np.memmap(train_bin, dtype=np.uint16, mode="r")
    model = NanoGPT(n_layer, n_head, n_embd, block_size, vocab, bias)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=torch.cuda.is_available() or None)
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        ix = torch.randint(len(data) - block_size, (batch_size,))
        x = torch.stack([torch.from_numpy(data[i : i + block_size].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + block_size].astype(np.int64)) for i in ix])
        return x, y

    def lr_at(it: int) -> float:
        if it < warmup:
            return lr * (it + 1) / (warmup + 1)
        ratio = min(1.0, (it - warmup) / max(1, steps - warmup))
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)

    x, y = batch()
    t0 = 0.0
    for it in range(steps):
        if it == warmup:
            t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr_at(it)
        for _ in range(grad_accum):
            loss = model(x, y) / grad_accum
            x, y = batch()
            scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        loss.item()
    return batch_size * grad_accum * block_size * (steps - warmup) / (time.perf_counter() - t0)
