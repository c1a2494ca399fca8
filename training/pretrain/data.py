"""Batches for pretraining: random train windows from a counter-based stream, fixed val windows.

Micro-batch ``i`` of the run is ``batch_size`` (global) windows of ``block_size + 1`` tokens whose
starts are drawn by ``np.random.default_rng((seed, i))``. The generator's position is therefore
one integer, the number of micro-batches consumed, which the checkpoint stores; a resumed run
continues the same stream exactly. Every rank computes the same global starts and takes its own
contiguous slice, so 1 or N workers train on the same global batches (DDP averages the
gradients of equal shards, which equals the gradient of the whole batch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from training.data.shards import TokenSplit

if TYPE_CHECKING:
    from core.config import Config
    from training.data.shards import TokenShards


def train_starts(seed: int, index: int, n_tokens: int, window: int, batch: int) -> np.ndarray:
    """Start offsets of the ``batch`` windows of global micro-batch ``index`` (deterministic)."""
    rng = np.random.default_rng((seed, index))
    return rng.integers(0, n_tokens - window + 1, size=batch)


def val_starts(n_tokens: int, window: int, count: int) -> np.ndarray:
    """``count`` evenly spaced window starts covering the split (overlapping when it is short)."""
    return np.linspace(0, n_tokens - window, num=count).astype(np.int64)


def _as_xy(rows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.from_numpy(np.stack(rows).astype(np.int64))  # (B, T+1)
    return t[:, :-1].contiguous(), t[:, 1:].contiguous()  # inputs and next-token targets, (B, T) each


def _xy(split: TokenSplit, starts: np.ndarray, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _as_xy([split.window(int(s), window) for s in starts])


def replay_rows(global_batch: int, share: float) -> int:
    """How many windows of each global micro-batch come from the replay split (at least one when
    the share is positive, never the whole batch)."""
    if share <= 0 or global_batch < 2:
        return 0
    return min(global_batch - 1, max(1, round(share * global_batch)))


class TrainWindows(Dataset):
    """Map-style dataset whose item ``i`` is this rank's share of global micro-batch ``i``.

    With a ``replay`` split, the first :func:`replay_rows` windows of every global micro-batch are
    drawn from it (a second counter-based stream, so resuming stays exact) and the rest from
    ``split``; the rows are then interleaved by a fixed permutation so every rank gets its share
    of both.
    """

    def __init__(
        self,
        split: TokenSplit,
        block_size: int,
        global_batch: int,
        rank: int,
        world: int,
        seed: int,
        replay: TokenSplit | None = None,
        replay_share: float = 0.0,
    ):
        self.split, self.window, self.seed = split, block_size + 1, seed
        self.global_batch, self.local = global_batch, global_batch // world
        self.lo = rank * self.local
        self.n_tokens = len(split)
        self.replay = replay
        self.n_replay = replay_rows(global_batch, replay_share) if replay is not None else 0
        self.order = np.random.default_rng((seed, 2**31)).permutation(global_batch)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        starts = train_starts(self.seed, index, self.n_tokens, self.window, self.global_batch)
        if not self.n_replay:
            return _xy(self.split, starts[self.lo : self.lo + self.local], self.window)
        assert self.replay is not None
        old = train_starts(self.seed + 1, index, len(self.replay), self.window, self.n_replay)
        rows = [self.replay.window(int(s), self.window) for s in old]
        rows += [self.split.window(int(s), self.window) for s in starts[self.n_replay :]]
        return _as_xy([rows[i] for i in self.order[self.lo : self.lo + self.local]])


class ValWindows(Dataset):
    """The fixed validation windows, item ``i`` being this rank's share of val micro-batch ``i``."""

    def __init__(
        self, split: TokenSplit, block_size: int, global_batch: int, batches: int, rank: int, world: int
    ):
        self.split, self.window, self.batches = split, block_size + 1, batches
        self.local = global_batch // world
        self.starts = val_starts(len(split), self.window, global_batch * batches).reshape(
            batches, global_batch
        )
        self.lo = rank * self.local

    def __len__(self) -> int:
        return self.batches

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _xy(self.split, self.starts[index, self.lo : self.lo + self.local], self.window)


