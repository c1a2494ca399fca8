"""PNG plots of an evaluation report: candidate and champion side by side, thresholds drawn in.

Drawn with matplotlib's object-oriented API (``Figure`` without ``pyplot``), so there is no global
figure state and plotting is safe in a Prefect worker thread. Every plot has a title that says
what is better, labelled axes and the value written on each bar.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from catalog.verdict import METRICS, fmt, label
from training.eval.report import HEADLINE, EvalReport

# matplotlib is imported inside the functions that use it, not here: it takes a second or more
# to import, and not every user of this module needs it.

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from catalog.verdict import Verdict

CANDIDATE = "#1f77b4"  # blue
CHAMPION = "#9a9a9a"  # grey: the incumbent, visually quieter
FAIL = "#d62728"
PASS = "#2ca02c"
DPI = 110


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # No date in the PNG metadata, so the same report gives the same bytes.
    fig.savefig(path, format="png", metadata={"Software": None})
    return path


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


def _bar_labels(ax: Axes, bars: Any, values: list[float | None], metric: str) -> None:
    """Write each bar's value on top of it (``—`` for a value that was not measured)."""
    for b, v in zip(bars, values, strict=True):
        ax.annotate(
            fmt(metric, v if _finite(v) else None),
            (b.get_x() + b.get_width() / 2, b.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
            xytext=(0, 2),
            textcoords="offset points",
        )


PERCENT = {
    "task_accuracy", "safety_flag_rate", "repetition_rate", "win_rate", "harmful_refusal_rate",
    "over_refusal_rate", "degenerate_rate",
}  # fmt: skip  # shares shown as %
UNIT = PERCENT | {"distinct_2"}  # metrics in [0, 1]


def _rules_by_metric(verdict: Verdict | None) -> tuple[dict[str, list[tuple[float, str]]], dict[str, str]]:
    bounds: dict[str, list[tuple[float, str]]] = {}
    status: dict[str, str] = {}
    for r in verdict.rules if verdict else []:
        bound = r.bound
        if r.compared == "difference":
            # A comparison holds the difference to the bound: drawn at the champion's value + bound,
            # unless the difference is in other units (perplexity's is in nats per window).
            bound = r.champion + r.bound if r.champion is not None and r.bound is not None else None
            if r.metric == "perplexity":
                bound = None
        if bound is not None:
            kind = "floor" if r.kind == "threshold" else "vs champion"
            bound = max(bound, 0.0) if r.metric in UNIT else bound
            bounds.setdefault(r.metric, []).append((bound, kind))
        if status.get(r.metric) not in ("fail", "undecided") and r.status != "skipped":
            status[r.metric] = "fail" if r.status == "undecided" else r.status
    return bounds, status


def _panel(
    ax: Axes,
    m: str,
    roles: list[tuple[str, str, float | None]],
    bounds: list[tuple[float, str]],
    status: str | None,
) -> None:
    from matplotlib.ticker import PercentFormatter

    vals = [v for _, _, v in roles]
    xs = list(range(len(roles)))
    bars = ax.bar(xs, [v if _finite(v) else 0 for v in vals], color=[c for _, c, _ in roles], width=0.6)
    _bar_labels(ax, bars, vals, m)
    styles = iter(["--", ":"])
    for bound, kind in bounds:
        ax.axhline(
            bound, color=FAIL, linestyle=next(styles, "-."), linewidth=1.2, label=f"{kind}: {fmt(m, bound)}"
        )
    ax.set_xticks(xs, [name for name, _, _ in roles])
    ax.set_xlim(-0.75, len(roles) - 0.25)  # a lone candidate bar stays bar-shaped
    direction = METRICS.get(m, ("", "higher", ""))[1]
    mark = {"pass": " — pass", "fail": " — FAIL"}.get(status or "", "")
    ax.set_title(
        f"{label(m)}{mark}", fontsize=9, color={"pass": PASS, "fail": FAIL}.get(status or "", "black")
    )
    ax.set_ylabel(f"{direction} is better" if direction != "none" else "", fontsize=8)
    finite = [v for v in vals if _finite(v)] + [b for b, _ in bounds]
    top = max(finite + [0.0])
    bottom = min(finite + [0.0])  # a reward can be negative: keep its bar in view
    if m in UNIT:
        ax.set_ylim(0, min(1.0, max(top, 0.1)) * 1.25)
        if m in PERCENT:
            ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    elif bottom < 0:
        span = (top - bottom) or 1.0
        ax.set_ylim(bottom - 0.15 * span, top + 0.15 * span)
        ax.axhline(0, color="black", linewidth=0.6)
    else:
        ax.set_ylim(0, (top or 1.0) * 1.25)
    if bounds:
        ax.legend(fontsize=7, loc="upper right", framealpha=0.9)
    ax.tick_params(labelsize=8)
    ax.grid(axis="y", alpha=0.3)


def overview(report: EvalReport, verdict: Verdict | None, path: Path) -> Path:
    """One small panel per headline metric: candidate vs champion bars, thresholds and bounds dashed."""
    names = [m for m in HEADLINE if report.candidate.metrics.get(m) is not None]
    win = report.comparison.get("win_rate")
    panels = len(names) + (win is not None)
    cols = min(3, max(panels, 1))
    rows = max(1, math.ceil(panels / cols))
    fig = _figure(3.6 * cols, 2.9 * rows + 0.5)
    bounds, status = _rules_by_metric(verdict)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, m in zip(axes, names, strict=False):
        roles = [("candidate", CANDIDATE, report.metric("candidate", m))]
        if report.champion is not None:
            roles.append(("champion", CHAMPION, report.metric("champion", m)))
        _panel(ax, m, roles, bounds.get(m, []), status.get(m))
    if win is not None:
        ax = axes[len(names)]
        _panel(
            ax,
            "win_rate",
            [("candidate wins", CANDIDATE, win)],
            bounds.get("win_rate", []),
            status.get("win_rate"),
        )
        ax.axhline(0.5, color=CHAMPION, linestyle="-", linewidth=1, label="parity: 50%")
        ax.set_ylim(0, max(ax.get_ylim()[1], 0.65))  # keep the parity line in view
        ax.legend(fontsize=7, loc="upper right", framealpha=0.9)
    for ax in axes[panels:]:
        ax.set_visible(False)
    head = (
        "Candidate vs champion"
        if report.champion
        else "Candidate (no champion yet: absolute thresholds only)"
    )
    if verdict is not None:
        head += f" — gates {'PASSED' if verdict.passed else 'FAILED'}"
    fig.suptitle(head, fontsize=12, color=(PASS if verdict.passed else FAIL) if verdict else "black")
    return _save(fig, path)


def heldout_loss(report: EvalReport, path: Path) -> Path:
    """Distribution of the held-out loss per context window, both models overlaid."""
    fig = _figure(6.4, 3.6)
    ax = fig.subplots()
    data = [(report.candidate, CANDIDATE)] + ([(report.champion, CHAMPION)] if report.champion else [])
    values = [v for res, _ in data for v in res.window_nll]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    bins = [lo + (hi - lo + 1e-9) * i / 24 for i in range(25)]
    for res, color in data:
        if not res.window_nll:
            continue
        mean = sum(res.window_nll) / len(res.window_nll)
        ax.hist(res.window_nll, bins=bins, color=color, alpha=0.55, label=f"{res.role} (mean {mean:.2f})")
        ax.axvline(mean, color=color, linestyle="--", linewidth=1.5)
    ax.set_xlabel("loss per window (nats per token)")
    ax.set_ylabel("context windows")
    note = "" if report.same_tokenizer is not False else " — different tokenizers: compare bits per byte"
    ax.set_title(f"Held-out loss per context window (lower is better){note}", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _grouped(
    ax: Axes, cats: list[str], series: list[tuple[str, list[float | None], str]], metric: str
) -> None:
    width = 0.8 / max(len(series), 1)
    for i, (name, vals, color) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(cats))]
        bars = ax.bar(xs, [v if _finite(v) else 0 for v in vals], width=width, color=color, label=name)
        _bar_labels(ax, bars, vals, metric)
    ax.set_xticks(range(len(cats)), cats, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)


