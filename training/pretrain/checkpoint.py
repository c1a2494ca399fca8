"""Pretraining checkpoints on disk: atomic, hash-verified, keep-last-N.

A checkpoint is a directory ``<root>/step-000100/`` holding

* ``lightning.ckpt`` — Lightning's full training state (model, optimizer, LR scheduler, loop
  counters, the data sampler's position, the RNG states of every rank), loaded back with
  ``torch.load(weights_only=True)`` so nothing in it is unpickled as code;
* ``model.safetensors`` — the bare weights, for the caller and for serving;
* ``manifest.json`` — written last: the step and each file's sha256 and size.

It is written into a hidden ``.tmp-step-…`` sibling, fsynced, and renamed into place, so a
reader sees either a whole checkpoint or none. A checkpoint whose manifest is missing or whose
files do not match it (a crash mid-copy, a flipped bit, a truncation) is reported by name and
the previous good one is used instead.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from catalog.artifacts import file_sha256, fsync_path, replace_dir

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LIGHTNING_CKPT = "lightning.ckpt"
WEIGHTS = "model.safetensors"
_STEP_DIR = re.compile(r"^step-(\d{6,})$")


class CheckpointError(RuntimeError):
    """A checkpoint directory is incomplete or its files do not match their manifest."""


@dataclass(frozen=True)
class CheckpointInfo:
    """A verified checkpoint directory and the optimizer step it was taken after."""

    path: Path
    step: int

    @property
    def lightning_ckpt(self) -> Path:
        return self.path / LIGHTNING_CKPT

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def staging_dir(root: Path, step: int) -> Path:
    """The temporary directory a checkpoint of ``step`` is written into (same name on every rank)."""
    return root / f".tmp-{step_dir_name(step)}"


def finalize(staging: Path, step: int, keep: int | None = None) -> CheckpointInfo:
    """Hash the files of ``staging``, write the manifest, fsync and rename it to ``step-NNNNNN``.

    An existing checkpoint of the same step (e.g. a corrupt one that a resumed run is
    rewriting) is replaced only once the new one is complete. With ``keep``, older checkpoints
    beyond the newest ``keep`` are then removed.
    """
    files = {}
    for p in sorted(staging.iterdir()):
        if p.is_file() and p.name != MANIFEST:
            fsync_path(p)
            files[p.name] = {"sha256": file_sha256(p), "size": p.stat().st_size}
    manifest = {"step": step, "files": files, "created": time.time()}
    with open(staging / MANIFEST, "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    fsync_path(staging)
    final = staging.parent / step_dir_name(step)
    replace_dir(staging, final)
    if keep is not None:
        prune(staging.parent, keep)
    return CheckpointInfo(final, step)


def verify(path: Path) -> CheckpointInfo:
    """Check a checkpoint directory against its manifest.

    Raises:
        CheckpointError: naming the directory and the first file that is missing, of the wrong
            size or hash, or unlisted.
    """
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise CheckpointError(f"{path}: no {MANIFEST} (an interrupted write?)")
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
        step = int(manifest["step"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{mpath}: unreadable manifest ({e})") from e
    for name, want in sorted(files.items()):
        p = path / name
        if not p.is_file():
            raise CheckpointError(f"{p}: missing")
        if p.stat().st_size != want["size"]:
            raise CheckpointError(f"{p}: {p.stat().st_size} bytes, manifest says {want['size']} (truncated?)")
        if file_sha256(p) != want["sha256"]:
            raise CheckpointError(f"{p}: sha256 does not match the manifest (corrupt)")
    for required in (LIGHTNING_CKPT, WEIGHTS):
        if required not in files:
            raise CheckpointError(f"{path}: manifest lists no {required}")
    return CheckpointInfo(path, step)


def list_steps(root: Path) -> list[tuple[int, Path]]:
    """``(step, dir)`` of every finished checkpoint name under ``root``, newest first (unverified)."""
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out, reverse=True)


def latest_good(candidates: list[Path], max_step: int | None = None) -> CheckpointInfo | None:
    """The verified checkpoint with the highest step among ``candidates``; corrupt ones are logged.

    Args:
        candidates: checkpoint directories (any order; duplicates of a step are fine).
        max_step: ignore checkpoints beyond this step.
    """
    infos: list[tuple[int, Path]] = []
    for path in candidates:
        m = _STEP_DIR.match(path.name)
        infos.append((int(m.group(1)) if m else -1, path))
    for _, path in sorted(infos, key=lambda t: t[0], reverse=True):
        try:
            info = verify(path)
        except CheckpointError as e:
            log.warning("skipping checkpoint %s: %s; trying the previous one", path, e)
            continue
        if max_step is not None and info.step > max_step:
            continue
        return info
    return None


def find_latest(root: Path, max_step: int | None = None) -> CheckpointInfo | None:
    """The newest good checkpoint under ``root`` (``None`` when there is none)."""
    return latest_good([p for _, p in list_steps(root)], max_step=max_step)


def prune(root: Path, keep: int) -> None:
    """Remove all but the newest ``keep`` checkpoints and any stale temporary directories."""
    for _, path in list_steps(root)[keep:]:
        shutil.rmtree(path, ignore_errors=True)


def clean_staging(root: Path) -> None:
    """Remove temporary directories left by a writer that died mid-checkpoint."""
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith((".tmp-step-", ".replaced-")):
                shutil.rmtree(p, ignore_errors=True)


# --- weights -------------------------------------------------------------------------------------


def save_weights(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """Write a model state dict as safetensors, dropping tied duplicates (the LM head is ``wte``)."""
    seen: dict[tuple[int, int], str] = {}
    out: dict[str, torch.Tensor] = {}
    for name, t in state_dict.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key in seen and t.numel() > 0:
            continue  # a tied weight: safetensors refuses shared storage, and loading re-ties it
        seen[key] = name
        out[name] = t.detach().to("cpu").contiguous()
    save_file(out, str(path))


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load safetensors weights written by :func:`save_weights` into ``model`` (ties restored)."""
    state = load_file(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"}
    if unexpected or set(missing) - tied:
        raise CheckpointError(
            f"{path}: weights do not fit the model (missing {missing}, unexpected {unexpected})"
        )