class ResumableSampler(Sampler[int]):
    """Yields micro-batch indices ``start .. total-1``.

    ``len()`` is ``total`` even after a resume, because Lightning restores its own count of the
    batches already seen and ends the epoch when that count reaches ``len()``.
    """

    def __init__(self, start: int, total: int):
        self.start, self.total = start, total

    def __iter__(self):
        return iter(range(self.start, self.total))

    def __len__(self) -> int:
        return self.total


class TokenDataModule(L.LightningDataModule):
    """Train and val loaders over a ``tokens`` artifact, sharded by rank, resumable by position.

    Args:
        train: the train split.
        val: the val split.
        block_size: model context; windows are ``block_size + 1`` tokens.
        batch_size: GLOBAL sequences per micro-batch (each rank gets ``batch_size / world``).
        grad_accum: micro-batches per optimizer step.
        max_steps: optimizer steps of the whole run.
        val_batches: micro-batches per validation pass.
        seed: seed of the train window stream.
        rank: this worker's global rank.
        world: number of workers.
        replay: a train split of older tokens (a warm start's parent data) mixed into each batch.
        replay_share: the share of each global batch drawn from ``replay``.
    """

    def __init__(
        self,
        train: TokenSplit,
        val: TokenSplit,
        *,
        block_size: int,
        batch_size: int,
        grad_accum: int,
        max_steps: int,
        val_batches: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        pin_memory: bool = False,
        replay: TokenSplit | None = None,
        replay_share: float = 0.0,
    ):
        super().__init__()
        self.replay, self.replay_share = replay, replay_share
        self.train_split, self.val_split = train, val
        self.block_size, self.batch_size, self.grad_accum = block_size, batch_size, grad_accum
        self.max_steps, self.val_batches, self.seed = max_steps, val_batches, seed
        self.rank, self.world, self.pin_memory = rank, world, pin_memory
        self.position = 0  # micro-batches of the train stream consumed before this fit

    @classmethod
    def for_run(
        cls,
        shards: TokenShards,
        cfg: Config,
        *,
        rank: int = 0,
        world: int = 1,
        replay: TokenShards | None = None,
    ) -> TokenDataModule:
        """The data of a pretraining run: ``cfg.train``'s batches of ``cfg.model.block_size`` windows,
        ``train.replay`` of them from ``replay``'s train split when given."""
        tc = cfg.train
        return cls(
            shards.split("train"),
            shards.split("val"),
            block_size=cfg.model.block_size,
            batch_size=tc.batch_size,
            grad_accum=tc.grad_accum,
            max_steps=tc.max_steps,
            val_batches=tc.val_batches,
            seed=cfg.seed,
            rank=rank,
            world=world,
            pin_memory=tc.use_gpu,
            replay=replay.split("train") if replay is not None else None,
            replay_share=tc.replay if replay is not None else 0.0,
        )

    def train_dataloader(self) -> DataLoader:
        ds = TrainWindows(
            self.train_split,
            self.block_size,
            self.batch_size,
            self.rank,
            self.world,
            self.seed,
            replay=self.replay,
            replay_share=self.replay_share,
        )
        sampler = ResumableSampler(self.position, self.max_steps * self.grad_accum)
        # batch_size=None: each item already is a batch. In-process loading: a window copy out of a
        # memmap costs microseconds, less than a worker process's IPC would.
        return DataLoader(ds, batch_size=None, sampler=sampler, num_workers=0, pin_memory=self.pin_memory)

    def fixed_val_loader(self) -> DataLoader:
        """The fixed validation windows (not `val_dataloader`: validation runs from a callback)."""
        ds = ValWindows(
            self.val_split, self.block_size, self.batch_size, self.val_batches, self.rank, self.world
        )
        return DataLoader(ds, batch_size=None, shuffle=False, num_workers=0, pin_memory=self.pin_memory)

    def state_dict(self) -> dict[str, Any]:
        # Checkpoints are taken after an optimizer step, so the stream has advanced by exactly
        # global_step * grad_accum micro-batches.
        step = self.trainer.global_step if self.trainer is not None else 0
        return {"position": step * self.grad_accum, "seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.position = int(state_dict["position"])
