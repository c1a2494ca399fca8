"""Peak FLOP/s of this process's device, measured with a large matmul, for MFU."""

from __future__ import annotations

import logging
import time

import torch

log = logging.getLogger(__name__)


def measure_matmul_peak(
    n: int = 1024,
    seconds: float = 0.5,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> float:
    """FLOP/s of repeated ``n x n`` matmuls on ``device`` with all of this process's torch threads.

    The best of several timed rounds is taken: the peak is what the hardware can do, and MFU
    measures how close training gets to it.

    Args:
        n: matrix side; large enough that the matmul is compute-bound (1024 on a laptop CPU, 4096+ on GPU).
        seconds: rough time budget of the measurement.
        dtype: ``float32`` for fp32 training, ``bfloat16`` for bf16-mixed.
        device: where to measure.
    """
    device = torch.device(device)
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    out = torch.empty(n, n, dtype=dtype, device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    torch.mm(a, b, out=out)  # warm up kernels and caches
    sync()
    t0 = time.perf_counter()
    torch.mm(a, b, out=out)
    sync()
    one = max(time.perf_counter() - t0, 1e-6)
    reps = max(1, int(seconds / 5 / one))
    best = 0.0
    deadline = time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        sync()
        dt = time.perf_counter() - t0
        best = max(best, 2 * n**3 * reps / dt)
        if time.perf_counter() > deadline:
            break
    log.info(
        "matmul peak: %.1f GFLOP/s (%s, n=%d, %d threads)", best / 1e9, dtype, n, torch.get_num_threads()
    )
    return best
