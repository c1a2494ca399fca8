"""Reader of ``tokens`` artifacts for pretraining: verified, memory-mapped, shard-spanning views."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from catalog.artifacts import ArtifactRef, open_artifact


@dataclass
class TokenSplit:
    """The token stream of one split: its shards as read-only ``np.memmap``s, indexable as one array.

    ``split[i:j]`` returns a NumPy array even when the range spans shards; ``len(split)`` is the
    total token count; iterating yields the shards' memmaps in order.
    """

    name: str
    shards: list[np.memmap]

    def __post_init__(self) -> None:
        self._offsets = np.cumsum([0] + [len(s) for s in self.shards])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __iter__(self) -> Iterator[np.memmap]:
        return iter(self.shards)

    def __getitem__(self, key: int | slice) -> Any:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                return self.to_numpy()[key]
            return self.window(start, stop - start)
        if key < 0:
            key += len(self)
        if not 0 <= key < len(self):
            raise IndexError(f"token {key} out of range for split '{self.name}' of {len(self)} tokens")
        i = int(np.searchsorted(self._offsets, key, side="right")) - 1
        return self.shards[i][key - self._offsets[i]]

    def window(self, start: int, length: int) -> np.ndarray:
        """``length`` tokens from ``start`` (clipped at the end), copied out of the shards."""
        end = min(start + length, len(self))
        parts = []
        i = max(int(np.searchsorted(self._offsets, start, side="right")) - 1, 0)
        pos = start
        while pos < end and i < len(self.shards):
            lo = pos - self._offsets[i]
            hi = min(end, self._offsets[i + 1]) - self._offsets[i]
            parts.append(np.asarray(self.shards[i][lo:hi]))
            pos = self._offsets[i] + hi
            i += 1
        dtype = self.shards[0].dtype if self.shards else np.uint16
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    def to_numpy(self) -> np.ndarray:
        """The whole split in memory (for small splits and tests)."""
        return self.window(0, len(self))


class TokenShards:
    """A verified ``tokens`` artifact: ``meta`` and per-split memmap views."""

    def __init__(self, ref: ArtifactRef):
        self.ref = ref
        self.meta: dict[str, Any] = json.loads((ref.path / "meta.json").read_text())
        self.dtype = np.dtype(self.meta["dtype"])

    @classmethod
    def open(cls, path_or_ref: str | Path | ArtifactRef, verify: bool = True) -> TokenShards:
        """Open (and by default verify every file of) a ``tokens`` artifact."""
        path = path_or_ref.path if isinstance(path_or_ref, ArtifactRef) else Path(path_or_ref)
        return cls(open_artifact(path, kind="tokens", verify=verify))

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def eot_id(self) -> int:
        return int(self.meta["eot_id"])

    def split(self, name: str) -> TokenSplit:
        """The ``train`` or ``val`` token stream."""
        if name not in self.meta["splits"]:
            raise KeyError(f"{self.ref.path}: no split '{name}'; have {sorted(self.meta['splits'])}")
        shards = [
            np.memmap(self.ref.path / s["file"], dtype=self.dtype, mode="r")
            for s in self.meta["splits"][name]["shards"]
            if s["tokens"]
        ]
        return TokenSplit(name, shards)
