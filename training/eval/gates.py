"""Promotion gates: absolute thresholds and no-regression rules against the champion.

:func:`check_gates` turns an :class:`~training.eval.report.EvalReport` and the
:class:`~training.eval.config.EvalConfig` into a :class:`Verdict` that lists every rule with the
candidate's value, the bound it was held to, the champion's value and the outcome. A rule whose
metric was not measured (no reference model, no reward model, probes switched off) is *skipped*
and says why; a measured value that is not a number (a diverged model) fails. Without a champion
only the absolute thresholds apply, and the verdict says so.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from training.eval.config import EvalConfig
from training.eval.report import EvalReport, fmt, label

Status = Literal["pass", "fail", "skipped"]


@dataclass(frozen=True)
class _Spec:
    metric: str
    higher_is_better: bool
    threshold: str | None  # the EvalConfig field of the absolute threshold
    tolerance: str | None  # the EvalConfig field of the no-regression tolerance
    relative: bool = False  # tolerance is a share of the champion's value, not an absolute amount


SPECS: tuple[_Spec, ...] = (
    _Spec("perplexity", False, "max_perplexity", "perplexity_tolerance", relative=True),
    _Spec("perplexity_vs_unigram", False, "max_perplexity_vs_unigram", None),
    _Spec("bits_per_byte", False, "max_bits_per_byte", None),
    _Spec("task_accuracy", True, "min_task_accuracy", "task_accuracy_tolerance"),
    _Spec("safety_flag_rate", False, "max_safety_flag_rate", "safety_tolerance"),
    _Spec("bias_gap", False, "max_bias_gap", "bias_tolerance"),
    _Spec("repetition_rate", False, "max_repetition_rate", "repetition_tolerance"),
    _Spec("distinct_2", True, "min_distinct_2", None),
    _Spec("kl_to_reference", False, "max_kl_to_reference", None),
)


RATES = frozenset({"task_accuracy", "safety_flag_rate", "repetition_rate", "distinct_2"})


@dataclass(frozen=True)
class RuleResult:
    """One rule of the verdict."""

    rule: str  # human-readable: "held-out perplexity <= champion + 2%"
    metric: str
    kind: Literal["threshold", "no_regression"]
    value: float | None  # the candidate's
    bound: float | None  # the limit actually applied
    champion: float | None  # the champion's value (no-regression rules)
    status: Status
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.status != "fail"


@dataclass
class Verdict:
    """The gate decision: passed when no rule failed."""

    passed: bool
    has_champion: bool
    rules: list[RuleResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    candidate_sha256: str | None = None
    champion_sha256: str | None = None

    @property
    def failed(self) -> list[RuleResult]:
        return [r for r in self.rules if r.status == "fail"]

    def summary(self) -> str:
        """One line: ``PASSED: 6 rules passed, 2 skipped`` or ``FAILED: <each failed rule>``."""
        n_pass = sum(r.status == "pass" for r in self.rules)
        n_skip = sum(r.status == "skipped" for r in self.rules)
        if self.passed:
            tail = "" if self.has_champion else " (no champion: absolute thresholds only)"
            return f"PASSED: {n_pass} rule(s) passed, {n_skip} skipped{tail}"
        why = "; ".join(f"{r.rule}, got {fmt(r.metric, r.value)}" for r in self.failed)
        return f"FAILED: {len(self.failed)} of {len(self.rules)} rule(s) failed ({why})"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["format"] = "nightshift.gate_verdict/1"
        d["summary"] = self.summary()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Verdict:
        if d.get("format") != "nightshift.gate_verdict/1":
            raise ValueError(f"not a nightshift gate verdict (format {d.get('format')!r})")
        return cls(
            passed=d["passed"],
            has_champion=d["has_champion"],
            rules=[RuleResult(**r) for r in d.get("rules", [])],
            notes=list(d.get("notes", [])),
            candidate_sha256=d.get("candidate_sha256"),
            champion_sha256=d.get("champion_sha256"),
        )

    def to_markdown(self) -> str:
        """A heading with the decision, the notes, and a table of every rule."""
        head = "PASSED" if self.passed else "FAILED"
        lines = [f"## Gate verdict: {head}", "", self.summary(), ""]
        lines += [f"> {n}" for n in self.notes]
        if self.notes:
            lines.append("")
        lines += [
            "| rule | kind | candidate | bound | champion | result |",
            "| --- | --- | ---: | ---: | ---: | --- |",
        ]
        mark = {"pass": "pass", "fail": "**FAIL**", "skipped": "skipped"}
        for r in self.rules:
            result = mark[r.status] + (f" ({r.note})" if r.note else "")
            kind = "threshold" if r.kind == "threshold" else "no regression"
            lines.append(
                f"| {r.rule} | {kind} | {fmt(r.metric, r.value)} | {fmt(r.metric, r.bound)} | "
                f"{fmt(r.metric, r.champion)} | {result} |"
            )
        return "\n".join(lines) + "\n"


def _cmp(value: float, bound: float, higher_is_better: bool) -> bool:
    return value >= bound if higher_is_better else value <= bound


def _value(report: EvalReport, role: str, metric: str) -> tuple[float | None, bool]:
    """(value, measured). An absent key was not measured; a null or NaN value was measured and is
    not a number (a diverged model), which fails any rule that reads it."""
    res = report.candidate if role == "candidate" else report.champion
    if res is None or metric not in res.metrics:
        return None, False
    v = res.metrics[metric]
    return (None, True) if v is None or math.isnan(v) else (float(v), True)


def _threshold_rule(spec: _Spec, bound: float, report: EvalReport) -> RuleResult:
    op = ">=" if spec.higher_is_better else "<="
    value, measured = _value(report, "candidate", spec.metric)
    rule = f"{label(spec.metric)} {op} {fmt(spec.metric, bound)}"
    if value is None:
        status: Status = "fail" if measured else "skipped"
        note = "not a number: the model is broken" if measured else "not measured"
        return RuleResult(rule, spec.metric, "threshold", None, bound, None, status, note)
    status = "pass" if _cmp(value, bound, spec.higher_is_better) else "fail"
    return RuleResult(rule, spec.metric, "threshold", value, bound, None, status)


def _regression_rule(spec: _Spec, tol: float, report: EvalReport) -> RuleResult:
    metric, note = spec.metric, ""
    if metric == "perplexity" and report.same_tokenizer is False:
        # Perplexities over different vocabularies are not comparable; bits per byte is.
        metric, note = "bits_per_byte", "different tokenizers: compared in bits per byte"
    op = ">=" if spec.higher_is_better else "<="
    sign = "-" if spec.higher_is_better else "+"
    amount = f"{tol:.0%}" if spec.relative else fmt(metric, tol)
    rule = f"{label(metric)} {op} champion {sign} {amount}"
    value, measured = _value(report, "candidate", metric)
    champ, _ = _value(report, "champion", metric)
    if value is None and measured:
        return RuleResult(rule, metric, "no_regression", None, None, champ, "fail", "not a number")
    if value is None or champ is None:
        return RuleResult(
            rule, metric, "no_regression", value, None, champ, "skipped", "not measured for both"
        )
    delta = abs(champ) * tol if spec.relative else tol
    bound = champ - delta if spec.higher_is_better else champ + delta
    if metric in RATES:
        bound = min(max(bound, 0.0), 1.0)  # a share cannot leave [0, 1]; say so in the table
    status: Status = "pass" if _cmp(value, bound, spec.higher_is_better) else "fail"
    return RuleResult(rule, metric, "no_regression", value, bound, champ, status, note)


def check_gates(report: EvalReport, cfg: EvalConfig) -> Verdict:
    """Apply every configured rule to ``report``.

    Args:
        report: the evaluation of the candidate (and champion).
        cfg: thresholds (``max_*``/``min_*``) and tolerances (``*_tolerance``, ``min_win_rate``).

    Returns:
        The :class:`Verdict`; ``passed`` is False when any rule failed.
    """
    rules: list[RuleResult] = []
    notes: list[str] = []
    has_champion = report.champion is not None
    for spec in SPECS:
        bound = getattr(cfg, spec.threshold) if spec.threshold else None
        if bound is not None:
            rules.append(_threshold_rule(spec, float(bound), report))
    if has_champion:
        for spec in SPECS:
            tol = getattr(cfg, spec.tolerance) if spec.tolerance else None
            if tol is not None:
                rules.append(_regression_rule(spec, float(tol), report))
        if cfg.min_win_rate is not None:
            win = report.comparison.get("win_rate")
            rule = f"Reward-model win rate against the champion >= {cfg.min_win_rate:.0%}"
            if win is None:
                rules.append(
                    RuleResult(
                        rule,
                        "win_rate",
                        "no_regression",
                        None,
                        cfg.min_win_rate,
                        None,
                        "skipped",
                        "no reward model given",
                    )
                )
            else:
                status: Status = "pass" if win >= cfg.min_win_rate else "fail"
                rules.append(
                    RuleResult(rule, "win_rate", "no_regression", win, cfg.min_win_rate, 0.5, status)
                )
    else:
        notes.append("No champion yet: only the absolute thresholds apply; no-regression rules are skipped.")
    if not any(r.status != "skipped" for r in rules):
        notes.append("No rule could be checked: configure eval thresholds or register a champion.")
    return Verdict(
        passed=not any(r.status == "fail" for r in rules),
        has_champion=has_champion,
        rules=rules,
        notes=notes,
        candidate_sha256=report.candidate.sha256,
        champion_sha256=report.champion.sha256 if report.champion else None,
    )
