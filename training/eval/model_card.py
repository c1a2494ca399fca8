"""The model card of a registered version: model, data, training, RLHF, evaluation, lineage.

Everything on the card is read from records, never restated by hand: the ``model`` artifact
(``config.json`` and its index metadata), the catalog's lineage graph upstream of the artifact
(the runs that made it, with their configs, and the artifacts they read, down to the sources),
the registry version, and the evaluation report and gate verdict. Sections whose records are
missing say so instead of being left out, so a reader knows what is unknown.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from catalog.artifacts import ArtifactRef, open_artifact
from catalog.db import session_scope
from catalog.lineage import upstream_graph
from catalog.models import Artifact
from catalog.verdict import METRICS, fmt, label
from training.eval.report import EvalReport

if TYPE_CHECKING:
    from catalog.lineage import Lineage
    from catalog.registry import ModelVersionInfo
    from catalog.verdict import Verdict

RLHF_STAGES = ("sft", "reward", "ppo", "dpo", "grpo")
_LIMITATIONS = """\
- A small GPT trained by an automated nightly pipeline; it is a research and demonstration model,
  not a source of facts or advice.
- The safety probes match a blocklist and PII patterns: they catch explicit insults and personal
  data, not paraphrased harm, and the bias probes cover a handful of demographic axes in English.
