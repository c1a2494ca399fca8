"""Scores of sampled replies: the reward model's or the verifiable task score, plus the EOS penalty.

PPO and GRPO both score a rollout here; the task score is computed either way (when the prompts
come from the tasks) so the logs show the objective measure next to the optimised one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch

from training.rlhf.rollout import Rollout, rollout
from training.rlhf.sequences import Prompt, collate, encode_prompt, encode_reply, pad_id
from training.rlhf.tasks import TaskExample, is_correct, score

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from core.rlhf_config import GRPOConfig, PPOConfig, SamplingConfig
    from gpt.model import GPT
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


class PromptSampler:
    """What PPO and GRPO share each iteration: sample replies to a batch of task prompts, then score them.

    Args:
        tokenizer: the policy's tokenizer (prompts are encoded once, with the chat template).
        examples: the task examples whose prompts are sampled.
        sampling: reply length, temperature, top-k and the missing-EOS penalty.
        cfg: the algorithm's config: ``reward`` (``task`` or ``reward_model``) and ``normalize_reward``
            (reward-model scores mapped to mean 0, std 1 on the first batch, then fixed).
        reward_model: the frozen reward model, for ``reward='reward_model'``.
        seed: the run's seed; each worker samples with its own generator drawn from it.
        dist: this worker's place among the workers.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        examples: Sequence[TaskExample],
        sampling: SamplingConfig,
        cfg: PPOConfig | GRPOConfig,
        *,
        reward_model: ScalarModel | None,
        seed: int,
        dist: Dist,
    ) -> None:
        self.tokenizer, self.examples, self.sampling = tokenizer, examples, sampling
        self.source, self.reward_model = cfg.reward, reward_model
        self.normalizer = RewardNormalizer(dist=dist) if cfg.normalize_reward else None
        self.generator = torch.Generator().manual_seed(seed + 1 + 7919 * dist.rank)
        self.prompts = [encode_prompt(tokenizer, ex.messages()) for ex in examples]
        self.stop_ids, self.pad = self.prompts[0][1], pad_id(tokenizer)

    def __call__(
        self, policy: GPT, idx: Sequence[int], num_samples: int = 1
    ) -> tuple[Rollout, Scores, float]:
        """``num_samples`` replies to each prompt of ``idx``, their scores, and the seconds sampling took."""
        t0 = time.perf_counter()
        ro = rollout(
            policy,
            [self.prompts[i][0] for i in idx],
            max_new_tokens=self.sampling.max_new_tokens,
            stop_ids=self.stop_ids,
            pad_id=self.pad,
            num_samples=num_samples,
            temperature=self.sampling.temperature,
            top_k=self.sampling.top_k,
            generator=self.generator,
        )
        seconds = time.perf_counter() - t0
        sc = score_rollout(
            ro,
            [self.examples[i] for i in idx],
            self.tokenizer,
            source=self.source,
            reward_model=self.reward_model,
            missing_eos_penalty=self.sampling.missing_eos_penalty,
            normalizer=self.normalizer,
        )
        return ro, sc, seconds


def iteration_metrics(
    ro: Rollout, sc: Scores, rollout_s: float, stats: dict[str, list[float]], dist: Dist, **extra: float
) -> dict[str, float]:
    """A PPO or GRPO iteration's logged figures, averaged over the workers (throughput summed).

    The sampled replies' reward, task score, accuracy, length, share that ended and sampling speed;
    the mean of each update statistic in ``stats``; and the algorithm's own figures in ``extra``.
    """
    row = {
        "reward": float(sc.reward.mean()),
        "task_reward": float(sc.task.mean()),
        "accuracy": float(sc.correct.float().mean()),
        "reply_len": float(ro.reply_lens.float().mean()),
        "eos_frac": float(ro.finished.float().mean()),
        "rollout_tokens_per_s": ro.num_reply_tokens / max(rollout_s, 1e-9),
        **{k: sum(v) / len(v) for k, v in stats.items()},
        **extra,
    }
    return dist.mean_metrics(row, summed=("rollout_tokens_per_s",))