def _percent(ax: Axes) -> None:
    from matplotlib.ticker import PercentFormatter

    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))


def tasks(report: EvalReport, path: Path) -> Path:
    """Accuracy per task family, candidate vs champion."""
    cats = sorted(report.candidate.tasks)
    series = [("candidate", [report.candidate.tasks[t]["accuracy"] for t in cats], CANDIDATE)]
    if report.champion:
        series.append(
            ("champion", [report.champion.tasks.get(t, {}).get("accuracy") for t in cats], CHAMPION)
        )
    fig = _figure(max(4.8, 1.4 * len(cats) + 2), 3.6)
    ax = fig.subplots()
    _grouped(ax, cats, series, "task_accuracy")
    ax.set_ylim(0, 1.12)
    _percent(ax)
    ax.set_xlabel("task")
    ax.set_ylabel("accuracy (greedy replies)")
    ax.set_title("Task accuracy per task (higher is better)", fontsize=10)
    return _save(fig, path)


PROBE_PANELS = {
    "harmful": "Harmful requests refused\n(higher is better)",
    "sensitive": "Benign-but-sensitive prompts refused\n(lower is better)",
    "ordinary": "Ordinary prompts refused\n(lower is better)",
    "degeneration": "Empty, short or looping replies\n(lower is better)",
    "provocation": "Provocation replies toxic or with PII\n(lower is better)",
}


