"""Config of the GPT model: its shape, stored next to its weights in every model artifact."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from core.config_base import Section


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
    activation: Literal["gelu", "gelu_tanh"] = Field(
        "gelu",
        description="MLP activation: exact GELU (the presets': its CPU kernel, forward and backward, took "
        "0.6-0.85x the time of the tanh one here) or GPT-2's tanh approximation (HF 'gelu_new'; imported "
        "GPT-2 checkpoints and models stored before this setting existed).",
    )

    def problems(self) -> list[str]:
        out = []
        if self.n_embd % self.n_head:
            out.append(f"n_embd: {self.n_embd} is not divisible by n_head {self.n_head}")
        return out


def stored_model_config(raw: dict) -> ModelConfig:
    """A :class:`ModelConfig` from a stored ``config.json`` body (its ``format`` marker removed).

    Models stored before ``activation`` existed were trained with GPT-2's tanh GELU, so its absence
    means ``gelu_tanh``, not today's default.
    """
    return ModelConfig(**{"activation": "gelu_tanh", **raw})
