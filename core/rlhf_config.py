"""Config of the RLHF stages (SFT, reward model, PPO, DPO, GRPO): one sub-section per concern.

Defaults are sized for the ``tiny`` preset (2 layers, 32 dims, context 64) so tests run in
seconds; the ``small`` and larger presets raise steps, batches and lengths.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from core.config_base import Section

TASK_FAMILIES = ("copy", "reverse", "max", "add", "refuse", "help", "chat")


class TaskConfig(Section):
    """The verifiable instruction tasks (training/rlhf/tasks.py)."""

    families: list[Literal["copy", "reverse", "max", "add", "refuse", "help", "chat"]] = Field(
        list(TASK_FAMILIES),
        description="Task families to draw from: copy, reverse (words), max (of two numbers), add "
        "(one-digit sums), refuse (unsafe requests get the refusal), help (benign requests, some worded "
        "like unsafe ones, get help), chat (ordinary prompts get a reply, not a refusal).",
    )
    train_size: int = Field(512, ge=1, description="Training examples (SFT pairs and RL prompts).")
    eval_size: int = Field(64, ge=1, description="Held-out evaluation prompts (disjoint from training).")
    eval_fraction: float = Field(
        0.2, gt=0, lt=1, description="Share of each family's prompt space held out for evaluation."
    )
    wrong_per_example: int = Field(
        1, ge=1, description="Preference pairs per training example (one wrong or unsafe reply each)."
    )
    system_prompt: str | None = Field(
        None, description="A system message put before every task prompt (none by default)."
    )


class PreferenceConfig(Section):
    """Where preference pairs come from, and how feedback rows become pairs."""

    use_tasks: bool = Field(True, description="Include the task pairs (chosen correct, rejected wrong).")
    policy_samples: int = Field(
        2,
        ge=0,
        description="Replies sampled from the starting policy per training prompt; each distinct wrong one "
        "becomes a pair under a correct reply (labelled by the task checker). 0 disables.",
    )
    files: list[str] = Field(
        [],
        description="JSONL files of {prompt, chosen, rejected} rows (prompt: a string or a messages list).",
    )
    use_feedback: bool = Field(
        True, description="Include human feedback (ratings and preferences) from the catalog."
    )
    max_feedback: int | None = Field(
        None, ge=1, description="Use at most this many feedback rows, newest first (default: all)."
    )
    min_rating_gap: int = Field(
        1, ge=1, description="Two ratings of the same prompt make a pair when they differ by this much."
    )
    max_disagreement: float = Field(
        0.5,
        ge=0,
        le=1,
        description="A labeller whose votes disagree with the majority of the other labellers on more than "
        "this share of the pairs they share is left out of the snapshot (its data card says why).",
    )
    min_overlap: int = Field(
        3, ge=1, description="Pairs a labeller must share with others before max_disagreement applies."
    )
    refusal: str = Field(
        "I can't help with that.",
        description="The chosen reply paired against a completion flagged unsafe that has no safe sibling; "
        "also the answer of the 'refuse' task.",
    )


class SFTConfig(Section):
    """Supervised fine-tuning (loss on response tokens only)."""

    steps: int = Field(300, ge=1, description="Optimizer steps.")
    max_examples: int | None = Field(
        None,
        ge=1,
        description="Demonstrations used (the first N training examples; None: all). Fewer leaves RL room "
        "to improve on the other training prompts, as bench/rlhf.py does.",
    )
    batch_size: int = Field(32, ge=1, description="Sequences per step.")
    lr: float = Field(1e-2, gt=0, description="Peak learning rate (warmup, then cosine to lr/10).")
    warmup_steps: int = Field(20, ge=0, description="Linear warmup steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay on matrices.")
    grad_clip: float = Field(1.0, ge=0, description="Gradient norm clip; 0 disables.")
    ptx_coef: float = Field(
        0.0,
        ge=0,
        description="Weight of a next-token loss on pretraining windows mixed into each step (InstructGPT's "
        "'ptx'), so the policy keeps its language model; 0 turns it off. Needs the tokens artifact.",
    )
    ptx_batch: int = Field(8, ge=1, description="Pretraining windows per step when ptx_coef > 0.")


class RewardConfig(Section):
    """Reward model: GPT backbone + scalar head, Bradley-Terry loss on preference pairs."""

    steps: int = Field(300, ge=1, description="Optimizer steps.")
    batch_size: int = Field(32, ge=1, description="Preference pairs per step.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate (warmup, then cosine to lr/10).")
    warmup_steps: int = Field(20, ge=0, description="Linear warmup steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay on matrices.")
    grad_clip: float = Field(1.0, ge=0, description="Gradient norm clip; 0 disables.")
    eval_every: int = Field(100, ge=1, description="Steps between held-out accuracy measurements.")


class SamplingConfig(Section):
    """How RL rollouts are sampled (shared by PPO, GRPO and evaluation)."""

    max_new_tokens: int = Field(16, ge=1, description="Longest reply sampled (capped by the context).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of rollouts.")
    top_k: int | None = Field(
        None, ge=1, description="Top-k of rollouts; None samples the full distribution (what PPO assumes)."
    )
    missing_eos_penalty: float = Field(
        1.0, ge=0, description="Subtracted from the score of a reply cut at max_new_tokens without an end."
    )


class PPOConfig(Section):
    """PPO with a value head, per-token KL penalty against the frozen reference, GAE."""

    iterations: int = Field(30, ge=1, description="Rollout batches (each followed by `epochs` of updates).")
    rollout_batch: int = Field(32, ge=1, description="Prompts per rollout batch (one sample each).")
    minibatch: int = Field(16, ge=1, description="Sequences per gradient step.")
    epochs: int = Field(2, ge=1, description="Passes over each rollout batch.")
    lr: float = Field(1e-4, gt=0, description="Policy learning rate.")
    value_lr: float = Field(1e-3, gt=0, description="Value model learning rate.")
    grad_clip: float = Field(1.0, ge=0, description="Gradient norm clip; 0 disables.")
    clip_range: float = Field(0.2, gt=0, description="Policy ratio clip epsilon.")
    value_clip: float = Field(0.2, gt=0, description="Value clip around the rollout's values.")
    vf_coef: float = Field(0.5, ge=0, description="Weight of the value loss.")
    entropy_coef: float = Field(0.0, ge=0, description="Weight of the entropy bonus.")
    gamma: float = Field(1.0, gt=0, le=1, description="Discount.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    kl_coef: float = Field(
        0.1, ge=0, description="Coefficient of the per-token KL penalty (initial value when adaptive)."
    )
    adaptive_kl: bool = Field(
        False, description="Adapt the KL coefficient towards kl_target (Ziegler et al. 2019)."
    )
    kl_target: float = Field(1.0, gt=0, description="Target KL per reply (nats) of the adaptive controller.")
    kl_horizon: int = Field(1000, ge=1, description="Horizon (in sequences) of the adaptive controller.")
    whiten_advantages: bool = Field(True, description="Normalise advantages over each rollout batch.")
    reward: Literal["reward_model", "task"] = Field(
        "reward_model", description="Score of a reply: the reward model's, or the verifiable task score."
    )
    normalize_reward: bool = Field(
        True,
        description="Scale reward-model scores to mean 0, std 1 on the first rollout batch (the SFT "
        "policy's replies), so kl_coef means the same for any reward model.",
    )
    value_init: Literal["reward_model", "policy"] = Field(
        "reward_model", description="Backbone the value model starts from."
    )


class DPOConfig(Section):
    """Direct Preference Optimisation against the SFT reference (Rafailov et al. 2023)."""

    steps: int = Field(200, ge=1, description="Optimizer steps.")
    batch_size: int = Field(32, ge=1, description="Preference pairs per step.")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate (warmup, then cosine to lr/10).")
    warmup_steps: int = Field(10, ge=0, description="Linear warmup steps.")
    grad_clip: float = Field(1.0, ge=0, description="Gradient norm clip; 0 disables.")
    beta: float = Field(0.1, gt=0, description="Inverse temperature of the implicit reward.")
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="Assumed share of flipped labels (conservative DPO); 0 is plain DPO."
    )
    nll_coef: float = Field(
        0.0,
        ge=0,
        description="Weight of the chosen replies' per-token NLL added to the DPO loss (RPO); keeps DPO "
        "from lowering the chosen replies while it widens the margin. 0 is plain DPO.",
    )


class GRPOConfig(Section):
    """Group-relative policy optimisation (Shao et al. 2024): no critic."""

    iterations: int = Field(60, ge=1, description="Rollout batches.")
    prompts_per_step: int = Field(8, ge=1, description="Prompts per rollout batch.")
    group_size: int = Field(8, ge=2, description="Samples per prompt; advantages are relative to the group.")
    minibatch: int = Field(32, ge=1, description="Sequences per gradient step.")
    epochs: int = Field(1, ge=1, description="Passes over each rollout batch.")
    lr: float = Field(3e-4, gt=0, description="Learning rate.")
    grad_clip: float = Field(1.0, ge=0, description="Gradient norm clip; 0 disables.")
    clip_range: float = Field(0.2, gt=0, description="Policy ratio clip epsilon.")
    kl_coef: float = Field(0.02, ge=0, description="Weight of the k3 KL estimate against the reference.")
    scale_rewards: bool = Field(
        False,
        description="Divide group-centred rewards by the group's std, as the GRPO paper. Off (Dr. GRPO, Liu "
        "et al. 2025) by default: the std rescales tiny partial-credit differences to full-size advantages.",
    )
    reward: Literal["task", "reward_model"] = Field(
        "task", description="Score of a reply: the verifiable task score, or the reward model's."
    )
    normalize_reward: bool = Field(
        True, description="Scale reward-model scores to mean 0, std 1 on the first rollout batch."
    )


class PolicyEvalConfig(Section):
    """Evaluation of a policy on the held-out prompts."""

    max_new_tokens: int = Field(16, ge=1, description="Longest reply generated.")
    kl_samples: int = Field(2, ge=1, description="Sampled replies per prompt for the KL estimate.")
    batch_size: int = Field(64, ge=1, description="Prompts per forward batch.")


class RLHFConfig(Section):
    """SFT, reward model and one RL algorithm after pretraining."""

    enabled: bool = Field(
        False, description="pretrain/nightly runs SFT, the reward model and `algorithm` after pretraining."
    )
    algorithm: Literal["ppo", "dpo", "grpo"] = Field(
        "ppo", description="The RL stage after SFT (and the reward model, for ppo)."
    )
    device: str = Field("auto", description="torch device: 'auto' is cuda when available, else cpu.")
    tasks: TaskConfig = Field(default_factory=TaskConfig, description="Verifiable instruction tasks.")
    preferences: PreferenceConfig = Field(
        default_factory=PreferenceConfig, description="Preference data sources."
    )
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="Rollout sampling.")
    sft: SFTConfig = Field(default_factory=SFTConfig, description="Supervised fine-tuning.")
    reward: RewardConfig = Field(default_factory=RewardConfig, description="Reward model.")
    ppo: PPOConfig = Field(default_factory=PPOConfig, description="PPO.")
    dpo: DPOConfig = Field(default_factory=DPOConfig, description="DPO.")
    grpo: GRPOConfig = Field(default_factory=GRPOConfig, description="GRPO.")
    eval: PolicyEvalConfig = Field(default_factory=PolicyEvalConfig, description="Policy evaluation.")
    # --- where the training loops run (training/rlhf/distributed.py) ---
    num_workers: int = Field(
        1,
        ge=1,
        description="Data-parallel workers of each RLHF training loop (SFT, reward, PPO, DPO, GRPO). 1 "
        "trains in this process; more run the loop on Ray Train workers on the Ray of `ray.address` (DDP: "
        "gloo on CPU, nccl when `device` resolves to cuda), each on its share of the same global batch, so "
        "the results match the 1-worker run's. Batch sizes must divide by it.",
    )
    cpus_per_worker: int | None = Field(
        None,
        ge=1,
        description="CPUs (and torch threads) per Ray worker; default: the local CPUs / num_workers.",
    )
    max_failures: int = Field(
        0,
        ge=0,
        description="Ray Train restarts of a failed worker group; a restart trains the loop from its start.",
    )
    storage_path: str | None = Field(
        None,
        description="Where Ray Train keeps rank 0's final checkpoint (weights and metric history) for the "
        "driver; default: a temporary directory, removed once loaded. A multi-node cluster needs a path "
        "every node reaches (shared filesystem or s3://...).",
    )

    def problems(self) -> list[str]:
        out = []
        if not self.tasks.families:
            out.append("tasks.families: must name at least one family")
        if len(set(self.tasks.families)) != len(self.tasks.families):
            out.append(f"tasks.families: {self.tasks.families} repeats a family")
        if self.ppo.minibatch > self.ppo.rollout_batch:
            out.append(
                f"ppo.minibatch: {self.ppo.minibatch} is larger than ppo.rollout_batch "
                f"{self.ppo.rollout_batch}; lower it or raise the rollout batch"
            )
        if self.grpo.minibatch > self.grpo.prompts_per_step * self.grpo.group_size:
            out.append(
                f"grpo.minibatch: {self.grpo.minibatch} is larger than a rollout batch "
                f"(prompts_per_step x group_size = {self.grpo.prompts_per_step * self.grpo.group_size})"
            )
        if not self.preferences.refusal.strip():
            out.append("preferences.refusal: must not be empty")
        if self.device not in ("auto", "cpu") and not self.device.startswith(("cuda", "mps")):
            out.append(f"device: {self.device!r} is not a torch device; use auto, cpu or cuda[:N]")
        return out + self._worker_problems()

    def _worker_problems(self) -> list[str]:
        w = self.num_workers
        if w == 1:
            return []
        out = []
        shared = {
            "sft.batch_size": self.sft.batch_size,
            "reward.batch_size": self.reward.batch_size,
            "dpo.batch_size": self.dpo.batch_size,
            "ppo.rollout_batch": self.ppo.rollout_batch,
            "ppo.minibatch": self.ppo.minibatch,
            "grpo.prompts_per_step": self.grpo.prompts_per_step,
            "grpo.minibatch": self.grpo.minibatch,
        }
        if self.sft.ptx_coef > 0:
            shared["sft.ptx_batch"] = self.sft.ptx_batch
        for key, n in shared.items():
            if n % w:
                out.append(
                    f"{key}: {n} is not divisible by num_workers {w} (each worker takes an equal share of "
                    f"the global batch); use a multiple of {w} or change num_workers"
                )
        if self.device.startswith("mps"):
            out.append(
                f"device: {self.device!r} is not available to Ray workers (num_workers {w}); use cpu or cuda"
            )
        return out
