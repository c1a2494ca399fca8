"""``nightshift sft | reward | ppo | dpo | grpo``: the RLHF stages without an orchestrator."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence

from core.config import load_config
from nightshift.tracked import tracked_stage


def cmd_rlhf(args: argparse.Namespace, extra: Sequence[str]) -> int:
    # Deferred: loads torch, which `nightshift --help` and the other commands do without.
    from training.rlhf import stages

    cfg = load_config(args.preset, list(extra))
    with tracked_stage(cfg, args.stage, args.track) as run:
        if args.stage == "sft":
            res = stages.sft_stage(cfg, run, args.model, tokens=args.tokens, out=args.out)
        elif args.stage == "reward":
            res = stages.reward_stage(cfg, run, args.model, preferences=args.preferences, out=args.out)
        elif args.stage == "ppo":
            if not args.reward_model:
                raise SystemExit(
                    "error: ppo needs --reward-model (a reward_model artifact from `nightshift reward`)"
                )
            res = stages.ppo_stage(cfg, run, args.model, args.reward_model, out=args.out)
        elif args.stage == "dpo":
            res = stages.dpo_stage(cfg, run, args.model, preferences=args.preferences, out=args.out)
        else:
            res = stages.grpo_stage(cfg, run, args.model, reward_model=args.reward_model, out=args.out)
    print(
        json.dumps(
            {
                "artifact": str(res.model.path),
                "sha256": res.model.sha256,
                "preferences": str(res.preferences.path) if res.preferences else None,
                "mlflow_model": res.model_uri,
                "metrics": {k: v for k, v in res.metrics.items() if isinstance(v, int | float)},
            },
            indent=2,
        )
    )
    return 0


def register(verb: Callable[..., argparse.ArgumentParser]) -> None:
    helps = {
        "sft": "supervised fine-tuning on the task demonstrations (loss on reply tokens only)",
        "reward": "train the reward model on this run's preference snapshot (tasks, JSONL, feedback)",
        "ppo": "PPO against a reward model, from an SFT policy",
        "dpo": "DPO on the preference snapshot, against the SFT policy",
        "grpo": "GRPO on the verifiable tasks (group-relative advantages, no critic)",
    }
    for stage, text in helps.items():
        p = verb(stage, cmd_rlhf, text)
        p.set_defaults(stage=stage)
        p.add_argument("--model", required=True, help="the starting model artifact (policy or backbone)")
        p.add_argument("--out", help="write the output artifact here (default: under tracking.artifact_root)")
        p.add_argument("--no-track", dest="track", action="store_false", help="do not log to MLflow/catalog")
        if stage == "sft":
            p.add_argument(
                "--tokens", help="a tokens artifact, for rlhf.sft.ptx_coef (pretraining data mixed in)"
            )
        if stage in ("reward", "dpo"):
            p.add_argument("--preferences", help="a preferences artifact (default: build a new snapshot)")
        if stage in ("ppo", "grpo"):
            p.add_argument(
                "--reward-model", help="a reward_model artifact (grpo: optional, tasks score otherwise)"
            )
