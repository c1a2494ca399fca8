"""One preference pair and the account of a set of them: what the RLHF stages train on.

Both sources of pairs build these: files and generated tasks (``preferences.py``) and the human
feedback of the catalog (``feedback.py``); every input row ends as a pair, or as a quarantine or
skip record with a reason.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from training.rlhf.sequences import encode_reply

if TYPE_CHECKING:
    from tokenizers import Tokenizer

FORMAT = "nightshift.preferences/1"
EXCERPT_CHARS = 200  # how much of a bad row the quarantine list keeps


@dataclass(frozen=True)
class PreferencePair:
    """A prompt with a preferred and a dispreferred reply.

    ``prompt`` is a tuple of chat messages (rendered with the chat template) or a plain string
    (a ``/v1/completions`` prompt, continued as is).
    """

    prompt: tuple[Mapping[str, str], ...] | str
    chosen: str
    rejected: str
    source: str  # "task:add", "jsonl:<file>:<line>", "feedback"
    feedback_ids: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        prompt = self.prompt if isinstance(self.prompt, str) else [dict(m) for m in self.prompt]
        row: dict[str, Any] = {"prompt": prompt, "chosen": self.chosen, "rejected": self.rejected}
        row["source"] = self.source
        if self.feedback_ids:
            row["feedback_ids"] = list(self.feedback_ids)
        return row

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> PreferencePair:
        p = row["prompt"]
        prompt = p if isinstance(p, str) else tuple(dict(m) for m in p)
        return cls(
            prompt, row["chosen"], row["rejected"], row.get("source", ""), tuple(row.get("feedback_ids", ()))
        )


@dataclass
class PreferenceSet:
    """The pairs of one run, with the account of every input row."""

    pairs: list[PreferencePair] = field(default_factory=list)
    quarantined: list[dict[str, Any]] = field(default_factory=list)  # {"source", "code", "reason"}
    skipped: list[dict[str, Any]] = field(default_factory=list)  # well-formed rows that made no pair
    rows_in: Counter[str] = field(default_factory=Counter)  # input rows per source kind
    labellers: Counter[str] = field(default_factory=Counter)  # feedback rows per distinct labeller
    left_out: list[dict[str, Any]] = field(default_factory=list)  # outlier labellers, with the reason

    def extend(self, other: PreferenceSet) -> None:
        self.pairs += other.pairs
        self.quarantined += other.quarantined
        self.skipped += other.skipped
        self.rows_in.update(other.rows_in)
        self.labellers.update(other.labellers)
        self.left_out += other.left_out

    def manifest(self) -> dict[str, Any]:
        by_source = Counter(p.source.split(":")[0] for p in self.pairs)
        return {
            "format": FORMAT,
            "pairs": len(self.pairs),
            "pairs_by_source": dict(sorted(by_source.items())),
            "rows_in": dict(sorted(self.rows_in.items())),
            "quarantined": len(self.quarantined),
            "quarantined_by_reason": dict(sorted(Counter(q["code"] for q in self.quarantined).items())),
            "skipped": len(self.skipped),
            "skipped_by_reason": dict(sorted(Counter(q["code"] for q in self.skipped).items())),
            "labellers": len(self.labellers),
            "labels_by_labeller": dict(sorted(self.labellers.items())),
            "left_out_labellers": sorted(self.left_out, key=lambda x: x["labeller"]),
            "feedback_ids": self.feedback_ids(),
        }

    def feedback_ids(self) -> list[int]:
        return sorted({i for p in self.pairs for i in p.feedback_ids})


def quarantine(source: str, code: str, reason: str, row: Any = None) -> dict[str, Any]:
    """A quarantine (or skip) record: where the row came from, a reason code and a sentence."""
    out: dict[str, Any] = {"source": source, "code": code, "reason": reason}
    if row is not None:
        text = row if isinstance(row, str) else json.dumps(row, default=str)
        out["excerpt"] = text[:EXCERPT_CHARS]
    return out


def pair_problem(
    tokenizer: Tokenizer, block_size: int, prompt: Any, chosen: str, rejected: str
) -> tuple[str, str] | None:
    """(code, reason) when a parsed pair cannot train, else None: identical replies, too long."""
    if chosen.strip() == rejected.strip():
        return "identical", "chosen is identical to rejected; the pair carries no preference"
    lengths = {}
    for name, reply in (("chosen", chosen), ("rejected", rejected)):
        ids, _ = encode_reply(tokenizer, prompt, reply)
        lengths[name] = len(ids)
    over = {k: n for k, n in lengths.items() if n > block_size}
    if over:
        detail = ", ".join(f"prompt + {k} is {n} tokens" for k, n in over.items())
        return "too_long", f"{detail}, longer than the context ({block_size}); shorten the row or drop it"
    return None
