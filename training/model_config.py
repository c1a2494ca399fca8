"""Config of the GPT model and of the pretraining loop."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from training.config_base import Section


class ModelConfig(Section):
    # --- shape ---
    n_layer: int = Field(2, ge=1, description="Transformer blocks.")
    n_head: int = Field(2, ge=1, description="Attention heads per block.")
    n_embd: int = Field(64, ge=8, description="Embedding width; a multiple of n_head.")
    block_size: int = Field(128, ge=8, description="Context length in tokens.")
    vocab_size: int = Field(4096, ge=260, description="Embedding rows; at least the tokenizer's vocabulary.")
    # --- regularisation ---
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on attention, residual and embeddings.")
    bias: bool = Field(True, description="Biases in Linear and LayerNorm layers, as GPT-2.")

    def problems(self) -> list[str]:
        out = []
        if self.n_embd % self.n_head:
            out.append(f"n_embd: {self.n_embd} is not divisible by n_head {self.n_head}")
        return out


class TrainConfig(Section):
    # --- schedule ---
    max_steps: int = Field(100, ge=1, description="Optimizer steps.")
    batch_size: int = Field(8, ge=1, description="Sequences per micro-batch per worker.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    min_lr: float = Field(1e-4, ge=0, description="Learning rate at the end of the cosine decay.")
    warmup_steps: int = Field(10, ge=0, description="Linear warmup steps.")
    weight_decay: float = Field(
        0.1, ge=0, description="AdamW weight decay on matrices (not on biases or norms)."
    )
    grad_clip: float = Field(1.0, ge=0, description="Gradient norm clip; 0 disables.")
    # --- evaluation and checkpoints ---
    val_every: int = Field(50, ge=1, description="Steps between validation passes.")
    val_batches: int = Field(8, ge=1, description="Batches per validation pass.")
    checkpoint_every: int = Field(50, ge=1, description="Steps between checkpoints.")
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept on disk.")
    # --- hardware ---
    precision: Literal["32-true", "bf16-mixed", "16-mixed"] = Field(
        "32-true", description="Lightning precision."
    )
    compile: bool = Field(False, description="torch.compile the model.")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (1 runs without Ray).")
    use_gpu: bool = Field(False, description="Ray Train workers use GPUs.")

    def problems(self) -> list[str]:
        out = []
        if self.min_lr > self.lr:
            out.append(f"min_lr: {self.min_lr} is above lr {self.lr}")
        if self.warmup_steps > self.max_steps:
            out.append(f"warmup_steps: {self.warmup_steps} is more than max_steps {self.max_steps}")
        return out
