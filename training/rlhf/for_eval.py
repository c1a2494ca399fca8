"""The RLHF pieces evaluation needs: held-out task items and the reward model as a function.

:mod:`training.eval` takes task items (``task``, chat ``messages``, ``check(reply)``) and a
``reward_fn(prompt, reply) -> float``; these adapters build both from the RLHF task family and a
``reward_model`` artifact, so the gates judge a policy on the same held-out prompts and with the
same reward model that RLHF used.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from itertools import zip_longest
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from catalog.artifacts import ArtifactRef
from training.eval.tasks import EvalItem
from training.rlhf.heads import load_reward_model
from training.rlhf.scoring import reward_model_scores
from training.rlhf.tasks import is_correct, tasks_from_config

if TYPE_CHECKING:
    from core.config import Config
    from training.eval.tasks import EvalItem


def eval_items(cfg: Config) -> list[EvalItem]:
    """The held-out task prompts of ``cfg.rlhf.tasks`` (never trained on), with their checkers."""
    splits = tasks_from_config(cfg.rlhf, cfg.seed)
    # Round-robin over the families, so that `eval.max_task_items` (the first n items) covers all.
    by_family: dict[str, list] = {}
    for ex in splits.eval:
        by_family.setdefault(ex.family, []).append(ex)
    ordered = [ex for group in zip_longest(*by_family.values()) for ex in group if ex is not None]
    return [
        EvalItem(task=ex.family, messages=ex.messages(), check=partial(is_correct, ex), reference=ex.answer)
        for ex in ordered
    ]


def reward_fn(reward_model: ArtifactRef | str | Path, *, chat: bool = True) -> Callable[[str, str], float]:
    """``(prompt, reply) -> score`` of a ``reward_model`` artifact; a chat prompt is the user's message."""
    model, tok, _ = load_reward_model(reward_model)

    def score(prompt: str, reply: str) -> float:
        p = [{"role": "user", "content": prompt}] if chat else prompt
        with torch.no_grad():
            return float(reward_model_scores(model, tok, [p], [reply])[0])

    return score
