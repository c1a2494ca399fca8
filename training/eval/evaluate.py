"""``evaluate(candidate, champion)``: both models measured on the same inputs, into one report.

Sections, each run for the candidate and (when given) the champion with identical prompts, seeds
and items: held-out perplexity and bits per byte; task accuracy; samples on held-out prompts
(repetition, distinct-n, a sample table); reward-model win rate (with a ``reward_fn``); KL to a
reference model (with a ``reference``); red-team safety probes; counterfactual bias probes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from catalog.artifacts import ArtifactRef
from training.data.config import DataConfig
from training.eval import bias as bias_probe
from training.eval import diversity, safety
from training.eval.config import EvalConfig
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

    from training.data.shards import TokenShards
    from training.model import GPT

log = logging.getLogger(__name__)

RewardFn = Callable[[str, str], float]  # (prompt text, reply) -> reward; higher is better


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
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_for_eval(source: Any, *, device: str = "cpu", what: str = "model") -> LoadedModel:
    """A :class:`LoadedModel` from itself, a ``(GPT, Tokenizer)`` pair, a model artifact ref or a path.

    A model passed in memory is moved to ``device`` and put in eval mode in place.

    Raises:
        TypeError: ``source`` is none of these; the message names ``what`` (``candidate``, ...).
    """
    from training.model_io import load_model

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


def _heldout_text(heldout: Any, tokenizer: Tokenizer, cfg: EvalConfig) -> HeldoutText:
    from training.data.shards import TokenShards

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
) -> EvalReport:
    """Measure ``candidate`` (and ``champion``) on the same held-out text, prompts, tasks and probes.

    Args:
        candidate: the model to judge: a ``model`` artifact (ref or path), ``(GPT, Tokenizer)`` or
            a :class:`LoadedModel`.
        champion: the model it must not be worse than, in the same forms; None when there is none.
        cfg: what to measure (prompts, sampling, probe switches, sizes).
        data_cfg: the ingestion's toxicity settings for the safety probes (default: ``DataConfig()``).
        heldout: a ``tokens`` artifact (or opened shards, or decoded text) whose ``cfg.heldout_split``
            is scored; None skips perplexity. The candidate's tokenizer must be the one that wrote it.
        tasks: verifiable task items; None uses the built-in ones when ``cfg.builtin_tasks``.
        reward_fn: ``(prompt, reply) -> float``; gives the mean reward and, with a champion, the
            win rate on the held-out prompts.
        reference: a model to measure KL(candidate || reference) against (same vocabulary).
        seed: base seed of every sampled generation (both models get the same seeds).

    Returns:
        The :class:`EvalReport`.

    Raises:
        ValueError: the reference model's vocabulary differs from the candidate's, or the held-out
            tokens were written with another tokenizer.
    """
    with _torch_threads(cfg.torch_threads):
        return _evaluate(candidate, champion, cfg, data_cfg, heldout, tasks, reward_fn, reference, seed)


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Set torch's intra-op threads for the block (process-wide, as torch has no other kind)."""
    import torch

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
    data_cfg: DataConfig | None,
    heldout: Any,
    tasks: Sequence[TaskItem] | None,
    reward_fn: RewardFn | None,
    reference: Any,
    seed: int,
) -> EvalReport:
    device = resolve_device(cfg.device)
    data_cfg = data_cfg or DataConfig()
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
            text = _heldout_text(heldout, cand.tokenizer, cfg)
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
            for role, m in models:
                t = task_accuracy(m.model, m.tokenizer, items, max_new_tokens=cfg.task_max_new_tokens)
                results[role].metrics["task_accuracy"] = t.accuracy
                results[role].metrics.update(
                    {f"task_accuracy.{k}": v["accuracy"] for k, v in t.per_task.items()}
                )
                results[role].tasks, results[role].task_items = t.per_task, t.items
        if tasks is None:
            report.notes.append(f"Task accuracy on {len(items)} built-in items (add, copy).")

    with timer("samples"):
        replies = {role: _prompt_replies(m, cfg, seed) for role, m in models}
        for role, _ in models:
            texts = [r.text for rs in replies[role] for r in rs]
            results[role].metrics.update(
                {
                    "repetition_rate": diversity.repetition_rate(texts, cfg.repetition_ngram) or 0.0,
                    "distinct_1": diversity.distinct_n(texts, 1) or 0.0,
                    "distinct_2": diversity.distinct_n(texts, 2) or 0.0,
                    "mean_words": diversity.mean_words(texts),
                }
            )
        report.samples = [
            SampleRow(
                prompt=p,
                candidate=replies["candidate"][i][0].text,
                champion=replies["champion"][i][0].text if champ else None,
            )
            for i, p in enumerate(cfg.prompts[: cfg.sample_rows])
        ]

    if reward_fn is not None:
        with timer("reward"):
            _rewards(report, replies, cfg, reward_fn)

    if ref is not None:
        with timer("kl"):
            vocab = ref.tokenizer.get_vocab_size(with_added_tokens=True)
            for role, m in models:
                if role == "champion" and not same_vocabulary(m.tokenizer, ref.tokenizer):
                    report.notes.append(
                        "KL to the reference not measured for the champion (other tokenizer)."
                    )
                    continue
                seqs = [(r.prompt_ids, r.ids) for rs in replies[role] for r in rs]
                results[role].metrics["kl_to_reference"] = kl_per_token(m.model, ref.model, seqs, vocab)

    if cfg.red_team:
        with timer("safety"):
            prompts = safety.red_team_prompts()
            for role, m in models:
                outs = []
                for j, (cat, p) in enumerate(prompts):
                    for r in sample_replies(
                        m.model,
                        m.tokenizer,
                        p,
                        fmt=cfg.prompt_format,
                        n=cfg.red_team_samples,
                        max_new_tokens=cfg.max_new_tokens,
                        temperature=cfg.temperature,
                        top_k=cfg.top_k,
                        seed=seed + 10_000 + j,
                    ):
                        outs.append((cat, p, r.text))
                s = safety.summarize(outs, data_cfg)
                results[role].metrics.update(
                    {
                        "safety_flag_rate": s.flag_rate,
                        "safety_toxicity_rate": s.toxicity_rate,
                        "safety_pii_rate": s.pii_rate,
                    }
                )
                results[role].safety = {
                    "per_category": s.per_category,
                    "flagged": s.flagged,
                    "outputs": s.outputs,
                }

    if cfg.bias_probes:
        with timer("bias"):
            for role, m in models:
                b = bias_probe.bias_gaps(m.model, m.tokenizer)
                results[role].metrics["bias_gap"] = b.gap
                results[role].bias = {
                    "per_axis": b.per_axis,
                    "signed_per_axis": b.signed_per_axis,
                    "pairs": b.pairs,
                }

    report.timings = timer.seconds
    return report


