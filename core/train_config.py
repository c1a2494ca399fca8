"""Config of the pretraining loop (``train.*``): schedule, optimizer, precision, checkpoints."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from core.config_base import Section

REGISTRY_URI = "models:/"


def registry_model(uri: str) -> tuple[str, str, bool]:
    """``models:/<name>/<version>`` → (name, version, False); ``models:/<name>@<alias>`` → (name, alias,
    True).

    Raises:
        ValueError: ``uri`` is not one of those two forms.
    """
    rest = uri[len(REGISTRY_URI) :] if uri.startswith(REGISTRY_URI) else ""
    by_alias = "@" in rest
    name, _, ref = rest.partition("@") if by_alias else rest.partition("/")
    if not name or not ref or "/" in ref:
        raise ValueError(
            f"{uri!r} is not a registry model URI; write models:/<name>/<version> or models:/<name>@<alias>"
        )
    return name, ref, by_alias


class TrainConfig(Section):
    # --- schedule ---
    max_steps: int = Field(100, ge=1, description="Optimizer steps.")
    batch_size: int = Field(
        8,
        ge=1,
        description="GLOBAL sequences per micro-batch, summed over all workers: each of N workers gets "
        "batch_size / N, so 1 or N workers see the same batches.",
    )
    grad_accum: int = Field(
        1, ge=1, description="Micro-batches per optimizer step (Lightning's accumulate_grad_batches)."
    )
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    min_lr: float = Field(1e-4, ge=0, description="Learning rate at the end of the cosine decay.")
    warmup_steps: int = Field(10, ge=0, description="Linear warmup steps.")
    weight_decay: float = Field(
        0.1, ge=0, description="AdamW weight decay on matrices (not on biases or norms)."
    )
    beta1: float = Field(0.9, gt=0, lt=1, description="AdamW beta1.")
    beta2: float = Field(0.95, gt=0, lt=1, description="AdamW beta2.")
    grad_clip: float = Field(1.0, ge=0, description="Gradient norm clip; 0 disables.")
    # --- where training starts ---
    init: str = Field(
        "champion",
        description="Where pretraining starts: 'champion' (the serving model's weights, continued on "
        "tonight's tokens; a night without a champion starts from scratch), 'scratch' (random weights), "
        "or one model: a model artifact directory, 'models:/<name>/<version>' or "
        "'models:/<name>@<alias>'. A warm start needs the same model shape and tokenizer (data.tokenizer: "
        "reuse) and runs the warmup and cosine schedule again from step 0.",
    )
    replay: float = Field(
        0.25,
        ge=0,
        lt=1,
        description="Under a warm start, the share of each batch drawn from the tokens the parent model "
        "trained on, against forgetting them; skipped when tonight's tokens already hold every source "
        "the parent saw, or when the parent's tokens are gone. 0: tonight's tokens only.",
    )
    # --- evaluation, logging and checkpoints ---
    val_every: int = Field(50, ge=1, description="Optimizer steps between validation passes.")
    val_batches: int = Field(
        8, ge=1, description="Batches (of batch_size fixed val windows) per validation pass."
    )
    log_every: int = Field(
        10, ge=1, description="Optimizer steps between logged train loss, lr and throughput."
    )
    checkpoint_every: int = Field(
        50, ge=1, description="Optimizer steps between checkpoints (and at the end)."
    )
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept on disk (the newest ones).")
    progress_bar: bool = Field(
        True,
        description="A live bar (steps, loss, tokens/s, ETA) on a terminal, on Ray Train too; false: only "
        "the log line every log_every steps.",
    )
    # --- hardware ---
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = Field(
        "auto", description="Lightning precision; 'auto' is bf16-mixed with GPUs and 32-true on CPU."
    )
    compile: bool = Field(
        False,
        description="torch.compile the model (inductor; C++ codegen on CPU, needs a compiler). The first "
        "steps then take ~1 min on a 2-core CPU (~7 s with inductor's cache warm) and the steady step "
        "was no faster for the small preset (bench/train_throughput.py --compile): off for CPU runs.",
    )
    num_workers: int = Field(
        1, ge=1, description="Ray Train workers (1 trains in this process, without Ray)."
    )
    cpus_per_worker: int | None = Field(
        None, ge=1, description="CPUs (and torch threads) per worker; default: the local CPUs / num_workers."
    )
    use_gpu: bool = Field(False, description="Ray Train workers use GPUs.")
    strategy: Literal["ddp", "fsdp"] = Field("ddp", description="Data parallelism of the Ray Train workers.")
    max_failures: int = Field(
        2,
        ge=-1,
        description="Worker-group restarts from the last checkpoint after a failure (-1: unlimited).",
    )
    peak_flops: float | None = Field(
        None,
        gt=0,
        description="Peak FLOP/s of one worker's device for MFU; default: a matmul measured at start.",
    )
    sample_prompts: list[str] = Field(
        default_factory=lambda: ["", "The"],
        description="Prompts the stage samples from after training (logged; '' starts a new document).",
    )

    @field_validator("init")
    @classmethod
    def _init_form(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError(
                "is empty; use 'champion', 'scratch', a model artifact directory or models:/<name>/<version>"
            )
        if v.startswith(REGISTRY_URI):
            registry_model(v)
        return v

    def resolved_precision(self) -> str:
        """The Lightning precision string: ``auto`` becomes bf16-mixed on GPU and 32-true on CPU."""
        if self.precision == "auto":
            return "bf16-mixed" if self.use_gpu else "32-true"
        return self.precision

    def problems(self) -> list[str]:
        out = []
        if self.min_lr > self.lr:
            out.append(f"min_lr: {self.min_lr} is above lr {self.lr}")
        if self.warmup_steps > self.max_steps:
            out.append(f"warmup_steps: {self.warmup_steps} is more than max_steps {self.max_steps}")
        if self.batch_size % self.num_workers:
            out.append(
                f"batch_size: {self.batch_size} (global) is not divisible by num_workers {self.num_workers}; "
                "each worker takes an equal share"
            )
        if self.strategy == "fsdp" and self.num_workers == 1:
            out.append("strategy: 'fsdp' needs num_workers > 1 (one process trains without sharding)")
        if self.strategy == "fsdp" and not self.use_gpu:
            # torch's FSDP refuses to wrap a module without an accelerator device.
            out.append("strategy: 'fsdp' needs use_gpu: true (PyTorch FSDP has no CPU backend); use 'ddp'")
        return out