- It reproduces the style and associations of its training data, which the Data section lists."""


def _model_section(ref: ArtifactRef) -> list[str]:
    cfg = json.loads((ref.path / "config.json").read_text())
    meta = ref.metadata
    rows = [
        ("layers", cfg.get("n_layer")),
        ("attention heads", cfg.get("n_head")),
        ("embedding width", cfg.get("n_embd")),
        ("context (tokens)", cfg.get("block_size")),
        ("vocabulary", cfg.get("vocab_size")),
        ("parameters", f"{meta['num_params']:,}" if "num_params" in meta else "unknown"),
        ("weights dtype", meta.get("dtype", "unknown")),
    ]
    lines = [
        "## Model",
        "",
        "GPT-2 architecture (pre-LayerNorm, learned positions, tied embeddings).",
        "",
        "| | |",
        "| --- | --- |",
    ]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return lines + [""]


def _lineage(catalog_url: str, sha256: str) -> Lineage | None:
    with session_scope(catalog_url) as s:
        row = s.scalars(select(Artifact).where(Artifact.kind == "model", Artifact.sha256 == sha256)).first()
        if row is None:
            return None
        graph = upstream_graph(s, row.id)
        # Touch what the card reads, so the rows are loaded before the session closes.
        for run in graph.runs:
            _ = (run.config, run.stage, run.status, run.started_at, run.ended_at, run.mlflow_run_id)
        return graph


def _data_section(ref: ArtifactRef, graph: Lineage | None) -> list[str]:
    lines = ["## Data", ""]
    if graph is None:
        lines.append("No lineage recorded in the catalog for this artifact; inputs from its metadata:")
        lines += [f"- {k}: `{ref.metadata[k]}`" for k in ("tokens", "tokenizer") if k in ref.metadata]
        return lines + [""]
    by_kind: dict[str, list[Any]] = {}
    for a in graph.artifacts:
        by_kind.setdefault(a.kind, []).append(a)
    for a in by_kind.get("corpus", []):
        m = a.meta or {}
        facts = []
        if "documents_kept" in m:
            facts.append(f"{m['documents_kept']:,} documents kept of {m.get('documents_in', 0):,} read")
        if "bytes_out" in m:
            facts.append(f"{m['bytes_out']:,} bytes after cleaning")
        known = f": {', '.join(facts)}" if facts else ""
        lines.append(
            f"- corpus `{a.sha256[:16]}`{known} (cleaned, deduplicated and filtered; see its DATACARD.md)"
        )
    for a in by_kind.get("tokens", []):
        n = (a.meta or {}).get("tokens")
        lines.append(
            f"- tokens `{a.sha256[:16]}`" + (f": {n:,} tokens (train + val)" if isinstance(n, int) else "")
        )
    for a in by_kind.get("tokenizer", []):
        lines.append(f"- tokenizer `{a.sha256[:16]}`: byte-level BPE")
    if graph.sources:
        shown = ", ".join(f"`{s.uri}`" for s in graph.sources[:5])
        more = f" and {len(graph.sources) - 5} more" if len(graph.sources) > 5 else ""
        lines.append(f"- {len(graph.sources)} source item(s): {shown}{more}")
    if len(lines) == 2:
        lines.append("No data artifacts upstream of this model in the catalog.")
    return lines + [""]


def _config_of(run: Any, *keys: str) -> dict[str, Any]:
    cfg = run.config or {}
    out: dict[str, Any] = {}
    for k in keys:
        section, _, field = k.partition(".")
        v = cfg.get(section, {}).get(field) if field else cfg.get(section)
        if v is not None:
            out[k] = v
    return out


def _training_section(ref: ArtifactRef, graph: Lineage | None) -> list[str]:
    lines = ["## Training", ""]
    metrics = ref.metadata.get("metrics", {})
    runs = [r for r in graph.runs if r.stage == "pretrain"] if graph else []
    for r in runs:
        cfg = _config_of(r, "train.max_steps", "train.batch_size", "train.lr", "train.num_workers", "seed")
        settings = ", ".join(f"{k} {v}" for k, v in cfg.items())
        tail = f": {settings}" if settings else ""
        lines.append(f"- pretrain run `{r.id[:8]}` ({r.status}, MLflow `{r.mlflow_run_id}`){tail}")
    if metrics:
        keep = ("steps", "tokens_seen", "train_loss", "val_loss", "val_ppl", "unigram_entropy")
        shown = ", ".join(f"{k} {metrics[k]:.4g}" for k in keep if isinstance(metrics.get(k), int | float))
        lines.append(f"- final metrics: {shown}")
    if len(lines) == 2:
        lines.append("No pretraining run or metrics recorded for this artifact.")
    return lines + [""]


def _rlhf_section(graph: Lineage | None) -> list[str]:
    lines = ["## RLHF", ""]
    runs = [r for r in graph.runs if r.stage in RLHF_STAGES] if graph else []
    if not runs:
        lines.append(
            "None: no SFT, reward-model, PPO, DPO or GRPO run is upstream of this model (a pretrained model)."
            if graph
            else "Unknown: no lineage recorded."
        )
    for r in runs:
        lines.append(f"- {r.stage} run `{r.id[:8]}` ({r.status}, MLflow `{r.mlflow_run_id}`)")
    return lines + [""]


def _eval_section(report: EvalReport | None, verdict: Verdict | None) -> list[str]:
    lines = ["## Evaluation", ""]
    if report is None:
        return lines + ["Not evaluated yet.", ""]
    has_champion = report.champion is not None
    lines.append(
        f"Against champion `{(report.champion.sha256 or '')[:12]}`."
        if has_champion
        else "No champion to compare with."
    )
    lines += [
        "",
        "| metric | this model | champion |" if has_champion else "| metric | this model |",
        "| --- | ---: | ---: |" if has_champion else "| --- | ---: |",
    ]
    for m in METRICS:
        v = report.metric("candidate", m)
        if v is None:
            continue
        row = f"| {label(m)} | {fmt(m, v)} |"
        lines.append(row + (f" {fmt(m, report.metric('champion', m))} |" if has_champion else ""))
    if verdict is not None:
        lines += ["", f"Gates: **{verdict.summary()}**"]
    return lines + [""]


def _lineage_section(graph: Lineage | None) -> list[str]:
    lines = ["## Lineage", ""]
    if graph is None:
        return lines + ["Not recorded in the catalog.", ""]
    lines += [
        "Runs that made this model, nearest first:",
        "",
        "| stage | run | status | started | MLflow run |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in graph.runs:
        started = r.started_at.strftime("%Y-%m-%d %H:%M UTC") if r.started_at else ""
        mlflow_id = f"`{r.mlflow_run_id}`" if r.mlflow_run_id else "—"
        lines.append(f"| {r.stage} | `{r.id[:8]}` | {r.status} | {started} | {mlflow_id} |")
    lines += ["", "Artifacts upstream:", "", "| kind | sha256 | location |", "| --- | --- | --- |"]
    for a in graph.artifacts[:30]:
        lines.append(f"| {a.kind} | `{a.sha256[:16]}` | `{a.uri}` |")
    if len(graph.artifacts) > 30:
        lines.append(f"| … | {len(graph.artifacts) - 30} more | |")
    return lines + [""]


def model_card(
    model: ArtifactRef | str | Path,
    *,
    catalog_url: str | None = None,
    version: ModelVersionInfo | None = None,
    report: EvalReport | None = None,
    verdict: Verdict | None = None,
) -> str:
    """The Markdown model card of a ``model`` artifact (and of its registry version, when given).

    Args:
        model: the ``model`` artifact (verified).
        catalog_url: the catalog to read lineage from (None: the card says lineage is unknown).
        version: the registry version the card is for.
        report: the evaluation of this model (as the candidate).
        verdict: the gate verdict on that evaluation.
    """
    ref = open_artifact(model.path if isinstance(model, ArtifactRef) else Path(model), kind="model")
    graph = _lineage(catalog_url, ref.sha256) if catalog_url else None
    title = f"{version.name} v{version.version}" if version else f"model {ref.sha256[:12]}"
    lines = [f"# Model card: {title}", ""]
    if version is not None:
        aliases = ", ".join(f"`{a}`" for a in version.aliases) or "none"
        lines += [f"- registry: `{version.uri}` (aliases: {aliases}); logged model `{version.source}`"]
        if version.previous_champion:
            lines.append(f"- previous champion: v{version.previous_champion}")
    lines += [f"- model artifact: `{ref.sha256}`", ""]
    lines += _model_section(ref) + _data_section(ref, graph) + _training_section(ref, graph)
    lines += _rlhf_section(graph) + _eval_section(report, verdict) + _lineage_section(graph)
    lines += ["## Intended use and limitations", "", _LIMITATIONS, ""]
    return "\n".join(lines)
