"""Pretraining: Lightning over :class:`gpt.model.GPT`, in one process or on Ray Train workers.

Rooms: ``data`` (windows and the resumable sampler), ``module`` (LightningModule), ``optim``
(AdamW groups, warmup + cosine), ``callbacks`` (metrics, MFU, checkpoints), ``checkpoint``
(atomic keep-last-N with sha256 manifests), ``flops`` (matmul peak), ``launch`` (one process
vs Ray Train) and ``run`` (the :func:`pretrain` entry point).
"""

from __future__ import annotations

from training.pretrain.run import PretrainResult, check_inputs, pretrain

__all__ = ["PretrainResult", "check_inputs", "pretrain"]
