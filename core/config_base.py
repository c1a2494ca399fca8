"""Base pieces of the config system, kept apart so section modules can import them without cycles."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict


def did_you_mean(word: str, known: Sequence[str]) -> str:
    """``; did you mean 'x'?`` for the closest known word, or ``''`` when none is close."""
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


class ConfigError(ValueError):
    """A config with one or more problems; ``problems`` lists each as ``"path: message"``."""

    def __init__(self, problems: Sequence[str], source: str = "config"):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source} has {len(self.problems)} problem(s):\n{lines}")


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def problems(self) -> list[str]:
        """Cross-field problems of this section (field names relative to the section)."""
        return []
