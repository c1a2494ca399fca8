"""``evaluate(candidate, champion)``: both models measured on the same inputs, into one report.

Sections, each run for the candidate and (when given) the champion with identical prompts, seeds
and items: held-out perplexity and bits per byte; task accuracy; a sample table on ``eval.prompts``;
the behaviour probes of :mod:`training.eval.probes` (refusal of harmful requests, over-refusal of
benign and ordinary ones, degeneration, toxicity and personal data under provocation); reward-model
win rate (with a ``reward_fn``); KL to a reference model (with a ``reference``); counterfactual bias
probes. Every rate keeps its per-item scores, so the gates decide on intervals.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from catalog.artifacts import ArtifactRef
from core.data_config import DataConfig
from core.eval_config import EvalConfig
from gpt.model_io import load_model
from training.data.shards import TokenShards
from training.eval import bias as bias_probe
from training.eval import diversity
from training.eval.probes import (
    Probe,
    flag_reasons,
    is_degenerate,
    is_refusal,
    probe_prompts,
    toxicity_scores,
)
from training.eval.report import EvalReport, ModelResult, SampleRow
from training.eval.sampling import Reply, sample_replies
from training.eval.scoring import (
    HeldoutText,
    heldout_documents,
    kl_per_token,
    same_vocabulary,
    score_heldout,
    unigram_perplexity,
)
from training.eval.tasks import TaskItem, builtin_items, task_accuracy
from training.progress import Progress

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from gpt.model import GPT
    from training.data.shards import TokenShards

log = logging.getLogger(__name__)

RewardFn = Callable[[str, str], float]  # (prompt text, reply) -> reward; higher is better
DEFAULT_REFUSAL = "I can't help with that."  # rlhf.preferences.refusal's default


@dataclass
class LoadedModel:
    """A model ready for evaluation: weights, tokenizer, and the artifact hash when there is one."""

    model: GPT
    tokenizer: Tokenizer
    sha256: str | None = None


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``; anything else unchanged."""
    if device != "auto":
        return device

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_for_eval(source: Any, *, device: str = "cpu", what: str = "model") -> LoadedModel:
    """A :class:`LoadedModel` from itself, a ``(GPT, Tokenizer)`` pair, a model artifact ref or a path.

    A model passed in memory is moved to ``device`` and put in eval mode in place.

    Raises:
        TypeError: ``source`` is none of these; the message names ``what`` (``candidate``, ...).
    """
    if isinstance(source, LoadedModel):
        source.model.to(device).eval()
        return source
    if isinstance(source, tuple) and len(source) == 2:
        model, tok = source
        return LoadedModel(model.to(device).eval(), tok)
    if isinstance(source, ArtifactRef | str | Path):
        model, tok, ref = load_model(source, device=device)
        return LoadedModel(model, tok, ref.sha256)
    raise TypeError(
        f"{what}: expected a model artifact (ArtifactRef or path), a (GPT, Tokenizer) pair or a LoadedModel, "
        f"got {type(source).__name__}"
    )


def heldout_text(heldout: Any, tokenizer: Tokenizer, cfg: EvalConfig) -> HeldoutText:
    if isinstance(heldout, HeldoutText):
        return heldout
    shards: TokenShards = heldout if isinstance(heldout, TokenShards) else TokenShards.open(heldout)
    return heldout_documents(shards, tokenizer, split=cfg.heldout_split, max_tokens=cfg.heldout_max_tokens)


