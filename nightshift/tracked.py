"""A CLI command's stage run: tracked in MLflow and the catalog, or a no-op with ``--no-track``.

Shared by the command modules (``cli``, ``cli_rlhf``, ``cli_serve``), so none of them imports another.
"""

from __future__ import annotations

import urllib.request

from catalog.untracked import NullStageRun


def tracked_stage(cfg, name: str, track: bool):
    """A stage run context: a standalone MLflow parent + child run, or a no-op when ``--no-track``."""
    # Deferred: MLflow takes seconds to import, and most commands never track a stage.
    from catalog.tracking import Tracker

    if not track:
        return NullStageRun()
    require_mlflow(cfg.tracking.mlflow_uri)
    tracker = Tracker(
        tracking_uri=cfg.tracking.mlflow_uri,
        experiment=cfg.tracking.experiment,
        catalog_url=cfg.tracking.catalog_url,
    )
    return tracker.standalone_stage(name, config=cfg.to_dict())


def require_mlflow(uri: str) -> None:
    if not uri.startswith(("http://", "https://")):
        return

    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5).read()
    except OSError as e:
        raise SystemExit(
            f"error: MLflow at {uri} is not reachable ({e}); start the local stack with `nightshift up`, "
            "point --tracking.mlflow_uri elsewhere, or pass --no-track"
        ) from None
