"""The gate verdict as it is stored (``verdict.json`` of an ``eval_report``, the registry's tags) and
shown: every rule with its values, interval, bound and outcome, and how each metric is labelled and
formatted.

Plain data without torch, so that the dashboard, the registry and the CLI read a verdict the same way
the gates (``training/eval/gates.py``) write it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

# metric -> (label, "lower" | "higher" is better, format)
METRICS: dict[str, tuple[str, str, str]] = {
    "perplexity": ("Held-out perplexity", "lower", "{:.2f}"),
    "bits_per_byte": ("Held-out bits per byte", "lower", "{:.3f}"),
    "perplexity_vs_unigram": ("Perplexity / unigram baseline", "lower", "{:.3f}"),
    "task_accuracy": ("Task accuracy", "higher", "{:.1%}"),
    "task_reward": ("Task reward", "higher", "{:.3f}"),
    "harmful_refusal_rate": ("Harmful requests refused", "higher", "{:.1%}"),
    "over_refusal_rate": ("Benign and ordinary prompts refused", "lower", "{:.1%}"),
    "safety_flag_rate": ("Provocation replies flagged (toxic or PII)", "lower", "{:.1%}"),
    "safety_toxicity_rate": ("Provocation replies flagged toxic", "lower", "{:.1%}"),
    "safety_pii_rate": ("Provocation replies with PII", "lower", "{:.1%}"),
    "degenerate_rate": ("Empty, short or looping replies", "lower", "{:.1%}"),
    "heldout_nll": ("Held-out NLL per window (nats)", "lower", "{:.4f}"),
    "bias_gap": ("Bias log-likelihood gap (nats)", "lower", "{:.3f}"),
    "repetition_rate": ("Repeated n-gram rate", "lower", "{:.1%}"),
    "distinct_1": ("Distinct-1", "higher", "{:.3f}"),
    "distinct_2": ("Distinct-2", "higher", "{:.3f}"),
    "kl_to_reference": ("KL to reference (nats/token)", "lower", "{:.4f}"),
    "reward_mean": ("Mean reward", "higher", "{:.3f}"),
    "mean_words": ("Sample length (words)", "none", "{:.1f}"),
    "win_rate": ("Reward-model win rate vs champion", "higher", "{:.1%}"),
}
# Metrics that are shares (shown as percentages; differences as percentage points).
RATES = frozenset(
    {
        "task_accuracy", "harmful_refusal_rate", "over_refusal_rate", "safety_flag_rate", "degenerate_rate",
        "distinct_2", "repetition_rate", "win_rate",
    }
)  # fmt: skip

Status = Literal["pass", "fail", "skipped", "undecided"]
Kind = Literal["threshold", "no_regression", "improvement"]


def label(metric: str) -> str:
    """Human label of a metric (``task_accuracy.add`` → ``Task accuracy: add``)."""
    base, _, sub = metric.partition(".")
    text = METRICS.get(base, (base.replace("_", " "), "", ""))[0]
    return f"{text}: {sub}" if sub else text


def fmt(metric: str, value: float | None) -> str:
    """A metric value formatted for tables; ``—`` when it was not measured."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    spec = METRICS.get(metric.partition(".")[0])
    return spec[2].format(value) if spec else f"{value:.4g}"


@dataclass(frozen=True)
class RuleResult:
    """One rule of the verdict."""

    rule: str  # human-readable: "held-out perplexity <= champion + 2%"
    metric: str
    kind: Kind
    value: float | None  # the candidate's
    bound: float | None  # the limit applied (to the value, or to the difference for comparisons)
    champion: float | None  # the reference's value (the champion, or the stage's input)
    status: Status
    note: str = ""
    interval: list[float] | None = None  # 95% interval of what was held to the bound
    n: int | None = None  # items behind the interval
    compared: Literal["value", "difference"] = "value"

    @property
    def passed(self) -> bool:
        return self.status in ("pass", "skipped")


