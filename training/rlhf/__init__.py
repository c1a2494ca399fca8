"""RLHF: SFT, reward model, PPO, DPO and GRPO on verifiable tasks and human feedback.

Rooms (trl's layout, in small files):

* data: ``tasks`` (checkable instruction tasks and their reward), ``preferences`` (JSONL import with
  quarantine, the preference set and its ``preferences`` snapshot), ``feedback`` (catalog feedback
  rows into pairs, snapshot ↔ feedback links), ``onpolicy`` (the policy's own mistakes as pairs)
* shared pieces: ``sequences`` (chat-template encoding, padded batches, reply masks), ``logprobs``
  (per-token log-probs, entropies, masked statistics, KL), ``rollout`` (KV-cached batched sampling
  with EOS and truncation), ``heads`` (scalar head on a GPT backbone; the ``reward_model``
  artifact), ``scoring`` (rollout scores), ``optim`` (AdamW, schedule, batch order),
  ``distributed`` (each training loop here or on ``rlhf.num_workers`` Ray Train workers, DDP)
* algorithms: ``sft``, ``reward``, ``ppo``, ``dpo``, ``grpo``; ``evaluate`` (held-out accuracy,
  reward, KL to the reference)
* ``stages``: the tracked stage functions a Prefect task and the CLI call; ``config``: the
  ``rlhf`` config section.

Nothing is imported here, so ``import core.rlhf_config`` stays light.
"""
