"""Pretraining throughput on one GPU: a GPT-2 preset in bf16, compiled; plain PyTorch vs Lightning, MFU.

At ``--preset`` (default ``gpt2-124m``: 12 layers, 768 dims, context 1024, vocab 50304), bf16-mixed
and ``torch.compile``, with the preset's per-worker micro-batch accumulated to the preset's tokens
per step (``--batch-size``, ``--grad-accum`` change them), this measures in the same run:

a. the bf16 matmul peak (8192³), before and after the paths — the MFU denominator is their mean;
b*. the plain loop of ``bench/train_throughput.py`` under bf16 autocast, compiled;
c*. ``pretrain()`` in one process (Lightning), ``train.compile``.

MFU is also printed against the card's datasheet dense bf16 peak where the card is known. Ray is
not among the paths (one GPU is one worker). ``--device cpu --preset tiny`` rehearses the script
on a CPU. Run: ``python bench/train_throughput_gpu.py [--steps 20] [--warmup 3]``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from train_throughput import lightning_path, make_tokens, plain_loop  # noqa: E402

from core.config import Config  # noqa: E402
from gpt.model import GPT  # noqa: E402

# Dense bf16 tensor-core peaks from the vendors' datasheets (FLOP/s), by device-name substring, most
# specific first. The measured matmul peak is the MFU denominator; these are printed beside it.
DATASHEET_BF16 = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989.4e12), ("H200", 989.4e12),
                  ("A100", 312e12))  # fmt: skip


def gpu_config(
    preset: str, steps: int, grad_accum: int | None, use_gpu: bool, batch_size: int | None = None
) -> Config:
    """``preset`` (bf16-mixed, compiled) for a short run: one process, no checkpoints but the last.

    By default one GPU trains as one of the preset's workers does: the preset's per-worker micro-batch
    (``batch_size / num_workers``), accumulated so that a step holds the preset's tokens per step.
    """
    from core.config import load_config

    base = load_config(preset).train
    batch_size = batch_size or max(1, base.batch_size // base.num_workers)
    grad_accum = grad_accum or max(1, base.batch_size * base.grad_accum // batch_size)

    over: dict[str, object] = {
        "train.max_steps": steps, "train.warmup_steps": 2, "train.val_every": steps, "train.val_batches": 1,
        "train.log_every": steps, "train.checkpoint_every": steps, "train.keep_checkpoints": 1,
        "train.progress_bar": False, "train.num_workers": 1, "train.use_gpu": use_gpu,
        "train.precision": "bf16-mixed", "train.compile": True, "train.batch_size": batch_size,
        "train.grad_accum": grad_accum,
    }  # fmt: skip
    return load_config(preset, over)


def gpu_main(args: argparse.Namespace) -> None:
    """The preset (GPT-2 124M) in bf16, compiled, on one GPU: plain loop vs Lightning, MFU."""
    from training.pretrain.flops import measure_matmul_peak

    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("torch sees no CUDA device; run it on a GPU machine (or --gpu-device cpu to rehearse)")
    use_gpu = device == "cuda"
    if use_gpu:
        torch.set_float32_matmul_precision("high")
    name = torch.cuda.get_device_name() if use_gpu else "CPU (rehearsal)"
    cfg = gpu_config(args.preset, args.steps, args.grad_accum, use_gpu, args.batch_size)
    m, tc = cfg.model, cfg.train
    root = Path(tempfile.mkdtemp(prefix="nightshift-bench-train-gpu-"))
    try:
        tokens = make_tokens(root / "art", n_train=2_000_000, n_val=50_000, vocab=min(m.vocab_size, 50257))
        fpt = GPT(m).flops_per_token(m.block_size)
        dtype = torch.bfloat16
        n = 8192 if use_gpu else 1024
        peaks = [measure_matmul_peak(n=n, seconds=3.0, dtype=dtype, device=device)]
        sheet = next((p for key, p in DATASHEET_BF16 if key in name), None)
        print(f"device: {name}, torch {torch.__version__}")
        print(
            f"config: {args.preset}: {m.n_layer} layers, {m.n_embd} dims, {m.n_head} heads, context "
            f"{m.block_size}, vocab {m.vocab_size}, micro-batch {tc.batch_size} x {tc.grad_accum} "
            "accumulated, "
            f"bf16-mixed, torch.compile; {fpt / 1e9:.3f} GFLOP/token; {args.steps} steps, the first "
            f"{args.warmup} untimed"
        )
        print(f"(a) bf16 matmul peak ({n}^3, measured): {peaks[0] / 1e12:.1f} TFLOP/s")
        rows: list[tuple[str, float]] = []
        paths: list[tuple[str, Callable[[], float]]] = [
            (
                "(b*) plain PyTorch loop, compiled, bf16 autocast",
                lambda: plain_loop(cfg, tokens, args.steps, args.warmup, True, device),
            ),
            (
                "(c*) Lightning, 1 process, bf16-mixed, train.compile",
                lambda: lightning_path(cfg.model_copy(deep=True), tokens, root / "lightning", peaks[0]),
            ),
        ][: 1 if args.plain_only else 2]
        for label, run in paths:
            t0 = time.perf_counter()
            try:
                tps = run()
            except Exception:  # report the other path rather than nothing
                traceback.print_exc()
                print(f"  {label}: FAILED")
                continue
            mem = torch.cuda.max_memory_allocated() / 2**30 if use_gpu else float("nan")
            print(
                f"  {label}: {tps:,.0f} tokens/s (whole run {time.perf_counter() - t0:.0f} s, "
                f"peak memory {mem:.1f} GiB)"
            )
            rows.append((label, tps))
            torch._dynamo.reset()
            if use_gpu:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
        peaks.append(measure_matmul_peak(n=n, seconds=3.0, dtype=dtype, device=device))
        peak = sum(peaks) / len(peaks)
        print(f"(a) bf16 matmul peak measured again: {peaks[1] / 1e12:.1f} TFLOP/s; MFU uses the mean")
        sheet_col = "MFU@datasheet"
        print(f"{'path':<55} {'tokens/s':>10} {'MFU':>7} {sheet_col:>14} {'overhead':>9}")
        base = rows[0][1] if rows and rows[0][0].startswith("(b") else None
        for label, tps in rows:
            over = f"{base / tps - 1:+.1%}" if base else "n/a"
            at_sheet = f"{fpt * tps / sheet:.1%}" if sheet else "n/a"
            print(f"{label:<55} {tps:>10,.0f} {fpt * tps / peak:>7.1%} {at_sheet:>14} {over:>9}")
        if sheet:
            print(f"datasheet dense bf16 peak for {name}: {sheet / 1e12:.1f} TFLOP/s")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps per path")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps of the plain loop (compiling)")
    ap.add_argument("--preset", default="gpt2-124m", help="the model and batch preset")
    ap.add_argument("--batch-size", type=int, default=None, help="micro-batch (the preset's per worker)")
    ap.add_argument(
        "--grad-accum", type=int, default=None, help="micro-batches per step (the preset's tokens/step)"
    )
    ap.add_argument("--plain-only", action="store_true", help="the plain loop alone")
    ap.add_argument("--device", default="cuda", help="'cpu' rehearses the script on the CPU")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    gpu_main(args)


if __name__ == "__main__":
    main()