class _Timer:
    """Times each part of the evaluation; its progress is a log line as each part starts."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.progress = Progress("evaluate", None, unit="part", every=1, live=False)

    def __call__(self, name: str) -> _Timer:
        self._name, self._t0 = name, time.perf_counter()
        return self

    def __enter__(self) -> None:
        self.progress.update(len(self.seconds) + 1, now=self._name, seconds_so_far=sum(self.seconds.values()))

    def __exit__(self, *exc: object) -> None:
        self.seconds[self._name] = round(time.perf_counter() - self._t0, 3)


def evaluate(
    candidate: Any,
    champion: Any = None,
    *,
    cfg: EvalConfig,
    data_cfg: DataConfig | None = None,
    heldout: TokenShards | ArtifactRef | str | Path | HeldoutText | None = None,
    tasks: Sequence[TaskItem] | None = None,
    reward_fn: RewardFn | None = None,
    reference: Any = None,
    seed: int = 0,
    refusal: str = DEFAULT_REFUSAL,
) -> EvalReport:
    """Measure ``candidate`` (and ``champion``) on the same held-out text, prompts, tasks and probes.

    Args:
        candidate: the model to judge: a ``model`` artifact (ref or path), ``(GPT, Tokenizer)`` or
            a :class:`LoadedModel`.
        champion: the model it must not be worse than, in the same forms; None when there is none.
        cfg: what to measure (prompts, sampling, probe switches, sizes).
        data_cfg: unused by the probes since their toxicity is a trained classifier (kept for callers).
        heldout: a ``tokens`` artifact (or opened shards, or decoded text) whose ``cfg.heldout_split``
            is scored; None skips perplexity. The candidate's tokenizer must be the one that wrote it.
        tasks: verifiable task items; None uses the built-in ones when ``cfg.builtin_tasks``.
        reward_fn: ``(prompt, reply) -> float``; gives the mean reward and, with a champion, the
            win rate on the held-out prompts.
        reference: a model to measure KL(candidate || reference) against (same vocabulary).
        seed: base seed of every sampled generation (both models get the same seeds).
        refusal: the refusal sentence the policy was trained to give (``rlhf.preferences.refusal``).

    Returns:
        The :class:`EvalReport`.

    Raises:
        ValueError: the reference model's vocabulary differs from the candidate's, or the held-out
            tokens were written with another tokenizer.
    """
    with _torch_threads(cfg.torch_threads):
        return _evaluate(candidate, champion, cfg, heldout, tasks, reward_fn, reference, seed, refusal)


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Set torch's intra-op threads for the block (process-wide, as torch has no other kind)."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _evaluate(
    candidate: Any,
    champion: Any,
    cfg: EvalConfig,
    heldout: Any,
    tasks: Sequence[TaskItem] | None,
    reward_fn: RewardFn | None,
    reference: Any,
    seed: int,
    refusal: str,
) -> EvalReport:
    device = resolve_device(cfg.device)
    timer = _Timer()
    cand = load_for_eval(candidate, device=device, what="candidate")
    champ = load_for_eval(champion, device=device, what="champion") if champion is not None else None
    ref = load_for_eval(reference, device=device, what="reference") if reference is not None else None
    if ref is not None and not same_vocabulary(cand.tokenizer, ref.tokenizer):
        raise ValueError(
            "reference: its tokenizer maps tokens to other ids than the candidate's, so KL is undefined; "
            "pass the model the candidate was fine-tuned from"
        )
    models = [("candidate", cand)] + ([("champion", champ)] if champ else [])
    results = {role: ModelResult(role=role, sha256=m.sha256) for role, m in models}
    report = EvalReport(
        candidate=results["candidate"],
        champion=results.get("champion"),
        same_tokenizer=same_vocabulary(cand.tokenizer, champ.tokenizer) if champ else None,
        settings={**cfg.model_dump(mode="json"), "seed": seed},
    )

    if heldout is not None:
        with timer("held-out text"):
            _score_heldout(report, models, heldout, cfg)
    else:
        report.notes.append("No held-out tokens given: perplexity was not measured.")

    items = (
        list(tasks)
        if tasks is not None
        else (builtin_items(cfg.max_task_items, seed) if cfg.builtin_tasks else [])
    )
    items = items[: cfg.max_task_items]
    if items:
        with timer("tasks"):
            _score_tasks(report, models, items, cfg)
        if tasks is None:
            report.notes.append(f"Task accuracy on {len(items)} built-in items (add, copy).")

    with timer("samples"):
        table = {role: _prompt_replies(m, cfg, seed) for role, m in models}
        report.samples = [
            SampleRow(
                prompt=p,
                candidate=table["candidate"][i][0].text,
                champion=table["champion"][i][0].text if champ else None,
            )
            for i, p in enumerate(cfg.prompts[: cfg.sample_rows])
        ]

    answered: dict[str, list[tuple[Probe, Reply]]] = {}
    with timer("probes"):
        for role, m in models:
            answered[role] = probe_model(results[role], m, cfg, seed, refusal)

    if reward_fn is not None and answered["candidate"]:
        with timer("reward"):
            _rewards(report, answered, reward_fn)

    if ref is not None and answered["candidate"]:
        with timer("kl"):
            _kl_to_reference(report, models, ref, answered)

    if cfg.bias_probes:
        with timer("bias"):
            for role, m in models:
                _score_bias(results[role], m)

    report.timings = timer.seconds
    return report


def _results(report: EvalReport) -> dict[str, ModelResult]:
    return {"candidate": report.candidate, **({"champion": report.champion} if report.champion else {})}


def _score_heldout(
    report: EvalReport, models: list[tuple[str, LoadedModel]], heldout: Any, cfg: EvalConfig
) -> None:
    """Perplexity and bits per byte on the held-out text, and against the unigram baseline."""
    results = _results(report)
    text = heldout_text(heldout, models[0][1].tokenizer, cfg)
    report.heldout = {"source": text.source, "documents": len(text.documents), "bytes": text.bytes}
    for role, m in models:
        s = score_heldout(m.model, m.tokenizer, text, batch_size=cfg.batch_size)
        results[role].metrics.update(
            {"perplexity": s.perplexity, "bits_per_byte": s.bits_per_byte, "heldout_tokens": s.tokens}
        )
        # The unigram baseline is fitted on the shards' ids: only for models that share them.
        if role == "candidate" or report.same_tokenizer:
            base = unigram_perplexity(m.tokenizer, text)
            if base is not None:
                report.heldout["unigram_perplexity"] = base
                results[role].metrics["perplexity_vs_unigram"] = s.perplexity / base
        results[role].window_nll = [round(v, 5) for v in s.window_nll]


def _score_tasks(
    report: EvalReport, models: list[tuple[str, LoadedModel]], items: list[TaskItem], cfg: EvalConfig
) -> None:
    """Accuracy on the verifiable task items, overall and per task, with every item's outcome."""
    results = _results(report)
    for role, m in models:
        t = task_accuracy(m.model, m.tokenizer, items, max_new_tokens=cfg.task_max_new_tokens)
        results[role].metrics["task_accuracy"] = t.accuracy
        results[role].metrics.update({f"task_accuracy.{k}": v["accuracy"] for k, v in t.per_task.items()})
        results[role].tasks, results[role].task_items = t.per_task, t.items
        results[role].items["task_accuracy"] = [float(c) for c in t.correct]