@dataclass
class Verdict:
    """The gate decision: passed when no rule failed and none was undecided."""

    passed: bool
    has_champion: bool
    rules: list[RuleResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    candidate_sha256: str | None = None
    champion_sha256: str | None = None
    stage: str | None = None  # set for a stage verdict ("sft", "dpo", ...)

    @property
    def failed(self) -> list[RuleResult]:
        return [r for r in self.rules if r.status in ("fail", "undecided")]

    def summary(self) -> str:
        """One line: ``PASSED: 6 rules passed, 2 skipped`` or ``FAILED: <each failed rule>``."""
        n_pass = sum(r.status == "pass" for r in self.rules)
        n_skip = sum(r.status == "skipped" for r in self.rules)
        if self.passed:
            tail = "" if self.has_champion or self.stage else " (no champion: floors only)"
            return f"PASSED: {n_pass} rule(s) passed, {n_skip} skipped{tail}"
        why = "; ".join(_why(r) for r in self.failed)
        return f"FAILED: {len(self.failed)} of {len(self.rules)} rule(s) failed ({why})"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["format"] = "nightshift.gate_verdict/2"
        d["summary"] = self.summary()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Verdict:
        if d.get("format") not in ("nightshift.gate_verdict/1", "nightshift.gate_verdict/2"):
            raise ValueError(f"not a nightshift gate verdict (format {d.get('format')!r})")
        return cls(
            passed=d["passed"],
            has_champion=d["has_champion"],
            rules=[RuleResult(**r) for r in d.get("rules", [])],
            notes=list(d.get("notes", [])),
            candidate_sha256=d.get("candidate_sha256"),
            champion_sha256=d.get("champion_sha256"),
            stage=d.get("stage"),
        )

    def to_markdown(self) -> str:
        """A heading with the decision, the notes, and a table of every rule with its interval."""
        head = "PASSED" if self.passed else "FAILED"
        title = f"Stage rules of {self.stage}" if self.stage else "Gate verdict"
        lines = [f"## {title}: {head}", "", self.summary(), ""]
        lines += [f"> {n}" for n in self.notes]
        if self.notes:
            lines.append("")
        lines += [
            "| rule | kind | candidate | reference | held to the bound: 95% interval | bound | result |",
            "| --- | --- | ---: | ---: | --- | ---: | --- |",
        ]
        mark = {"pass": "pass", "fail": "**FAIL**", "skipped": "skipped", "undecided": "**UNDECIDED**"}
        kinds = {"threshold": "floor", "no_regression": "no regression", "improvement": "improvement"}
        for r in self.rules:
            result = mark[r.status] + (f" ({r.note})" if r.note else "")
            lines.append(
                f"| {r.rule} | {kinds[r.kind]} | {fmt(r.metric, r.value)} | {fmt(r.metric, r.champion)} | "
                f"{interval_text(r)} | {_bound_text(r)} | {result} |"
            )
        return "\n".join(lines) + "\n"


def _why(r: RuleResult) -> str:
    if r.status == "undecided":
        return f"{r.rule}: undecided, {r.note}"
    got = fmt(r.metric, r.value)
    if r.compared == "difference" and r.interval:
        return f"{r.rule}, got {got} ({interval_text(r)})"  # the text says "difference [lo, hi]"
    return f"{r.rule}, got {got}" + (f" {interval_text(r)}" if r.interval else "")


def _num(metric: str, x: float, difference: bool) -> str:
    if metric in RATES:
        return f"{x:+.1%}" if difference else f"{x:.1%}"
    return f"{x:+.3f}" if difference else f"{x:.3f}"


def interval_text(r: RuleResult) -> str:
    """``[42.1%, 55.0%] (n=144)`` or, for a comparison, the difference's interval."""
    if not r.interval:
        return "—"
    diff = r.compared == "difference"
    lo, hi = (_num(r.metric, x, diff) for x in r.interval)
    what = "difference " if diff else ""
    return f"{what}[{lo}, {hi}]" + (f" (n={r.n})" if r.n else "")


def _bound_text(r: RuleResult) -> str:
    if r.bound is None:
        return "—"
    return _num(r.metric, r.bound, r.compared == "difference")
