"""Every catalog read the dashboard makes, cached for a few seconds.

Nothing here builds SQL from text a user typed: each query is a SQLAlchemy 2 ``select()`` whose
values are bound parameters, and the results are frozen records (:mod:`dashboard.records`) that
``st.cache_data`` can keep between script runs. Writers call :func:`clear_caches`.
"""

from dashboard.queries.cache import clear_caches
from dashboard.queries.runs import (
    artifact_runs,
    artifacts_by_id,
    artifacts_by_sha,
    catalog_problem,
    collapsed,
    downstream,
    lineage_slice,
    model_written_by,
    pipeline_names,
    pipeline_runs,
    reports_for_model,
    run_info,
    stage_names,
    stage_runs,
    trace,
)
from dashboard.queries.served import (
    completions_by_id,
    completions_last_hours,
    deployments,
    feedback_totals,
    label_pairs,
    labels_in_snapshots,
    recent_completions,
    recent_feedback,
    snapshot_labels,
    usage,
)

__all__ = [
    "artifact_runs",
    "artifacts_by_id",
    "artifacts_by_sha",
    "catalog_problem",
    "clear_caches",
    "collapsed",
    "completions_last_hours",
    "completions_by_id",
    "deployments",
    "downstream",
    "feedback_totals",
    "label_pairs",
    "labels_in_snapshots",
    "lineage_slice",
    "model_written_by",
    "pipeline_names",
    "pipeline_runs",
    "recent_completions",
    "recent_feedback",
    "reports_for_model",
    "run_info",
    "snapshot_labels",
    "stage_names",
    "stage_runs",
    "trace",
    "usage",
]
