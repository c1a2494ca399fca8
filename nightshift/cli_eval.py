"""``nightshift evaluate``: evaluate a model artifact, apply the gates, print the report and the verdict."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from core.config import load_config
from nightshift.tracked import tracked_stage


def cmd_evaluate(args: argparse.Namespace, extra: Sequence[str]) -> int:
    """Evaluate a model artifact against another (or the registry's champion) and print the verdict."""
    # Deferred: they load torch, which every other command of the console script does without.
    from release.promotion import champion_artifact, registry_for
    from training.eval.stages import evaluate_stage

    cfg = load_config(args.preset, list(extra))
    champion = args.champion
    if champion is None and args.against_champion:
        registry = registry_for(cfg)
        champ, path = champion_artifact(cfg, registry)
        if champ is None:
            raise SystemExit(
                f"error: {registry.name} has no champion yet; pass --champion DIR or drop --against-champion"
            )
        champion = str(path)
    with tracked_stage(cfg, "evaluate", args.track) as run:
        report, verdict = evaluate_stage(
            cfg, run, args.model, champion=champion, tokens=args.tokens, out=args.out
        )
    print((report.path / "REPORT.md").read_text())
    print(f"\n{verdict.summary()}\nreport: {report.path}")
    return 0 if verdict.passed else 3


def register(verb: Callable[..., argparse.ArgumentParser]) -> None:
    p = verb(
        "evaluate", cmd_evaluate, "evaluate a model artifact and apply the gates (exit 3 when a gate fails)"
    )
    p.add_argument("--model", required=True, help="the candidate model artifact directory")
    p.add_argument("--champion", help="a model artifact directory to compare against")
    p.add_argument("--against-champion", action="store_true", help="compare against the registry's champion")
    p.add_argument("--tokens", help="a tokens artifact for held-out perplexity")
    p.add_argument(
        "--out", help="write the eval_report artifact here (default: under tracking.artifact_root)"
    )
    p.add_argument("--no-track", dest="track", action="store_false", help="do not log to MLflow/catalog")