def _kl_to_reference(
    report: EvalReport,
    models: list[tuple[str, LoadedModel]],
    ref: LoadedModel,
    answered: dict[str, list[tuple[Probe, Reply]]],
) -> None:
    """KL to the reference per token on each model's replies to the ordinary probes."""
    results = _results(report)
    vocab = ref.tokenizer.get_vocab_size(with_added_tokens=True)
    for role, m in models:
        if role == "champion" and not same_vocabulary(m.tokenizer, ref.tokenizer):
            report.notes.append("KL to the reference not measured for the champion (other tokenizer).")
            continue
        seqs = [(r.prompt_ids, r.ids) for p, r in answered[role] if p.set == "ordinary"]
        results[role].metrics["kl_to_reference"] = kl_per_token(m.model, ref.model, seqs, vocab)


def _score_bias(res: ModelResult, m: LoadedModel) -> None:
    """The log-likelihood gap between paired sentences that differ only in a group word."""
    b = bias_probe.bias_gaps(m.model, m.tokenizer)
    res.metrics["bias_gap"] = b.gap
    res.bias = {"per_axis": b.per_axis, "signed_per_axis": b.signed_per_axis, "pairs": b.pairs}


def _prompt_replies(m: LoadedModel, cfg: EvalConfig, seed: int) -> list[list[Reply]]:
    """One reply to each of ``eval.prompts`` (the sample table); prompt ``i`` gets seed ``seed + i``."""
    return [
        sample_replies(
            m.model,
            m.tokenizer,
            p,
            fmt=cfg.prompt_format,
            n=cfg.samples_per_prompt,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            seed=seed + i,
        )
        for i, p in enumerate(cfg.prompts)
    ]


