"""``maintenance/gc``: the retention rules (``gc.*``) applied to the stack on a schedule.

Removes the artifacts, checkpoints and cache entries that no registry version, alias, deployment or
kept night references, prunes registry versions beyond ``gc.keep_versions``, and rotates the
services' logs (:func:`nightshift.upkeep.run_gc`). ``nightshift gc`` does the same by hand.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.common import flow_config
from nightshift.upkeep import run_gc


@flow(name="maintenance", log_prints=True)
def gc(
    preset: str = "small", overrides: dict[str, Any] | None = None, dry_run: bool = False
) -> dict[str, Any]:
    """Apply the gc rules of ``preset`` (with ``overrides``); ``dry_run`` only lists what would go.

    Returns:
        What was removed: artifacts, directories, registry versions, logged models, bytes freed.
    """
    cfg = flow_config(preset, overrides)
    result = run_gc(cfg, dry_run=dry_run)
    lines = [f"# {result.summary()}", "", "| what | size | where |", "| --- | ---: | --- |"]
    lines += [
        f"| {a['kind']} `{a['sha256'][:16]}` | {a['bytes'] / 1e6:.1f} MB | {a['uri']} |"
        for a in result.artifacts
    ]
    lines += [f"| directory | {p['bytes'] / 1e6:.1f} MB | {p['path']} |" for p in result.paths]
    lines += [f"| registry version v{v} | | |" for v in result.versions]
    lines += ["", *(f"- {n}" for n in result.notes)]
    create_markdown_artifact(markdown="\n".join(lines), key="gc-report", description="What gc removed")
    print(result.summary())
    return result.to_dict()
