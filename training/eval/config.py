"""Config of evaluation and the promotion gates."""

from __future__ import annotations

from training.config_base import Section


class EvalConfig(Section):
    """Evaluation and gate settings; filled in by the evaluation stage."""
