"""``ingest/adhoc``: ingest given sources into a corpus artifact, outside the nightly chain."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.common import flow_config, pipeline_run, publish_summary
from flows.tasks import ingest_task


@flow(name="ingest", log_prints=True)
def ingest(sources: list[str], preset: str = "small", overrides: dict[str, Any] | None = None) -> str:
    """Ingest ``sources`` (paths, globs, archives, JSONL/Parquet, fsspec URLs) with a preset's data config.

    Returns:
        The corpus artifact's content hash.
    """
    cfg = flow_config(preset, overrides)
    with pipeline_run(cfg, "ingest") as pipeline:
        corpus = ingest_task(cfg, pipeline, sources=sources)
        create_markdown_artifact(markdown=corpus.datacard, key="data-card", description="Corpus data card")
        m = corpus.manifest
        publish_summary(
            "ingest-summary",
            "ingest/adhoc",
            pipeline,
            [
                (
                    "ingest",
                    pipeline.stage_url("ingest"),
                    f"corpus `{corpus.artifact.sha256[:16]}` at {corpus.artifact.path}: "
                    f"{m['documents_kept']} of {m['documents_in']} documents kept",
                )
            ],
        )
    return corpus.artifact.sha256
