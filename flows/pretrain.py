"""``pretrain/nightly``: the nightly programme, ingest → tokenize → pretrain → deploy."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.common import (
    flow_config,
    flow_run_id,
    prefect_flow_run_url,
    publish_summary,
    samples_markdown,
    tracker_for,
)
from flows.tasks import deploy_task, ingest_task, pretrain_task, tokenize_task


@flow(name="pretrain", log_prints=True)
def pretrain(preset: str = "small", overrides: dict[str, Any] | None = None) -> dict[str, str]:
    """Run the whole chain on a preset.

    Args:
        preset: a config preset (``tiny``, ``small``, ``gpt2-124m``) or a path to a YAML file.
        overrides: dotted config overrides, e.g. ``{"data.vocab_size": 4096}``.

    Returns:
        The content hashes of the artifacts the run produced, by kind.
    """
    cfg = flow_config(preset, overrides)
    tracker = tracker_for(cfg)
    with tracker.pipeline(
        "pretrain", config=cfg.to_dict(), prefect_flow_run_id=flow_run_id(), tags={"preset": cfg.preset}
    ) as pipeline:
        corpus = ingest_task(cfg, pipeline)
        create_markdown_artifact(markdown=corpus.datacard, key="data-card", description="Corpus data card")
        tokens = tokenize_task(cfg, pipeline, corpus)
        model = pretrain_task(cfg, pipeline, tokens)
        create_markdown_artifact(
            markdown=samples_markdown(model.samples), key="pretrain-samples", description="Samples"
        )
        deployed = None
        if cfg.serve.deploy_stage:
            deployed = deploy_task(
                cfg, pipeline, model.model, created_by=prefect_flow_run_url(cfg) or "pretrain"
            )
        m, mm = corpus.manifest, model.metrics
        rows = [
            (
                "ingest",
                pipeline.stage_url("ingest"),
                f"corpus `{corpus.artifact.sha256[:16]}`: {m['documents_kept']} of {m['documents_in']} "
                f"documents kept, {len(m['quarantined'])} quarantined",
            ),
            (
                "tokenize",
                pipeline.stage_url("tokenize"),
                f"tokens `{tokens.tokens.sha256[:16]}`: {tokens.stats['tokens']['train']:,} train / "
                f"{tokens.stats['tokens']['val']:,} val tokens",
            ),
            (
                "pretrain",
                pipeline.stage_url("pretrain"),
                f"model `{model.model.sha256[:16]}`: val loss {mm.get('val_loss', float('nan')):.3f} "
                f"(unigram entropy {mm['unigram_entropy']:.3f}), "
                f"{mm.get('tokens_per_s', 0):,.0f} tokens/s",
            ),
        ]
        if deployed is not None:
            rows.append(
                (
                    "deploy",
                    pipeline.stage_url("deploy"),
                    f"deployment {deployed.deployment_id}: {deployed.endpoint}/v1 serves model "
                    f"`{deployed.model_sha256[:16]}`",
                )
            )
        publish_summary("pretrain-summary", f"pretrain/nightly — preset {cfg.preset}", pipeline, rows)
    return {
        "corpus": corpus.artifact.sha256,
        "tokenizer": tokens.tokenizer.sha256,
        "tokens": tokens.tokens.sha256,
        "model": model.model.sha256,
    }
