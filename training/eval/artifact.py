"""The ``eval_report`` artifact: ``report.json``, ``verdict.json``, ``REPORT.md`` and ``plots/*.png``.

Run facts that differ between two evaluations of the same content (timings, the time of day)
go into the artifact index metadata, which is not part of the hash.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from catalog.artifacts import ArtifactRef, open_artifact, publish
from catalog.verdict import Verdict
from training.eval.report import EvalReport

KIND = "eval_report"
REPORT_JSON = "report.json"
VERDICT_JSON = "verdict.json"
REPORT_MD = "REPORT.md"
PLOTS_DIR = "plots"


def publish_eval_report(
    report: EvalReport,
    verdict: Verdict,
    *,
    root: str | Path | None = None,
    dest: str | Path | None = None,
    plots: bool = True,
) -> ArtifactRef:
    """Write the report, the verdict, the Markdown and the plots as one ``eval_report`` artifact.

    Args:
        report: the evaluation.
        verdict: the gate verdict on it.
        root: publish under ``root/eval_report/<sha256[:16]>``.
        dest: publish at exactly this path (exactly one of ``root`` and ``dest``).
        plots: draw the PNG plots (matplotlib).

    Returns:
        The published artifact; ``ref.path / "REPORT.md"`` is the human-readable report.
    """
    with publish(KIND, root=root, dest=dest) as st:
        names: list[str] = []
        if plots:
            # Deferred: matplotlib, which only drawing the plots needs.
            from training.eval.plots import plot_report

            names = [
                p.relative_to(st.path).as_posix() for p in plot_report(report, verdict, st.path / PLOTS_DIR)
            ]
        (st.path / REPORT_JSON).write_text(
            json.dumps(report.to_dict(), indent=2, sort_keys=True, allow_nan=False)
        )
        (st.path / VERDICT_JSON).write_text(
            json.dumps(verdict.to_dict(), indent=2, sort_keys=True, allow_nan=False)
        )
        (st.path / REPORT_MD).write_text(
            report.to_markdown(verdict_markdown=verdict.to_markdown(), plots=names)
        )
        st.metadata.update(
            {
                "passed": verdict.passed,
                "candidate_sha256": report.candidate.sha256,
                "champion_sha256": report.champion.sha256 if report.champion else None,
                "seconds": report.timings,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        )
    assert st.ref is not None
    return st.ref


def read_eval_report(path_or_ref: str | Path | ArtifactRef) -> tuple[EvalReport, Verdict]:
    """Read (and hash-verify) an ``eval_report`` artifact back into its report and verdict."""
    path = path_or_ref.path if isinstance(path_or_ref, ArtifactRef) else Path(path_or_ref)
    ref = open_artifact(path, kind=KIND)
    report = EvalReport.from_dict(json.loads((ref.path / REPORT_JSON).read_text()))
    verdict = Verdict.from_dict(json.loads((ref.path / VERDICT_JSON).read_text()))
    return report, verdict
