"""The evaluation report: candidate and champion measured on the same inputs, as JSON and Markdown.

:class:`EvalReport` is plain data (it round-trips through :meth:`EvalReport.to_dict` /
:meth:`EvalReport.from_dict`), so gates can be re-applied to a stored report and the dashboard
can read it without torch. Metric names are flat strings (``perplexity``,
``task_accuracy.add``); :data:`METRICS` says how to label each and which direction is better.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from catalog.verdict import METRICS, fmt, label

HEADLINE = (
    "perplexity",
    "perplexity_vs_unigram",
    "bits_per_byte",
    "task_accuracy",
    "harmful_refusal_rate",
    "over_refusal_rate",
    "safety_flag_rate",
    "degenerate_rate",
    "bias_gap",
    "repetition_rate",
    "distinct_2",
    "kl_to_reference",
    "reward_mean",
)


def finite_or_none(d: dict[str, Any]) -> dict[str, Any]:
    """A copy with NaN and infinities as None, so the JSON is strict (no ``NaN`` tokens)."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    return clean(d)


@dataclass
class ModelResult:
    """Everything measured for one model."""

    role: str  # "candidate" or "champion"
    sha256: str | None  # the model artifact, when evaluated from one
    metrics: dict[str, float | None] = field(default_factory=dict)
    tasks: dict[str, dict[str, float]] = field(default_factory=dict)  # task -> correct, total, accuracy
    task_items: list[dict[str, Any]] = field(default_factory=list)
    safety: dict[str, Any] = field(default_factory=dict)  # per_category, flagged examples
    bias: dict[str, Any] = field(default_factory=dict)  # per_axis, signed_per_axis, pairs
    window_nll: list[float] = field(default_factory=list)  # held-out loss per window (plots, intervals)
    rewards: list[float] = field(default_factory=list)  # one per held-out sample (plots, win rate)
    # Per-item scores behind each rate and mean (metric -> one value per item, the same items in the
    # same order for every model): what the gates' intervals are computed from.
    items: dict[str, list[float]] = field(default_factory=dict)
    probes: dict[str, Any] = field(default_factory=dict)  # per set: per-category rates, examples

    @property
    def name(self) -> str:
        return f"{self.role} {self.sha256[:12]}" if self.sha256 else self.role


@dataclass
class SampleRow:
    """One row of the sample-generation table."""

    prompt: str
    candidate: str
    champion: str | None = None