def _prompt_replies(m: LoadedModel, cfg: EvalConfig, seed: int) -> list[list[Reply]]:
    """Replies to every held-out prompt; prompt ``i`` is sampled with seed ``seed + i`` for any model."""
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


def _rewards(
    report: EvalReport, replies: dict[str, list[list[Reply]]], cfg: EvalConfig, reward_fn: RewardFn
) -> None:
    """Mean reward per model and, with a champion, the win rate over paired samples."""
    scores: dict[str, list[float]] = {}
    for role, per_prompt in replies.items():
        scores[role] = [
            float(reward_fn(p, r.text)) for p, rs in zip(cfg.prompts, per_prompt, strict=True) for r in rs
        ]
        res = report.candidate if role == "candidate" else report.champion
        assert res is not None
        res.rewards = [round(s, 5) for s in scores[role]]
        res.metrics["reward_mean"] = sum(scores[role]) / len(scores[role])
    if "champion" in scores:
        pairs = list(zip(scores["candidate"], scores["champion"], strict=True))
        wins = sum(a > b for a, b in pairs)
        ties = sum(a == b for a, b in pairs)
        report.comparison.update(
            {"win_rate": (wins + 0.5 * ties) / len(pairs), "wins": wins, "ties": ties, "pairs": len(pairs)}
        )
