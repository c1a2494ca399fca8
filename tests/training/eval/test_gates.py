"""Gates on constructed reports: thresholds, no-regression rules, skipped and broken metrics."""

from __future__ import annotations

import json

from training.eval.config import EvalConfig
from training.eval.gates import Verdict, check_gates
from training.eval.report import EvalReport, ModelResult


def _report(cand: dict[str, float | None], champ: dict[str, float | None] | None = None, **kw) -> EvalReport:
    return EvalReport(
        candidate=ModelResult("candidate", "c" * 64, metrics=dict(cand)),
        champion=ModelResult("champion", "h" * 64, metrics=dict(champ)) if champ is not None else None,
        same_tokenizer=kw.pop("same_tokenizer", True if champ is not None else None),
        **kw,
    )


GOOD = {
    "perplexity": 20.0,
    "bits_per_byte": 2.0,
    "task_accuracy": 0.5,
    "safety_flag_rate": 0.0,
    "bias_gap": 0.3,
}


def _rule(v: Verdict, metric: str, kind: str):
    (r,) = [r for r in v.rules if r.metric == metric and r.kind == kind]
    return r


def test_no_champion_applies_only_thresholds_and_says_so() -> None:
    cfg = EvalConfig(max_perplexity=50.0, min_task_accuracy=0.4)
    v = check_gates(_report(GOOD), cfg)
    assert v.passed and not v.has_champion
    assert {r.kind for r in v.rules} == {"threshold"}
    assert {r.metric: r.status for r in v.rules} == {
        "perplexity": "pass",
        "perplexity_vs_unigram": "skipped",  # GOOD has no unigram baseline
        "task_accuracy": "pass",
        "safety_flag_rate": "pass",
    }
    assert any("No champion yet" in n for n in v.notes)
    assert "no champion" in v.summary() and "No champion yet" in v.to_markdown()


def test_threshold_failure_names_the_rule_value_and_bound() -> None:
    cfg = EvalConfig(max_perplexity=15.0, max_safety_flag_rate=0.1, max_perplexity_vs_unigram=None)
    v = check_gates(_report({**GOOD, "safety_flag_rate": 0.25}), cfg)
    assert not v.passed
    assert {r.metric for r in v.failed} == {"perplexity", "safety_flag_rate"}
    ppl = _rule(v, "perplexity", "threshold")
    assert (ppl.value, ppl.bound, ppl.status) == (20.0, 15.0, "fail")
    md = v.to_markdown()
    assert "Gate verdict: FAILED" in md and "**FAIL**" in md and "| Held-out perplexity <= 15.00 |" in md
    assert "Red-team outputs flagged <= 10.0%, got 25.0%" in v.summary()


def test_regression_against_champion_beyond_tolerance_fails() -> None:
    cfg = EvalConfig(perplexity_tolerance=0.02, task_accuracy_tolerance=0.05)
    champ = {**GOOD, "perplexity": 19.8, "task_accuracy": 0.6}
    v = check_gates(_report(GOOD, champ), cfg)  # ppl 20.0 <= 19.8 * 1.02; accuracy 0.5 < 0.6 - 0.05
    assert not v.passed and v.has_champion
    ppl = _rule(v, "perplexity", "no_regression")
    assert ppl.status == "pass" and abs(ppl.bound - 19.8 * 1.02) < 1e-9 and ppl.champion == 19.8
    acc = _rule(v, "task_accuracy", "no_regression")
    assert acc.status == "fail" and abs(acc.bound - 0.55) < 1e-9
    assert "Task accuracy >= champion - 5.0%" in acc.rule


def test_better_candidate_passes_every_rule() -> None:
    champ = {**GOOD, "perplexity": 40.0, "task_accuracy": 0.2, "safety_flag_rate": 0.05}
    v = check_gates(_report(GOOD, champ, comparison={"win_rate": 0.7}), EvalConfig())
    assert v.passed and not v.failed
    assert _rule(v, "win_rate", "no_regression").status == "pass"
    assert v.summary().startswith("PASSED")


def test_different_tokenizers_compare_bits_per_byte() -> None:
    champ = {**GOOD, "perplexity": 30.0, "bits_per_byte": 1.8}  # lower ppl is meaningless across vocabularies
    v = check_gates(_report(GOOD, champ, same_tokenizer=False), EvalConfig(perplexity_tolerance=0.02))
    r = _rule(v, "bits_per_byte", "no_regression")
    assert r.status == "fail" and "different tokenizers" in r.note
    assert not v.passed


def test_unmeasured_rules_are_skipped_and_broken_metrics_fail() -> None:
    cfg = EvalConfig(max_kl_to_reference=0.5, min_win_rate=0.5)
    v = check_gates(_report(GOOD, GOOD), cfg)
    kl = _rule(v, "kl_to_reference", "threshold")
    assert kl.status == "skipped" and kl.note == "not measured"
    assert _rule(v, "win_rate", "no_regression").status == "skipped"
    assert v.passed

    broken = _report({**GOOD, "perplexity": float("nan")}, GOOD)
    v = check_gates(broken, EvalConfig(max_perplexity=100.0))
    assert not v.passed
    assert _rule(v, "perplexity", "threshold").status == "fail"
    assert _rule(v, "perplexity", "no_regression").status == "fail"


def test_nothing_checkable_passes_with_a_warning() -> None:
    cfg = EvalConfig(max_safety_flag_rate=None, perplexity_tolerance=None, max_perplexity_vs_unigram=None)
    v = check_gates(_report({"perplexity": 3.0}), cfg)
    assert v.passed and v.rules == []
    assert any("No rule could be checked" in n for n in v.notes)


def test_verdict_and_report_round_trip_through_strict_json() -> None:
    report = _report({**GOOD, "perplexity": float("nan")}, GOOD, comparison={"win_rate": 0.25})
    v = check_gates(report, EvalConfig())
    text = json.dumps(v.to_dict(), allow_nan=False)
    back = Verdict.from_dict(json.loads(text))
    assert back.rules == v.rules and back.passed == v.passed and back.summary() == v.summary()
    d = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    again = check_gates(EvalReport.from_dict(d), EvalConfig())
    assert [(r.metric, r.status) for r in again.rules] == [(r.metric, r.status) for r in v.rules]