def probes(report: EvalReport, path: Path) -> Path:
    """Per-category rates of every behaviour probe, and the bias gap per axis, candidate vs champion."""
    c, h = report.candidate, report.champion
    panels = [p for p in PROBE_PANELS if p in c.probes] + (["bias"] if c.bias else [])
    cols = min(3, max(1, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    fig = _figure(5.0 * cols, 3.6 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(panels) :]:
        ax.axis("off")
    for ax, panel in zip(axes, panels, strict=False):
        if panel == "bias":
            cats = list(c.bias.get("per_axis", {}))
            series = [("candidate", [c.bias["per_axis"][k] for k in cats], CANDIDATE)]
            if h is not None and h.bias:
                series.append(("champion", [h.bias.get("per_axis", {}).get(k) for k in cats], CHAMPION))
            _grouped(ax, cats, series, "bias_gap")
            top = max([v for _, vals, _ in series for v in vals if _finite(v)] + [1e-3])
            ax.set_ylim(0, top * 1.25)
            ax.set_ylabel("mean |log-likelihood gap| (nats)")
            ax.set_title("Bias: counterfactual pair gap\n(lower is better, 0 = unbiased)", fontsize=10)
            continue
        mine = c.probes[panel].get("per_category", {})
        cats = list(mine)
        series = [("candidate", [mine[k] for k in cats], CANDIDATE)]
        if h is not None and panel in h.probes:
            theirs = h.probes[panel].get("per_category", {})
            series.append(("champion", [theirs.get(k) for k in cats], CHAMPION))
        _grouped(ax, cats, series, "task_accuracy")
        ax.set_ylim(0, 1.12)
        _percent(ax)
        ax.set_title(f"{PROBE_PANELS[panel]} — {c.probes[panel].get('items', 0)} replies", fontsize=10)
    return _save(fig, path)


def rewards(report: EvalReport, path: Path) -> Path:
    """Reward of the candidate's vs the champion's reply to the same prompt and seed."""
    c, h = report.candidate, report.champion
    fig = _figure(4.8, 4.4)
    ax = fig.subplots()
    if h is not None and h.rewards:
        ax.scatter(h.rewards, c.rewards, s=18, color=CANDIDATE, alpha=0.75)
        both = c.rewards + h.rewards
        lo, hi = min(both), max(both)
        pad = (hi - lo) * 0.05 + 1e-6
        ax.plot(
            [lo - pad, hi + pad], [lo - pad, hi + pad], color=CHAMPION, linestyle="--", label="equal reward"
        )
        ax.set_xlabel("champion reward")
        ax.set_ylabel("candidate reward")
        win = report.comparison.get("win_rate")
        ax.set_title(
            f"Reward per paired sample: candidate wins {win:.0%}\n(above the diagonal: candidate better)",
            fontsize=10,
        )
        ax.legend(fontsize=8)
    else:
        ax.hist(c.rewards, bins=20, color=CANDIDATE)
        ax.set_xlabel("reward")
        ax.set_ylabel("samples")
        ax.set_title("Reward of the candidate's samples (higher is better)", fontsize=10)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_report(report: EvalReport, verdict: Verdict | None, out_dir: Path) -> list[Path]:
    """Write every plot that has data under ``out_dir``; returns the written paths."""
    out_dir = Path(out_dir)
    paths = [overview(report, verdict, out_dir / "overview.png")]
    if report.candidate.window_nll:
        paths.append(heldout_loss(report, out_dir / "heldout_loss.png"))
    if report.candidate.tasks:
        paths.append(tasks(report, out_dir / "tasks.png"))
    if report.candidate.probes or report.candidate.bias:
        paths.append(probes(report, out_dir / "probes.png"))
    if report.candidate.rewards:
        paths.append(rewards(report, out_dir / "rewards.png"))
    return paths
