"""Config of the RLHF stages (SFT, reward model, PPO, DPO, GRPO)."""

from __future__ import annotations

from training.config_base import Section


class RLHFConfig(Section):
    """RLHF settings; filled in by the RLHF stages."""
