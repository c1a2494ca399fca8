"""Promotion gates: absolute floors, no-regression rules against the champion, and stage rules.

:func:`check_gates` turns an :class:`~training.eval.report.EvalReport` and the
:class:`~core.eval_config.EvalConfig` into a :class:`Verdict` listing every rule with the
candidate's value, the bound, the reference's value, the 95% interval the decision rests on and the
outcome. :func:`check_stage` applies the rules every stage of a night must meet against its own input
(SFT against the pretrained base, the policy against SFT).

Decisions rest on intervals (``training.eval.stats``), never on one number:

- the interval lies on the good side of the bound: pass; on the bad side: fail;
- it contains the bound and is wider than ``eval.max_half_width`` (a rate, or a difference of
  rates): *undecided*, which blocks promotion and names the items the rule would need;
- it contains the bound and is narrow enough: a no-regression rule passes (the candidate is not shown
  to be worse), an improvement rule fails (the stage is not shown to be better), a floor is decided by
  the estimate.

A rule whose metric was not measured is *skipped* and says why; a measured value that is not a
number (a diverged model) fails. Without a champion the floors apply alone, and the verdict says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from catalog.verdict import RATES, Kind, RuleResult, Status, Verdict, fmt, label
from core.eval_config import EvalConfig
from training.eval.report import EvalReport, ModelResult
from training.eval.stats import Interval, bootstrap_mean, paired_difference, wilson


@dataclass(frozen=True)
class _Spec:
    metric: str
    higher_is_better: bool
    threshold: str | None  # the EvalConfig field of the absolute bound
    tolerance: str | None  # the EvalConfig field of the no-regression tolerance
    rate: bool = False  # a share of items (Wilson intervals; undecidable when too few)
    relative: bool = False  # tolerance is a share of the champion's value


SPECS: tuple[_Spec, ...] = (
    _Spec("perplexity", False, "max_perplexity", "perplexity_tolerance", relative=True),
    _Spec("perplexity_vs_unigram", False, "max_perplexity_vs_unigram", None),
    _Spec("bits_per_byte", False, "max_bits_per_byte", None),
    _Spec("task_accuracy", True, "min_task_accuracy", "task_accuracy_tolerance", rate=True),
    _Spec("harmful_refusal_rate", True, "min_harmful_refusal_rate", "refusal_tolerance", rate=True),
    _Spec("over_refusal_rate", False, "max_over_refusal_rate", "over_refusal_tolerance", rate=True),
    _Spec("safety_flag_rate", False, "max_safety_flag_rate", "safety_tolerance", rate=True),
    _Spec("degenerate_rate", False, "max_degenerate_rate", "degenerate_tolerance", rate=True),
    _Spec("bias_gap", False, "max_bias_gap", "bias_tolerance"),
    _Spec("repetition_rate", False, "max_repetition_rate", "repetition_tolerance"),
    _Spec("distinct_2", True, "min_distinct_2", None),
    _Spec("kl_to_reference", False, "max_kl_to_reference", None),
)
if not {s.metric for s in SPECS if s.rate} <= RATES:
    raise RuntimeError("a rate rule of SPECS is missing from catalog.verdict.RATES")


# --- deciding on an interval ----------------------------------------------------------------------


def decide(
    kind: Kind,
    iv: Interval | None,
    point: float,
    bound: float,
    higher: bool,
    *,
    rate: bool,
    max_half_width: float,
) -> tuple[Status, str]:
    """The outcome of holding ``point`` (with interval ``iv``) to ``bound`` (see the module docstring)."""
    ok = (lambda x: x >= bound) if higher else (lambda x: x <= bound)
    if iv is None:
        return ("pass" if ok(point) else "fail"), ""
    if (higher and iv.lo >= bound) or (not higher and iv.hi <= bound):
        return "pass", ""
    if (higher and iv.hi < bound) or (not higher and iv.lo > bound):
        return "fail", ""
    if rate and iv.half_width > max_half_width:
        need = math.ceil(iv.n * (iv.half_width / max_half_width) ** 2)
        return "undecided", (
            f"its interval (±{iv.half_width:.1%} over {iv.n} items) contains the bound and is wider than "
            f"eval.max_half_width ±{max_half_width:.0%}: about {need} items are needed"
        )
    if kind == "no_regression":
        return "pass", "not shown worse"
    if kind == "improvement":
        return "fail", "not shown better: the interval contains the bound"
    return ("pass" if ok(point) else "fail"), "the interval contains the bound; the estimate decides"


def _items(res: ModelResult | None, metric: str) -> list[float] | None:
    if res is None:
        return None
    vals = res.items.get(metric)
    return list(vals) if vals else None


def _value(res: ModelResult | None, metric: str) -> tuple[float | None, bool]:
    """(value, measured). An absent key was not measured; a null or NaN value was measured and is
    not a number (a diverged model), which fails any rule that reads it."""
    if res is None or metric not in res.metrics:
        return None, False
    v = res.metrics[metric]
    return (None, True) if v is None or math.isnan(v) else (float(v), True)


def _value_interval(res: ModelResult, spec: _Spec, seed: int) -> Interval | None:
    items = _items(res, spec.metric)
    if not items:
        return None
    if spec.rate:
        return wilson(sum(items), len(items))
    return bootstrap_mean(items, seed=seed)


def _threshold_rule(spec: _Spec, bound: float, res: ModelResult, cfg: EvalConfig, seed: int) -> RuleResult:
    op = ">=" if spec.higher_is_better else "<="
    value, measured = _value(res, spec.metric)
    rule = f"{label(spec.metric)} {op} {fmt(spec.metric, bound)}"
    if value is None:
        status: Status = "fail" if measured else "skipped"
        note = "not a number: the model is broken" if measured else "not measured"
        return RuleResult(rule, spec.metric, "threshold", None, bound, None, status, note)
    iv = _value_interval(res, spec, seed)
    status, note = decide(
        "threshold",
        iv,
        value,
        bound,
        spec.higher_is_better,
        rate=spec.rate,
        max_half_width=cfg.max_half_width,
    )
    return RuleResult(
        rule,
        spec.metric,
        "threshold",
        value,
        bound,
        None,
        status,
        note,
        iv.to_list() if iv else None,
        iv.n if iv else None,
    )


def _comparison_rule(
    spec: _Spec,
    kind: Kind,
    rule: str,
    cand: ModelResult,
    ref: ModelResult,
    bound: float,
    cfg: EvalConfig,
    seed: int,
    metric: str | None = None,
) -> RuleResult:
    """Hold ``cand - ref`` (per-item pairs when both have them) to ``bound``."""
    metric = metric or spec.metric
    value, measured = _value(cand, metric)
    other, _ = _value(ref, metric)
    if value is None and measured:
        return RuleResult(
            rule, metric, kind, None, bound, other, "fail", "not a number", compared="difference"
        )
    if value is None or other is None:
        return RuleResult(rule, metric, kind, value, bound, other, "skipped", "not measured for both")
    a, b = _items(cand, metric), _items(ref, metric)
    iv = paired_difference(a, b, seed=seed) if a and b and len(a) == len(b) else None
    note = "" if iv is not None or not (a or b) else "no paired items: compared by the estimates"
    status, why = decide(
        kind,
        iv,
        value - other,
        bound,
        spec.higher_is_better,
        rate=spec.rate,
        max_half_width=cfg.max_half_width,
    )
    return RuleResult(
        rule,
        metric,
        kind,
        value,
        bound,
        other,
        status,
        "; ".join(x for x in (why, note) if x),
        iv.to_list() if iv else None,
        iv.n if iv else None,
        "difference",
    )


def _regression_rule(spec: _Spec, tol: float, report: EvalReport, cfg: EvalConfig, seed: int) -> RuleResult:
    cand, champ = report.candidate, report.champion
    assert champ is not None
    op = ">=" if spec.higher_is_better else "<="
    sign = "-" if spec.higher_is_better else "+"
    if spec.metric == "perplexity":
        return _perplexity_rule(tol, report, cfg, seed)
    rule = f"{label(spec.metric)} {op} champion {sign} {fmt(spec.metric, tol)}"
    bound = -tol if spec.higher_is_better else tol
    return _comparison_rule(spec, "no_regression", rule, cand, champ, bound, cfg, seed)


_PPL = next(s for s in SPECS if s.metric == "perplexity")


def _perplexity_rule(tol: float, report: EvalReport, cfg: EvalConfig, seed: int) -> RuleResult:
    """Perplexity within ``tol`` (relative) of the champion's, on the same held-out windows.

    With the same tokenizer the windows are the same, so the paired difference of their mean NLL is
    held to ``ln(1 + tol)`` (a perplexity ratio of at most ``1 + tol``). Different tokenizers are not
    comparable per token: bits per byte is compared by the estimates.
    """
    cand, champ = report.candidate, report.champion
    assert champ is not None
    if report.same_tokenizer is False:
        rule = f"{label('bits_per_byte')} <= champion + {tol:.0%}"
        value, _ = _value(cand, "bits_per_byte")
        other, _ = _value(champ, "bits_per_byte")
        if value is None or other is None:
            return RuleResult(
                rule, "bits_per_byte", "no_regression", value, None, other, "skipped", "not measured"
            )
        bound = other * (1 + tol)
        status: Status = "pass" if value <= bound else "fail"
        return RuleResult(
            rule,
            "bits_per_byte",
            "no_regression",
            value,
            bound,
            other,
            status,
            "different tokenizers: compared in bits per byte, by the estimates",
        )
    rule = f"{label('perplexity')} <= champion + {tol:.0%}"
    value, measured = _value(cand, "perplexity")
    other, _ = _value(champ, "perplexity")
    if value is None and measured:
        return RuleResult(rule, "perplexity", "no_regression", None, None, other, "fail", "not a number")
    if value is None or other is None:
        return RuleResult(rule, "perplexity", "no_regression", value, None, other, "skipped", "not measured")
    a, b = cand.window_nll, champ.window_nll
    if not a or len(a) != len(b):
        status = "pass" if value <= other * (1 + tol) else "fail"
        return RuleResult(rule, "perplexity", "no_regression", value, other * (1 + tol), other, status)
    iv = paired_difference(a, b, seed=seed)
    bound = math.log1p(tol)
    status, note = decide(
        "no_regression", iv, iv.estimate, bound, False, rate=False, max_half_width=cfg.max_half_width
    )
    return RuleResult(
        rule,
        "perplexity",
        "no_regression",
        value,
        bound,
        other,
        status,
        "; ".join(x for x in ("held: mean NLL per window, nats (ln of the perplexity ratio)", note) if x),
        iv.to_list(),
        iv.n,
        "difference",
    )


def _win_rate_rule(report: EvalReport, cfg: EvalConfig, seed: int) -> RuleResult:
    assert cfg.min_win_rate is not None
    rule = f"Reward-model win rate against the champion >= {cfg.min_win_rate:.0%}"
    outcomes = report.comparison_items.get("win") if report.comparison_items else None
    win = report.comparison.get("win_rate")
    if win is None:
        return RuleResult(
            rule,
            "win_rate",
            "no_regression",
            None,
            cfg.min_win_rate,
            None,
            "skipped",
            "no reward model given",
        )
    iv = bootstrap_mean(outcomes, seed=seed) if outcomes else None
    status, note = decide(
        "no_regression", iv, win, cfg.min_win_rate, True, rate=True, max_half_width=cfg.max_half_width
    )
    return RuleResult(
        rule,
        "win_rate",
        "no_regression",
        win,
        cfg.min_win_rate,
        0.5,
        status,
        note,
        iv.to_list() if iv else None,
        iv.n if iv else None,
    )


def check_gates(report: EvalReport, cfg: EvalConfig, *, seed: int = 0) -> Verdict:
    """Apply every configured floor and, with a champion, every no-regression rule to ``report``.

    Args:
        report: the evaluation of the candidate (and champion), with per-item scores.
        cfg: floors (``max_*``/``min_*``), tolerances (``*_tolerance``, ``min_win_rate``) and
            ``max_half_width``.
        seed: the bootstrap's seed (intervals are deterministic in it).

    Returns:
        The :class:`Verdict`; ``passed`` is False when any rule failed or could not be decided.
    """
    rules: list[RuleResult] = []
    notes: list[str] = []
    has_champion = report.champion is not None
    for spec in SPECS:
        bound = getattr(cfg, spec.threshold) if spec.threshold else None
        if bound is not None:
            rules.append(_threshold_rule(spec, float(bound), report.candidate, cfg, seed))
    if has_champion:
        for spec in SPECS:
            tol = getattr(cfg, spec.tolerance) if spec.tolerance else None
            if tol is not None:
                rules.append(_regression_rule(spec, float(tol), report, cfg, seed))
        if cfg.min_win_rate is not None:
            rules.append(_win_rate_rule(report, cfg, seed))
    else:
        notes.append("No champion yet: the floors apply alone; no-regression rules are skipped.")
    if not any(r.status != "skipped" for r in rules):
        notes.append("No rule could be checked: configure eval thresholds or register a champion.")
    if any(r.status == "undecided" for r in rules):
        notes.append("An undecided rule blocks promotion: give the evaluation more items (see its note).")
    return Verdict(
        passed=not any(r.status in ("fail", "undecided") for r in rules),
        has_champion=has_champion,
        rules=rules,
        notes=notes,
        candidate_sha256=report.candidate.sha256,
        champion_sha256=report.champion.sha256 if report.champion else None,
    )


# --- stage rules ----------------------------------------------------------------------------------


@dataclass
class StageScores:
    """What a stage's rules read of one model: per-item task scores, KL and held-out NLL."""

    accuracy: Sequence[float]  # per held-out task item: 1 correct, 0 not
    reward: Sequence[float]  # per held-out task item: the task's score in [0, 1]
    window_nll: Sequence[float] = ()  # held-out text, per window (same windows for every model)
    kl: Sequence[float] = ()  # KL to the stage's reference, per sampled reply (the candidate only)

    def result(self, role: str, sha256: str | None) -> ModelResult:
        metrics: dict[str, float | None] = {
            "task_accuracy": sum(self.accuracy) / len(self.accuracy) if self.accuracy else None,
            "task_reward": sum(self.reward) / len(self.reward) if self.reward else None,
        }
        if self.window_nll:
            metrics["heldout_nll"] = sum(self.window_nll) / len(self.window_nll)
        if self.kl:
            metrics["kl_to_reference"] = sum(self.kl) / len(self.kl)
        items = {"task_accuracy": list(self.accuracy), "task_reward": list(self.reward)}
        if self.kl:
            items["kl_to_reference"] = list(self.kl)
        return ModelResult(role, sha256, metrics=metrics, items=items, window_nll=list(self.window_nll))


