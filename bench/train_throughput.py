"""Pretraining throughput: plain PyTorch vs our Lightning path vs Lightning on Ray Train, with MFU.

At one fixed config (4 layers, 256 dims, 4 heads, context 256, global batch 16, fp32, CPU) this
measures, in the same run:

a. the fp32 matmul peak of this machine (``torch.mm``, all threads) — the MFU denominator — and,
   labelled separately, the matmul rate at the model's own GEMM shapes (what its matmuls can reach);
b. a plain PyTorch loop over the same model, data windows and AdamW;
c. ``pretrain()`` in one process (Lightning), with the presets' exact GELU, and (c-) the same
   with GPT-2's tanh GELU (the activation before exact GELU became the default);
d. Lightning through Ray Train on the local Ray: 1 worker with all CPUs (the fair overhead
   comparison) and 2 workers with one CPU each;
n. nanoGPT's ``train.py`` step, rebuilt in ``bench/nanogpt_loop.py`` (no network needed; what it
   reproduces is listed there), on the same tokens, shape and batch. The "vs nanoGPT" column is
   each path's median over nanoGPT's median.

Steady state only: the first ``--warmup`` steps of each path are not timed. The machine's speed
drifts by more than the overheads measured, so (b) runs right before and after each other path,
each is compared with the mean of those two runs (with Ray shut down, as before any Ray path ran),
and the medians over ``--rounds`` are reported;
for the same reason the matmul peak is measured again before every run of (b), and each run's MFU
is taken against the peak(s) measured next to it.
``--compile`` adds (b) and (c) with ``torch.compile`` (the model; inductor's C++ backend on CPU)
and prints the time of their untimed first steps, which include compiling. Run:
``python bench/train_throughput.py [--steps 30] [--rounds 3] [--peak-flops F] [--compile]``.

``bench/train_throughput_gpu.py`` measures the GPT-2 presets on one GPU with the same loops.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nanogpt_loop import nanogpt_tokens_per_s  # noqa: E402  (bench/ is on sys.path as the script's dir)

from catalog.artifacts import ArtifactRef, publish  # noqa: E402
from core.config import Config, RayConfig  # noqa: E402
from core.model_config import ModelConfig  # noqa: E402
from core.train_config import TrainConfig  # noqa: E402
from gpt.model import GPT  # noqa: E402
from training.data.shards import TokenShards  # noqa: E402

VOCAB = 4096


def make_tokens(root: Path, n_train: int = 400_000, n_val: int = 20_000, vocab: int = VOCAB) -> ArtifactRef:
    """A random ``tokens`` artifact (throughput does not depend on what the tokens say)."""
    rng = np.random.default_rng(0)
    with publish("tokens", root=root) as st:
        splits = {}
        for name, n in (("train", n_train), ("val", n_val)):
            rng.integers(0, vocab, size=n, dtype=np.uint16).tofile(st.path / f"{name}-00000.bin")
            splits[name] = {
                "tokens": n,
                "documents": 1,
                "shards": [{"file": f"{name}-00000.bin", "tokens": n}],
            }
        meta = {"format": "nightshift.tokens/1", "dtype": "uint16", "vocab_size": vocab, "eot_id": vocab - 1}
        (st.path / "meta.json").write_text(json.dumps({**meta, "splits": splits}))
    assert st.ref is not None
    return st.ref


def bench_config(steps: int, activation: str = "gelu", **train: object) -> Config:
    t = dict(
        max_steps=steps, batch_size=16, lr=3e-4, min_lr=3e-5, warmup_steps=1, val_every=steps,
        val_batches=1, log_every=steps, checkpoint_every=steps, keep_checkpoints=1, progress_bar=False,
        precision="32-true",
    )  # fmt: skip
    t.update(train)
    return Config(
        seed=0,
        model=ModelConfig(
            n_layer=4,
            n_head=4,
            n_embd=256,
            block_size=256,
            vocab_size=VOCAB,
            dropout=0.0,
            activation=activation,
        ),
        train=TrainConfig(**t),
        ray=RayConfig(address="local", num_cpus=os.cpu_count()),
    )


def gemm_shapes(cfg: Config) -> list[tuple[int, int, int]]:
    """(m, k, n) of the forward matmuls of one micro-batch (the backward ones are transposes of these)."""
    bt, c, v = cfg.train.batch_size * cfg.model.block_size, cfg.model.n_embd, cfg.model.vocab_size
    per_layer = [(bt, c, 3 * c), (bt, c, c), (bt, c, 4 * c), (bt, 4 * c, c)]
    return per_layer * cfg.model.n_layer + [(bt, c, v)]


def gemm_rate(shapes: list[tuple[int, int, int]], reps: int = 5) -> float:
    """FLOP/s of ``torch.mm`` over ``shapes`` (their total FLOPs over the best time of each)."""
    flops = seconds = 0.0
    for m, k, n in sorted(set(shapes)):
        a, b, out = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
        torch.mm(a, b, out=out)
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.mm(a, b, out=out)
            best = min(best, time.perf_counter() - t0)
        count = shapes.count((m, k, n))
        flops, seconds = flops + count * 2 * m * k * n, seconds + count * best
    return flops / seconds


def settle(busy_pct: float = 15.0, longest_s: float = 15.0) -> None:
    """Wait until the machine is idle (a Ray run's workers tear down for seconds after it returns)."""
    import psutil

    deadline = time.monotonic() + longest_s
    while time.monotonic() < deadline and psutil.cpu_percent(interval=1.0) > busy_pct:
        pass


def plain_loop(
    cfg: Config, tokens: ArtifactRef, steps: int, warmup: int, compile: bool = False, device: str = "cpu"
) -> float:
    """Tokens/s of a bare PyTorch loop: same windows, AdamW groups, clipping, schedule, accumulation.

    On a GPU it runs as Lightning's bf16-mixed does (``torch.autocast`` to bfloat16 around the
    forward, fp32 weights and optimizer) when ``train.precision`` resolves to bf16-mixed.
    """
    from training.pretrain.data import TrainWindows
    from training.pretrain.optim import build_adamw, lr_lambda

    dev = torch.device(device)
    cuda = dev.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    torch.manual_seed(0)
    tc = cfg.train
    model = GPT(cfg.model).to(dev)
    if compile:
        model.compile()
    opt = build_adamw(model, tc.lr, tc.weight_decay, (tc.beta1, tc.beta2), dev)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tc.warmup_steps, tc.max_steps, tc.lr, tc.min_lr))
    data = TrainWindows(TokenShards.open(tokens).split("train"), cfg.model.block_size, tc.batch_size, 0, 1, 0)
    bf16 = "bf16" in tc.resolved_precision()
    accum = tc.grad_accum
    t0 = 0.0
    t_start = time.perf_counter()
    for step in range(steps):
        if step == warmup:
            sync()
            t0 = time.perf_counter()
        for micro in range(accum):
            x, y = data[step * accum + micro]
            if cuda:
                x, y = x.pin_memory().to(dev, non_blocking=True), y.pin_memory().to(dev, non_blocking=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                _, loss = model(x, y, return_logits=False)
            (loss / accum if accum > 1 else loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        if compile and step == warmup - 1:
            sync()
            print(f"    plain loop: first {warmup} steps (compiling) {time.perf_counter() - t_start:.1f} s")
    sync()
    return tc.batch_size * accum * cfg.model.block_size * (steps - warmup) / (time.perf_counter() - t0)


def lightning_path(
    cfg: Config, tokens: ArtifactRef, workdir: Path, peak: float, ray_workers: int = 0
) -> float:
    """Steady tokens/s of our Lightning path, in this process or on ``ray_workers`` Ray Train workers."""
    from training.pretrain import pretrain
    from training.pretrain.launch import fit_with_ray

    if not ray_workers:
        t0 = time.perf_counter()
        tps = pretrain(cfg, tokens, workdir=workdir, peak_flops=peak, resume=False).metrics["tokens_per_s"]
        if cfg.train.compile:
            steady = (
                cfg.train.max_steps * cfg.train.batch_size * cfg.train.grad_accum * cfg.model.block_size / tps
            )
            whole = time.perf_counter() - t0
            print(
                f"    Lightning compiled: whole run {whole:.1f} s, its steps at steady speed {steady:.1f} s"
            )
        return tps
    cpus = os.cpu_count() or 1
    cfg.train.num_workers = ray_workers
    cfg.train.cpus_per_worker = max(1, cpus // ray_workers)
    payload = {
        "cfg": cfg.model_dump(mode="json"), "tokens": str(tokens.path), "workdir": str(workdir),
        "threads": cfg.train.cpus_per_worker, "peak_flops": peak, "callbacks": [],
    }  # fmt: skip
    try:
        fit_with_ray(payload, cfg)
    finally:
        # The plain loop that follows must not share the machine with an idle Ray: its daemons
        # and idle workers cost a loop on 2 CPUs 1-3%, which would hide that much of Ray's overhead.
        import ray

        ray.shutdown()
    return json.loads((workdir / "summary.json").read_text())["tokens_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps per path")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps of the plain loop (as StepMetrics)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every path (medians are reported)")
    ap.add_argument("--peak-flops", type=float, default=None, help="a fixed peak (FLOP/s)")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray Train paths")
    ap.add_argument("--compile", action="store_true", help="also (b) and (c) with torch.compile")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from training.pretrain.flops import measure_matmul_peak

    root = Path(tempfile.mkdtemp(prefix="nightshift-bench-train-"))
    try:
        tokens = make_tokens(root / "art")
        cfg = bench_config(args.steps)
        fpt = GPT(cfg.model).flops_per_token(cfg.model.block_size)
        peak = args.peak_flops or measure_matmul_peak(n=2048, seconds=3.0)
        print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads")
        print(
            f"config: 4 layers, 256 dims, 4 heads, context 256, batch 16, fp32; {fpt / 1e6:.1f} MFLOP/token"
        )
        print(f"(a) fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s")
        shaped = gemm_rate(gemm_shapes(cfg))
        print(f"(a') fp32 matmul at the model's GEMM shapes: {shaped / 1e9:.1f} GFLOP/s (not the MFU peak)")

        peaks: list[float] = []

        def plain() -> float:
            settle()
            # The peak again right before each plain run: the machine's speed drifts, and MFU
            # compares work done with what the same cores could do at that time.
            peaks.append(args.peak_flops or measure_matmul_peak(n=2048, seconds=1.5))
            return plain_loop(cfg, tokens, args.steps, args.warmup)

        m = cfg.model
        nano = "(n) nanoGPT train.py loop (rebuilt)"
        paths: list[tuple[str, Callable[[Path], float]]] = [
            (
                nano,
                lambda d: nanogpt_tokens_per_s(
                    tokens.path / "train-00000.bin",
                    n_layer=m.n_layer,
                    n_head=m.n_head,
                    n_embd=m.n_embd,
                    block_size=m.block_size,
                    vocab=m.vocab_size,
                    bias=m.bias,
                    batch_size=cfg.train.batch_size,
                    steps=args.steps,
                    warmup=args.warmup,
                ),  # fmt: skip
            ),
            ("(c) Lightning, 1 process", lambda d: lightning_path(bench_config(args.steps), tokens, d, peak)),
            (
                "(c-) Lightning, 1 process, tanh GELU",
                lambda d: lightning_path(bench_config(args.steps, "gelu_tanh"), tokens, d, peak),
            ),
        ]
        if not args.no_ray:
            paths += [
                (
                    "(d) Lightning + Ray Train, 1 worker x all CPUs",
                    lambda d: lightning_path(bench_config(args.steps), tokens, d, peak, 1),
                ),
                (
                    "(d') Ray Train, 2 workers",
                    lambda d: lightning_path(bench_config(args.steps), tokens, d, peak, 2),
                ),
            ]
        # This machine's speed drifts by several percent within a minute (a shared host), more than
        # the overheads measured here. So the plain loop runs right before and right after every
        # other path, each path is compared with the mean of its two neighbours, and the medians
        # over the rounds are reported.
        rates: dict[str, list[float]] = {"(b) plain PyTorch loop": []}
        overheads: dict[str, list[float]] = {"(b) plain PyTorch loop": []}
        mfus: dict[str, list[float]] = {"(b) plain PyTorch loop": []}
        for r in range(args.rounds):
            before = plain()
            rates["(b) plain PyTorch loop"].append(before)
            mfus["(b) plain PyTorch loop"].append(fpt * before / peaks[-1])
            for i, (label, run) in enumerate(paths):
                settle()
                tps = run(root / f"r{r}-{i}")
                after = plain()
                rates["(b) plain PyTorch loop"].append(after)
                mfus["(b) plain PyTorch loop"].append(fpt * after / peaks[-1])
                rates.setdefault(label, []).append(tps)
                mfus.setdefault(label, []).append(fpt * tps / ((peaks[-2] + peaks[-1]) / 2))
                overheads.setdefault(label, []).append((before + after) / 2 / tps - 1)
                print(f"  round {r + 1}: {label}: {tps:.0f} tokens/s; plain loop {before:.0f}, {after:.0f}")
                before = after
        overheads["(b) plain PyTorch loop"] = [0.0]
        compiled = []
        if args.compile:
            base_c = plain_loop(cfg, tokens, args.steps, args.warmup, True)
            compiled.append(("(b*) plain PyTorch loop, compiled", base_c, 0.0))
            cfg_c = bench_config(args.steps, compile=True)
            tps_c = lightning_path(cfg_c, tokens, root / "cc", peak)
            compiled.append(("(c*) Lightning, 1 process, train.compile", tps_c, base_c / tps_c - 1))
        mfu_shaped = "MFU@a'"  # MFU against (a'), labelled apart from the honest one against (a)
        print(
            f"matmul peak measured before each plain run: median {statistics.median(peaks) / 1e9:.1f}, "
            f"range {min(peaks) / 1e9:.1f}-{max(peaks) / 1e9:.1f} GFLOP/s"
        )
        print(f"medians of {args.rounds} rounds; overhead against the plain loop runs around each path;")
        print("MFU against the peak measured next to each run (the first peak for compiled runs)")
        print("overhead > 0: slower than the plain loop; vs nanoGPT > 1: faster than nanoGPT's loop")
        print(f"{'path':<50} {'tokens/s':>10} {'MFU':>7} {'overhead':>9} {mfu_shaped:>7} {'vs nanoGPT':>10}")
        rows = [
            (
                label,
                statistics.median(rates[label]),
                statistics.median(mfus[label]),
                statistics.median(overheads[label]),
            )
            for label in rates
        ]
        rows += [(label, tps, fpt * tps / peak, over) for label, tps, over in compiled]
        nano_tps = statistics.median(rates[nano])
        for label, tps, mfu, over in rows:
            print(
                f"{label:<50} {tps:>10.0f} {mfu:>7.1%} {over:>+9.1%} {fpt * tps / shaped:>7.1%} "
                f"{tps / nano_tps:>9.2f}x"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
