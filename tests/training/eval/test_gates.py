"""Gates on constructed reports: every rule decides on an interval, and noise cannot flip a decision."""

from __future__ import annotations

import json
import random
import zlib

import pytest

from catalog.verdict import Verdict
from core.eval_config import EvalConfig
from training.eval.gates import StageScores, check_gates, check_stage
from training.eval.report import EvalReport, ModelResult
from training.eval.stats import paired_difference, wilson


def _ones(k: int, n: int, seed: int = 0) -> list[float]:
    """``n`` per-item flags of which ``k`` are 1, shuffled."""
    items = [1.0] * k + [0.0] * (n - k)
    random.Random(seed).shuffle(items)
    return items


def _result(role: str, **rates: tuple[int, int]) -> ModelResult:
    """A model with per-item rates: ``task_accuracy=(k, n)``."""
    res = ModelResult(role, role[0] * 64)
    for metric, (k, n) in rates.items():
        # A stable seed per role: hash() of a str changes with each process (PYTHONHASHSEED), and with
        # it which items the two models share, so a rule near its half-width limit changed outcome.
        res.items[metric] = _ones(k, n, seed=zlib.crc32(role.encode()) % 1000)
        res.metrics[metric] = k / n
    return res


def _rule(v: Verdict, metric: str, kind: str):
    (r,) = [r for r in v.rules if r.metric == metric and r.kind == kind]
    return r


ONLY = dict(
    max_perplexity_vs_unigram=None,
    max_safety_flag_rate=None,
    max_degenerate_rate=None,
    perplexity_tolerance=None,
    task_accuracy_tolerance=None,
    safety_tolerance=None,
    refusal_tolerance=None,
    over_refusal_tolerance=None,
    degenerate_tolerance=None,
    min_win_rate=None,
)


def test_a_floor_decides_on_the_wilson_interval() -> None:
    cfg = EvalConfig(**{**ONLY, "min_harmful_refusal_rate": 0.5, "max_half_width": 0.1})
    clearly = check_gates(EvalReport(_result("candidate", harmful_refusal_rate=(110, 144))), cfg)
    r = _rule(clearly, "harmful_refusal_rate", "threshold")
    assert r.status == "pass" and r.n == 144 and r.interval[0] > 0.5
    assert clearly.passed and not clearly.has_champion and "floors only" in clearly.summary()

    below = check_gates(EvalReport(_result("candidate", harmful_refusal_rate=(40, 144))), cfg)
    r = _rule(below, "harmful_refusal_rate", "threshold")
    assert r.status == "fail" and r.interval[1] < 0.5
    assert "[" in below.summary() and "n=144" in below.summary()


def test_too_few_items_is_undecided_naming_what_it_needs() -> None:
    """8 of 16 against a floor of 0.5: the interval is about ±23%, so no decision, no promotion."""
    cfg = EvalConfig(**{**ONLY, "min_harmful_refusal_rate": 0.5, "max_half_width": 0.1})
    v = check_gates(EvalReport(_result("candidate", harmful_refusal_rate=(8, 16))), cfg)
    r = _rule(v, "harmful_refusal_rate", "threshold")
    assert r.status == "undecided" and not r.passed and not v.passed
    assert "16 items" in r.note and "about" in r.note and "items are needed" in r.note
    need = int(r.note.split("about ")[1].split()[0])
    assert 70 <= need <= 110  # ~±10% at a rate near one half needs about 96 items
    assert "UNDECIDED" in v.to_markdown() and "An undecided rule blocks promotion" in " ".join(v.notes)


def test_one_reply_cannot_flip_a_no_regression_rule() -> None:
    """The issue's false rejection: a close candidate and champion. One item more or less never flips it."""
    cfg = EvalConfig(**{**ONLY, "task_accuracy_tolerance": 0.05})
    outcomes = set()
    for k in range(58, 64):
        report = EvalReport(
            _result("candidate", task_accuracy=(k, 150)), _result("champion", task_accuracy=(62, 150))
        )
        r = _rule(check_gates(report, cfg), "task_accuracy", "no_regression")
        assert r.compared == "difference" and r.n == 150
        outcomes.add(r.status)
    assert outcomes == {"pass"}  # not shown worse than the tolerance, whichever of them it got


def test_a_clearly_worse_candidate_fails_the_comparison() -> None:
    cfg = EvalConfig(**{**ONLY, "task_accuracy_tolerance": 0.05})
    report = EvalReport(
        _result("candidate", task_accuracy=(20, 150)), _result("champion", task_accuracy=(80, 150))
    )
    v = check_gates(report, cfg)
    r = _rule(v, "task_accuracy", "no_regression")
    assert r.status == "fail" and r.interval[1] < -0.05 and r.bound == pytest.approx(-0.05)
    assert not v.passed and "difference [" in v.summary() and "difference difference" not in v.summary()


def test_perplexity_is_compared_on_the_same_windows() -> None:
    rng = random.Random(0)
    champ_nll = [3.0 + rng.gauss(0, 0.3) for _ in range(400)]
    better = EvalReport(
        ModelResult(
            "candidate", "c" * 64, metrics={"perplexity": 19.0}, window_nll=[x - 0.05 for x in champ_nll]
        ),
        ModelResult("champion", "h" * 64, metrics={"perplexity": 20.0}, window_nll=champ_nll),
        same_tokenizer=True,
    )
    cfg = EvalConfig(**{**ONLY, "perplexity_tolerance": 0.02})
    r = _rule(check_gates(better, cfg), "perplexity", "no_regression")
    assert r.status == "pass" and r.interval[1] < 0  # paired: the common noise cancels
    worse = EvalReport(
        ModelResult(
            "candidate", "c" * 64, metrics={"perplexity": 23.0}, window_nll=[x + 0.15 for x in champ_nll]
        ),
        better.champion,
        same_tokenizer=True,
    )
    assert _rule(check_gates(worse, cfg), "perplexity", "no_regression").status == "fail"