@dataclass
class EvalReport:
    """Candidate (and champion) results on the same held-out text, prompts, tasks and probes."""

    candidate: ModelResult
    champion: ModelResult | None = None
    comparison: dict[str, float | None] = field(default_factory=dict)  # win_rate, wins, ties, pairs
    comparison_items: dict[str, list[float]] = field(default_factory=dict)  # win: 1, 0.5 or 0 per pair
    samples: list[SampleRow] = field(default_factory=list)
    same_tokenizer: bool | None = None  # None without a champion
    heldout: dict[str, Any] = field(default_factory=dict)  # source, documents, bytes
    settings: dict[str, Any] = field(default_factory=dict)  # the EvalConfig used, and the seed
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per section; not in to_dict()

    def metric(self, role: str, name: str) -> float | None:
        """A metric of ``"candidate"`` or ``"champion"``; None when absent or not measured."""
        res = self.candidate if role == "candidate" else self.champion
        if res is None:
            return None
        v = res.metrics.get(name)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else v

    def flat_metrics(self) -> dict[str, float]:
        """``candidate.perplexity``, ``champion.task_accuracy``, ``win_rate``, …: every finite number."""
        out: dict[str, float] = {}
        for res in (self.candidate, self.champion):
            if res is None:
                continue
            for k, v in res.metrics.items():
                if v is not None and math.isfinite(v):
                    out[f"{res.role}.{k}"] = float(v)
        for k, v in self.comparison.items():
            if v is not None and math.isfinite(v):
                out[k] = float(v)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready content (strict JSON: NaN becomes null); timings are left out (not content)."""
        d = asdict(self)
        d.pop("timings")
        d["format"] = "nightshift.eval_report/2"
        return finite_or_none(d)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalReport:
        """Rebuild a report written by :meth:`to_dict`."""
        fmt_ = d.get("format")
        if fmt_ not in ("nightshift.eval_report/1", "nightshift.eval_report/2"):
            raise ValueError(f"not a nightshift evaluation report (format {fmt_!r})")
        return cls(
            candidate=ModelResult(**d["candidate"]),
            champion=ModelResult(**d["champion"]) if d.get("champion") else None,
            comparison=d.get("comparison", {}),
            comparison_items=d.get("comparison_items", {}),
            samples=[SampleRow(**s) for s in d.get("samples", [])],
            same_tokenizer=d.get("same_tokenizer"),
            heldout=d.get("heldout", {}),
            settings=d.get("settings", {}),
            notes=list(d.get("notes", [])),
        )

    # --- Markdown -----------------------------------------------------------------------------

    def to_markdown(self, *, verdict_markdown: str | None = None, plots: list[str] | None = None) -> str:
        """The human-readable report; ``plots`` are relative image paths to embed."""
        c, h = self.candidate, self.champion
        lines = ["# Evaluation report", ""]
        if h is not None:
            lines.append(
                f"Candidate `{_short(c.sha256)}` against champion `{_short(h.sha256)}`, on the same "
                "held-out text, prompts, seeds, tasks and probes."
            )
        else:
            lines.append(f"Candidate `{_short(c.sha256)}`. No champion yet: nothing to compare against.")
        lines.append("")
        if verdict_markdown:
            lines += [verdict_markdown.strip(), ""]
        lines += ["## Metrics", "", *self._metric_table(), ""]
        if self.heldout:
            lines.append(
                f"Held-out text: {self.heldout.get('documents', 0)} documents, "
                f"{self.heldout.get('bytes', 0):,} bytes from `{self.heldout.get('source', '?')}`."
            )
            if "unigram_perplexity" in self.heldout:
                lines.append(
                    f"A unigram model fitted on the train split (no context at all) has perplexity "
                    f"{self.heldout['unigram_perplexity']:.2f} on the same tokens."
                )
            if self.same_tokenizer is False:
                lines.append("The models use different tokenizers: compare bits per byte, not perplexity.")
            lines.append("")
        if "win_rate" in self.comparison and self.comparison["win_rate"] is not None:
            cmp_ = self.comparison
            lines += [
                "## Reward-model win rate",
                "",
                f"The candidate's reply scored higher than the champion's on {cmp_['win_rate']:.1%} "
                f"of {int(cmp_.get('pairs') or 0)} paired samples "
                f"(ties count half; {int(cmp_.get('ties') or 0)} ties).",
                "",
            ]
        lines += self._tasks_md() + self._safety_md() + self._bias_md() + self._samples_md()
        if plots:
            lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
        if self.notes:
            lines += ["## Notes", ""] + [f"- {n}" for n in self.notes] + [""]
        return "\n".join(lines).rstrip() + "\n"

    def _metric_table(self) -> list[str]:
        h = self.champion
        names = [
            m
            for m in METRICS
            if self.candidate.metrics.get(m) is not None or (h and h.metrics.get(m) is not None)
        ]
        if h is None:
            rows = ["| metric | candidate | better when |", "| --- | ---: | :---: |"]
            for m in names:
                rows.append(f"| {label(m)} | {fmt(m, self.metric('candidate', m))} | {_arrow(m)} |")
            return rows
        rows = [
            "| metric | candidate | champion | change | better when |",
            "| --- | ---: | ---: | ---: | :---: |",
        ]
        for m in names:
            a, b = self.metric("candidate", m), self.metric("champion", m)
            delta = "—" if a is None or b is None else f"{a - b:+.4g}"
            rows.append(f"| {label(m)} | {fmt(m, a)} | {fmt(m, b)} | {delta} | {_arrow(m)} |")
        return rows

    def _tasks_md(self) -> list[str]:
        c, h = self.candidate, self.champion
        if not c.tasks:
            return []
        lines = ["## Tasks", "", "| task | items | candidate | champion |", "| --- | ---: | ---: | ---: |"]
        for task, counts in sorted(c.tasks.items()):
            other = h.tasks.get(task, {}).get("accuracy") if h else None
            lines.append(
                f"| {task} | {int(counts['total'])} | {fmt('task_accuracy', counts['accuracy'])} | "
                f"{fmt('task_accuracy', other)} |"
            )
        if c.task_items:
            lines += [
                "",
                "Candidate replies (first items):",
                "",
                "| task | prompt | reply | correct |",
                "| --- | --- | --- | :---: |",
            ]
            for it in c.task_items[:8]:
                mark = "yes" if it.get("correct") else "no"
                lines.append(f"| {it['task']} | {_cell(it['prompt'])} | {_cell(it['reply'])} | {mark} |")
        return lines + [""]

    def _safety_md(self) -> list[str]:
        c, h = self.candidate, self.champion
        if not c.probes:
            return []
        titles = {
            "harmful": ("Harmful requests (held-out categories and phrasings): share refused", "higher"),
            "sensitive": ("Benign requests that look sensitive: share refused", "lower"),
            "ordinary": ("Ordinary prompts: share refused", "lower"),
            "provocation": ("Provocation: share of replies flagged toxic (classifier) or with PII", "lower"),
        }
        lines = ["## Behaviour probes", ""]
        for name, (title, better) in titles.items():
            mine = c.probes.get(name)
            if not mine:
                continue
            theirs = h.probes.get(name, {}) if h else {}
            lines += [f"**{title}** ({better} is better; {mine.get('items', 0)} replies)", ""]
            lines += ["| category | candidate | champion |", "| --- | ---: | ---: |"]
            for cat, rate in mine.get("per_category", {}).items():
                other = theirs.get("per_category", {}).get(cat) if theirs else None
                lines.append(f"| {cat} | {fmt('task_accuracy', rate)} | {fmt('task_accuracy', other)} |")
            examples = mine.get("examples", [])
            if examples:
                lines += ["", "| category | prompt | candidate reply | |", "| --- | --- | --- | --- |"]
                for e in examples[:6]:
                    why = e.get("why", "")
                    lines.append(f"| {e['category']} | {_cell(e['prompt'])} | {_cell(e['reply'])} | {why} |")
            lines.append("")
        return lines

    def _bias_md(self) -> list[str]:
        c, h = self.candidate, self.champion
        if not c.bias:
            return []
        lines = [
            "## Bias probes (counterfactual pairs)",
            "",
            "Mean |log p(attribute | term a) − log p(attribute | term b)| in nats; 0 is unbiased. "
            "Signed: positive means the attributes are likelier after the first term.",
            "",
            "| axis | candidate | champion | candidate signed |",
            "| --- | ---: | ---: | ---: |",
        ]
        for axis, gap in c.bias.get("per_axis", {}).items():
            other = h.bias.get("per_axis", {}).get(axis) if h else None
            signed = c.bias.get("signed_per_axis", {}).get(axis)
            lines.append(f"| {axis} | {gap:.3f} | {fmt('bias_gap', other)} | {fmt('bias_gap', signed)} |")
        pairs = c.bias.get("pairs", [])
        if pairs:
            lines += [
                "",
                "Largest candidate gaps:",
                "",
                "| axis | a | b | attribute | gap |",
                "| --- | --- | --- | --- | ---: |",
            ]
            for p in pairs[:5]:
                lines.append(f"| {p['axis']} | {p['a']} | {p['b']} | {p['attribute']} | {p['gap']:+.3f} |")
        return lines + [""]

    def _samples_md(self) -> list[str]:
        if not self.samples:
            return []
        has_champion = any(s.champion is not None for s in self.samples)
        head = "| prompt | candidate | champion |" if has_champion else "| prompt | candidate |"
        sep = "| --- | --- | --- |" if has_champion else "| --- | --- |"
        lines = ["## Sample generations", "", "Same prompt, same seed for both models.", "", head, sep]
        for s in self.samples:
            row = f"| {_cell(s.prompt) or '*(empty)*'} | {_cell(s.candidate)} |"
            if has_champion:
                row += f" {_cell(s.champion or '')} |"
            lines.append(row)
        return lines + [""]


def _short(sha: str | None) -> str:
    return sha[:12] if sha else "in memory"


def _arrow(metric: str) -> str:
    direction = METRICS.get(metric.partition(".")[0], ("", "none", ""))[1]
    return {"lower": "lower", "higher": "higher"}.get(direction, "")


def _cell(text: str, limit: int = 160) -> str:
    """Text safe inside a Markdown table cell: one line, pipes escaped, cut to ``limit`` characters."""
    one = " ".join(text.split())
    one = one if len(one) <= limit else one[: limit - 1] + "…"
    return one.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
