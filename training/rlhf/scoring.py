"""Scores of sampled replies: the reward model's or the verifiable task score, plus the EOS penalty.

PPO and GRPO both score a rollout here; the task score is computed either way (when the prompts
come from the tasks) so the logs show the objective measure next to the optimised one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch

from training.rlhf.rollout import Rollout
from training.rlhf.sequences import Prompt, collate, encode_reply, pad_id
from training.rlhf.tasks import TaskExample, is_correct, score

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from training.rlhf.distributed import Dist
    from training.rlhf.heads import ScalarModel


@dataclass
class RewardNormalizer:
    """An affine map making reward-model scores mean 0, std 1 on the starting policy's replies.

    A reward model's scale is arbitrary (Bradley-Terry fixes only differences), so a fixed KL
    coefficient or advantage scale means something different for every reward model. Like OpenAI's
    lm-human-preferences, the gain and bias are fitted once, on the first rollout batch (sampled
    before any update), and then kept fixed so rewards stay comparable across the run. With
    several workers (``dist``) the fit is on the whole batch, every worker's rows.
    """

    gain: float = 1.0
    bias: float = 0.0
    fitted: bool = False
    dist: Dist | None = field(default=None, repr=False)

    def __call__(self, raw: torch.Tensor) -> torch.Tensor:
        if not self.fitted:
            if self.dist is not None and self.dist.world > 1:
                mean, var = self.dist.moments(raw.float())
                std = var**0.5
            else:
                std = float(raw.std()) if raw.numel() > 1 else 1.0
                mean = float(raw.mean())
            self.gain = 1.0 / max(std, 1e-6)
            self.bias = -mean * self.gain
            self.fitted = True
        return raw * self.gain + self.bias


@dataclass
class Scores:
    reward: torch.Tensor  # (N,) what the algorithm optimises (penalty included)
    task: torch.Tensor  # (N,) the verifiable task score
    correct: torch.Tensor  # (N,) bool


def decode_replies(rollout: Rollout, tokenizer: Tokenizer) -> list[str]:
    """The text of each sampled reply (stop token excluded)."""
    return [tokenizer.decode(rollout.reply(i), skip_special_tokens=True) for i in range(len(rollout))]


@torch.no_grad()
def reward_model_scores(
    reward_model: ScalarModel, tokenizer: Tokenizer, prompts: Sequence[Prompt], replies: Sequence[str]
) -> torch.Tensor:
    """The reward model's score of each reply *as text*, (N,).

    Replies are re-encoded as the reward model was trained (canonical tokens, then the end marker):
    a sampled reply may spell a word with other tokens than ``tokenizer.encode`` would, and the
    reward model has only ever seen the canonical spelling.
    """
    block = reward_model.cfg.block_size
    encoded = [encode_reply(tokenizer, p, r) for p, r in zip(prompts, replies, strict=True)]
    seqs = [ids[:block] for ids, _ in encoded]
    starts = [min(s, len(ids) - 1) for (_, s), ids in zip(encoded, seqs, strict=True)]
    dev = next(reward_model.parameters()).device
    batch = collate(seqs, starts, pad_id(tokenizer), dev)
    return reward_model.score(batch.ids, batch.last).float()


def score_rollout(
    rollout: Rollout,
    examples: Sequence[TaskExample],
    tokenizer: Tokenizer,
    *,
    source: Literal["task", "reward_model"],
    reward_model: ScalarModel | None = None,
    missing_eos_penalty: float = 0.0,
    normalizer: RewardNormalizer | None = None,
) -> Scores:
    """Score every row of ``rollout``; ``examples[rollout.prompt_index[i]]`` is row i's task.

    With a ``normalizer``, reward-model scores go through it (task scores are already in [0, 1]).

    Raises:
        ValueError: ``source`` is ``reward_model`` but no reward model was given.
    """
    dev = rollout.ids.device
    texts = decode_replies(rollout, tokenizer)
    exs = [examples[j] for j in rollout.prompt_index]
    task = torch.tensor([score(e, t) for e, t in zip(exs, texts, strict=True)], device=dev)
    correct = torch.tensor([is_correct(e, t) for e, t in zip(exs, texts, strict=True)], device=dev)
    if source == "reward_model":
        if reward_model is None:
            raise ValueError("reward source is 'reward_model' but no reward model was given; train one first")
        reward = reward_model_scores(reward_model, tokenizer, [e.messages() for e in exs], texts).to(dev)
        if normalizer is not None:
            reward = normalizer(reward)
    else:
        reward = task.clone()
    # A reply cut off without its end marker never ended: penalise it so the policy learns to stop
    # (the "missing EOS penalty" of trl's RLOO/PPO trainers).
    reward = reward - missing_eos_penalty * (~rollout.finished).float()
    return Scores(reward=reward, task=task, correct=correct)