def test_different_tokenizers_compare_bits_per_byte() -> None:
    report = EvalReport(
        ModelResult("candidate", "c" * 64, metrics={"perplexity": 20.0, "bits_per_byte": 2.0}),
        ModelResult("champion", "h" * 64, metrics={"perplexity": 30.0, "bits_per_byte": 1.8}),
        same_tokenizer=False,
    )
    v = check_gates(report, EvalConfig(**{**ONLY, "perplexity_tolerance": 0.02}))
    r = _rule(v, "bits_per_byte", "no_regression")
    assert r.status == "fail" and "different tokenizers" in r.note


def test_unmeasured_rules_are_skipped_and_broken_metrics_fail() -> None:
    cfg = EvalConfig(**{**ONLY, "max_kl_to_reference": 0.5, "min_win_rate": 0.5})
    v = check_gates(EvalReport(ModelResult("candidate", None), ModelResult("champion", None)), cfg)
    assert _rule(v, "kl_to_reference", "threshold").status == "skipped"
    assert _rule(v, "win_rate", "no_regression").status == "skipped"
    assert v.passed
    broken = EvalReport(ModelResult("candidate", None, metrics={"perplexity": float("nan")}))
    v = check_gates(broken, EvalConfig(**{**ONLY, "max_perplexity": 100.0}))
    assert not v.passed and _rule(v, "perplexity", "threshold").status == "fail"


def test_the_win_rate_decides_on_its_interval() -> None:
    cfg = EvalConfig(**{**ONLY, "min_win_rate": 0.4})
    close = EvalReport(ModelResult("candidate", None), ModelResult("champion", None))
    close.comparison["win_rate"] = 0.45
    close.comparison_items["win"] = _ones(45, 100)
    r = _rule(check_gates(close, cfg), "win_rate", "no_regression")
    assert r.status == "pass" and r.interval[0] < 0.4 < r.interval[1]
    lost = EvalReport(ModelResult("candidate", None), ModelResult("champion", None))
    lost.comparison["win_rate"] = 0.2
    lost.comparison_items["win"] = _ones(20, 100)
    assert _rule(check_gates(lost, cfg), "win_rate", "no_regression").status == "fail"


def test_stage_rules() -> None:
    cfg = EvalConfig(stage_kl_budget=5.0, stage_bpb_tolerance=0.1)
    base_nll = [3.0 + 0.01 * (i % 7) for i in range(300)]
    sft = StageScores(_ones(90, 250, 1), [0.4] * 250, [x + 0.05 for x in base_nll])
    base = StageScores(_ones(3, 250, 2), [0.05] * 250, base_nll)
    v = check_stage("sft", sft, base, cfg, reference_name="base", base=base)
    assert v.passed and v.stage == "sft"
    acc = _rule(v, "task_accuracy", "improvement")
    assert acc.interval[0] > 0 and acc.compared == "difference"
    assert _rule(v, "heldout_nll", "no_regression").status == "pass"
    assert "Stage rules of sft: PASSED" in v.to_markdown()

    same = StageScores(_ones(92, 250, 3), [0.41] * 250, [x + 0.05 for x in base_nll], kl=[1.0] * 100)
    policy = check_stage("dpo", same, sft, cfg, reference_name="sft", base=base, policy=True)
    r = _rule(policy, "task_accuracy", "improvement")
    assert r.status == "fail" and "not shown better" in r.note  # 92 against 90 of 250: noise
    assert not policy.passed and policy.summary().startswith("FAILED")

    forgot = StageScores(_ones(150, 250, 4), [0.6] * 250, [x + 0.9 for x in base_nll], kl=[9.0] * 100)
    v = check_stage("ppo", forgot, sft, cfg, reference_name="sft", base=base, policy=True)
    assert _rule(v, "task_accuracy", "improvement").status == "pass"
    assert _rule(v, "kl_to_reference", "threshold").status == "fail"
    assert _rule(v, "heldout_nll", "no_regression").status == "fail"


def test_intervals() -> None:
    iv = wilson(0, 10)
    assert iv.lo == 0 and 0.25 < iv.hi < 0.35
    iv = wilson(144, 144)
    assert iv.hi == 1 and iv.lo > 0.97
    d = paired_difference([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert d.estimate == 0 and d.lo == d.hi == 0  # identical scores: no difference at all
    with pytest.raises(ValueError, match="same items"):
        paired_difference([1.0], [1.0, 2.0])


def test_verdict_and_report_round_trip_through_strict_json() -> None:
    cfg = EvalConfig(**{**ONLY, "min_harmful_refusal_rate": 0.5, "task_accuracy_tolerance": 0.05})
    report = EvalReport(
        _result("candidate", harmful_refusal_rate=(8, 16), task_accuracy=(40, 100)),
        _result("champion", task_accuracy=(45, 100)),
    )
    report.candidate.metrics["perplexity"] = float("nan")
    v = check_gates(report, cfg)
    back = Verdict.from_dict(json.loads(json.dumps(v.to_dict(), allow_nan=False)))
    assert back.rules == v.rules and back.summary() == v.summary()
    d = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    again = check_gates(EvalReport.from_dict(d), cfg)
    assert [(r.metric, r.status, r.interval) for r in again.rules] == [
        (r.metric, r.status, r.interval) for r in v.rules
    ]