def _probe_sets(cfg: EvalConfig) -> list[str]:
    """Refusal probes need a chat model; degeneration and provocation apply to any."""
    sets = ["ordinary"]
    if cfg.prompt_format == "chat" and cfg.refusal_probes:
        sets += ["harmful", "sensitive"]
    if cfg.red_team:
        sets.append("provocation")
    return sets


def probe_model(
    res: ModelResult, m: LoadedModel, cfg: EvalConfig, seed: int, refusal: str
) -> list[tuple[Probe, Reply]]:
    """Answer every probe prompt (``training.eval.probes``) and record the rates and per-item flags.

    Prompt ``j`` is sampled with seed ``seed + 20_000 + j`` for any model, so two models answer the
    same items with the same randomness. Returns the (probe, reply) pairs in item order.
    """
    chat = cfg.prompt_format == "chat"
    pairs = _answer_probes(m, cfg, seed)
    flags: dict[str, list[tuple[Probe, Reply, bool, str]]] = {}
    answering = [(p, r) for p, r in pairs if p.set in ("ordinary", "sensitive")]
    if chat:
        for p, r in pairs:
            if p.set in ("harmful", "sensitive", "ordinary"):
                key = "harmful" if p.set == "harmful" else p.set
                refused = is_refusal(r.text, refusal)
                flags.setdefault(key, []).append((p, r, refused, "refused" if refused else ""))
    if answering:
        _score_degeneration(res, answering, cfg)
    if "harmful" in flags:
        rows = flags["harmful"]
        res.items["harmful_refusal_rate"] = [float(f) for *_, f, _ in rows]
        res.metrics["harmful_refusal_rate"] = sum(res.items["harmful_refusal_rate"]) / len(rows)
        res.probes["harmful"] = _probe_summary(rows, show=lambda f: not f)
    benign = flags.get("sensitive", []) + flags.get("ordinary", [])
    if benign:
        res.items["over_refusal_rate"] = [float(f) for *_, f, _ in benign]
        res.metrics["over_refusal_rate"] = sum(res.items["over_refusal_rate"]) / len(benign)
        for name in ("sensitive", "ordinary"):
            if name in flags:
                res.probes[name] = _probe_summary(flags[name])
    provoked = [(p, r) for p, r in pairs if p.set == "provocation"]
    if provoked:
        _score_provocations(res, provoked, cfg)
    return pairs


def _answer_probes(m: LoadedModel, cfg: EvalConfig, seed: int) -> list[tuple[Probe, Reply]]:
    """Every probe prompt's sampled replies (``cfg.probe_limit`` of each category when set)."""
    pairs: list[tuple[Probe, Reply]] = []
    prompts = probe_prompts(_probe_sets(cfg), cfg.probe_categories)
    if cfg.probe_limit is not None:  # the first items of every category (tests and quick checks)
        seen: dict[tuple[str, str], int] = {}
        kept = []
        for p in prompts:
            key = (p.set, p.category)
            seen[key] = seen.get(key, 0) + 1
            if seen[key] <= cfg.probe_limit:
                kept.append(p)
        prompts = kept
    for j, p in enumerate(prompts):
        n = cfg.provocation_samples if p.set == "provocation" else cfg.probe_samples
        for r in sample_replies(
            m.model,
            m.tokenizer,
            p.prompt,
            fmt=cfg.prompt_format,
            n=n,
            max_new_tokens=cfg.probe_max_new_tokens,
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            seed=seed + 20_000 + j,
        ):
            pairs.append((p, r))
    return pairs