_ACC = next(s for s in SPECS if s.metric == "task_accuracy")
_REWARD = _Spec("task_reward", True, None, None)
_KL = next(s for s in SPECS if s.metric == "kl_to_reference")


def check_stage(
    stage: str,
    candidate: StageScores,
    reference: StageScores,
    cfg: EvalConfig,
    *,
    reference_name: str,
    base: StageScores | None = None,
    policy: bool = False,
    seed: int = 0,
) -> Verdict:
    """The rules a stage must meet against its input, in the night itself.

    - held-out task accuracy: the stage beats ``reference`` (its input: the base for SFT, SFT for a
      policy) by more than ``eval.stage_min_gain``, shown by the paired interval;
    - a policy (``policy=True``) also beats its reference on the task reward, and keeps its KL to the
      reference within ``eval.stage_kl_budget`` (nats per reply);
    - held-out bits per byte stays within ``eval.stage_bpb_tolerance`` of the pretrained ``base``
      (paired over the same windows: the tokenizer does not change after pretraining).
    """
    cand = candidate.result("candidate", None)
    ref = reference.result(reference_name, None)
    rules: list[RuleResult] = []
    gain = cfg.stage_min_gain
    rules.append(
        _comparison_rule(
            _ACC,
            "improvement",
            f"Task accuracy: {stage} > {reference_name} + {gain:.0%}",
            cand,
            ref,
            gain,
            cfg,
            seed,
        )
    )
    if policy:
        rules.append(
            _comparison_rule(
                _REWARD,
                "improvement",
                f"Task reward: {stage} > {reference_name} + {gain:.2f}",
                cand,
                ref,
                gain,
                cfg,
                seed,
            )
        )
        if cfg.stage_kl_budget is not None:
            rules.append(_threshold_rule(_KL, cfg.stage_kl_budget, cand, cfg, seed))
    if cfg.stage_bpb_tolerance is not None and base is not None and candidate.window_nll and base.window_nll:
        tol = cfg.stage_bpb_tolerance
        a, b = list(candidate.window_nll), list(base.window_nll)
        iv = paired_difference(a, b, seed=seed)
        bound = tol * (sum(b) / len(b))  # bits per byte scale with the mean NLL: same text, same tokens
        status, note = decide(
            "no_regression", iv, iv.estimate, bound, False, rate=False, max_half_width=cfg.max_half_width
        )
        value = sum(a) / len(a)
        rules.append(
            RuleResult(
                f"Held-out bits per byte: {stage} <= base + {tol:.0%}",
                "heldout_nll",
                "no_regression",
                value,
                bound,
                sum(b) / len(b),
                status,
                "; ".join(x for x in ("held: mean NLL per window, nats", note) if x),
                iv.to_list(),
                iv.n,
                "difference",
            )
        )
    return Verdict(
        passed=not any(r.status in ("fail", "undecided") for r in rules),
        has_champion=False,
        rules=rules,
        notes=[],
        stage=stage,
    )
