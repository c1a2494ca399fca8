"""The ``rlhf`` config section: defaults load with the presets, inconsistent values are all named."""

from __future__ import annotations

import pytest

from core.config import load_config
from core.config_base import ConfigError


def test_tiny_preset_has_the_rlhf_section() -> None:
    cfg = load_config("tiny", {"rlhf.algorithm": "grpo", "rlhf.grpo.group_size": 4})
    assert cfg.rlhf.algorithm == "grpo" and cfg.rlhf.grpo.group_size == 4
    assert cfg.rlhf.tasks.families == ["copy", "reverse", "max", "add", "refuse", "help", "chat"]


def test_every_rlhf_problem_is_listed() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(
            "tiny",
            {
                "rlhf.ppo.minibatch": 99,
                "rlhf.grpo.minibatch": 1000,
                "rlhf.device": "tpu",
                "rlhf.tasks.families": [],
            },
        )
    text = str(e.value)
    assert "rlhf.ppo.minibatch: 99 is larger than ppo.rollout_batch 32" in text
    assert "rlhf.grpo.minibatch: 1000" in text and "rlhf.device: 'tpu'" in text
    assert "rlhf.tasks.families: must name at least one family" in text
    assert len(e.value.problems) == 4