def _score_degeneration(res: ModelResult, answering: list[tuple[Probe, Reply]], cfg: EvalConfig) -> None:
    """Degenerate and repetitive replies, and the diversity of the replies to answerable prompts."""
    degenerate = [
        is_degenerate(
            r.text,
            min_words=cfg.min_reply_words,
            max_repetition=cfg.max_reply_repetition,
            ngram=cfg.repetition_ngram,
        )
        for _, r in answering
    ]
    texts = [r.text for _, r in answering]
    res.items["degenerate_rate"] = [float(d) for d in degenerate]
    res.items["repetition_rate"] = [
        diversity.repetition_rate([t], cfg.repetition_ngram) or 0.0 for t in texts
    ]
    res.metrics.update(
        {
            "degenerate_rate": sum(degenerate) / len(degenerate),
            "repetition_rate": sum(res.items["repetition_rate"]) / len(texts),
            "distinct_1": diversity.distinct_n(texts, 1) or 0.0,
            "distinct_2": diversity.distinct_n(texts, 2) or 0.0,
            "mean_words": diversity.mean_words(texts),
        }
    )
    res.probes["degeneration"] = _probe_summary(
        [(p, r, d, "degenerate" if d else "") for (p, r), d in zip(answering, degenerate, strict=True)]
    )


def _score_provocations(res: ModelResult, provoked: list[tuple[Probe, Reply]], cfg: EvalConfig) -> None:
    """Replies to provocations flagged toxic (the classifier) or leaking personal data."""
    tox = toxicity_scores([r.text for _, r in provoked])
    rows = []
    n_tox = n_pii = 0
    for (p, r), t in zip(provoked, tox, strict=True):
        why = flag_reasons(r.text, t, cfg.toxicity_threshold)
        n_tox += "toxic" in why
        n_pii += any(w.startswith("pii:") for w in why)
        rows.append((p, r, bool(why), ", ".join(why)))
    res.items["safety_flag_rate"] = [float(f) for *_, f, _ in rows]
    res.metrics.update(
        {
            "safety_flag_rate": sum(res.items["safety_flag_rate"]) / len(rows),
            "safety_toxicity_rate": n_tox / len(rows),
            "safety_pii_rate": n_pii / len(rows),
        }
    )
    res.probes["provocation"] = _probe_summary(rows)


def _probe_summary(rows: Sequence[tuple[Probe, Reply, bool, str]], show: Any = None) -> dict[str, Any]:
    """Per-category rates of the flag, and a few examples (flagged ones, or those ``show`` picks)."""
    per: dict[str, list[bool]] = {}
    for p, _, flag, _ in rows:
        per.setdefault(p.category, []).append(flag)
    pick = show or (lambda f: f)
    examples = [
        {"category": p.category, "prompt": p.prompt, "reply": r.text, "why": why or "not refused"}
        for p, r, flag, why in rows
        if pick(flag)
    ][:8]
    return {
        "items": len(rows),
        "per_category": {c: sum(v) / len(v) for c, v in per.items()},
        "examples": examples,
    }


def _rewards(report: EvalReport, answered: dict[str, list[tuple[Probe, Reply]]], reward_fn: RewardFn) -> None:
    """Mean reward of the replies to ordinary and sensitive prompts and, with a champion, the win rate
    over the same items (1 a win, 0.5 a tie, 0 a loss per pair)."""
    scores: dict[str, list[float]] = {}
    for role, pairs in answered.items():
        scores[role] = [
            float(reward_fn(p.prompt, r.text)) for p, r in pairs if p.set in ("ordinary", "sensitive")
        ]
        res = report.candidate if role == "candidate" else report.champion
        assert res is not None
        if not scores[role]:
            continue
        res.rewards = [round(s, 5) for s in scores[role]]
        res.items["reward_mean"] = list(res.rewards)
        res.metrics["reward_mean"] = sum(scores[role]) / len(scores[role])
    if scores.get("champion"):
        outcome = [
            1.0 if a > b else 0.5 if a == b else 0.0
            for a, b in zip(scores["candidate"], scores["champion"], strict=True)
        ]
        report.comparison.update(
            {
                "win_rate": sum(outcome) / len(outcome),
                "wins": float(sum(o == 1.0 for o in outcome)),
                "ties": float(sum(o == 0.5 for o in outcome)),
                "pairs": float(len(outcome)),
            }
        )
        report.comparison_items["win"] = outcome
