"""RLHF on verifiable tasks: SFT vs PPO, DPO and GRPO on held-out prompts, in one run from scratch.

One process, no downloads: a byte-level BPE tokenizer and a small GPT are trained here on the
instruction tasks of ``training/rlhf/tasks.py`` (copy, reverse, max, add, refuse). Then, in order:

a. SFT from random init on a few hundred demonstrations (``--sft-examples``): enough to learn the
   reply format and part of the tasks, leaving room for RL on the thousands of training prompts;
b. a reward model (SFT backbone + scalar head, Bradley-Terry) on the task preference pairs plus
   the SFT policy's own mistakes (two samples per prompt, labelled by the checker), with its
   accuracy on held-out pairs (prompts never trained on; goal >= 0.90) and on the SFT policy's
   mistakes on held-out prompts;
c. from the SFT policy, each against a frozen copy of it: PPO scored by the reward model (the
   InstructGPT recipe), PPO scored by the task checker (same algorithm, an exact reward), DPO on
   the same preference pairs, and GRPO scored by the task checker;
d. each policy, and the SFT policy, evaluated on the held-out prompts: task accuracy (greedy),
   mean task reward, reward-model score, and KL to the SFT reference (sampled replies);
e. rollout throughput of the SFT policy with the KV cache against recomputing the whole sequence
   at every step (same prompts, same seed, identical samples).

Ratios are against the SFT policy (b-d) and the recomputing rollout (e), measured in this run.
``python bench/rlhf.py [--layers 3] [--embd 96] [--threads 1] [--quick] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.model_config import ModelConfig  # noqa: E402
from core.rlhf_config import (  # noqa: E402
    DPOConfig,
    GRPOConfig,
    PolicyEvalConfig,
    PPOConfig,
    RewardConfig,
    SamplingConfig,
    SFTConfig,
)
from gpt.model import GPT  # noqa: E402
from gpt.tokenizer import train_tokenizer  # noqa: E402
from training.rlhf.dpo import train_dpo  # noqa: E402
from training.rlhf.evaluate import evaluate_policy  # noqa: E402
from training.rlhf.grpo import train_grpo  # noqa: E402
from training.rlhf.heads import scalar_model_from  # noqa: E402
from training.rlhf.onpolicy import policy_pairs  # noqa: E402
from training.rlhf.ppo import train_ppo  # noqa: E402
from training.rlhf.reward import reward_accuracy, train_reward  # noqa: E402
from training.rlhf.rollout import rollout  # noqa: E402
from training.rlhf.sequences import encode_prompt  # noqa: E402
from training.rlhf.sft import train_sft  # noqa: E402
from training.rlhf.tasks import FAMILIES, build_tasks  # noqa: E402


def every(n: int, name: str):
    """A log_metrics callback printing a few keys every ``n`` steps."""
    keys = ("loss", "reward", "accuracy", "kl", "heldout_accuracy", "margin", "clip_frac", "value_loss")

    def cb(metrics, step: int) -> None:
        if step % n == 0 or "heldout_accuracy" in metrics:
            shown = ", ".join(f"{k} {metrics[k]:.3f}" for k in keys if k in metrics)
            print(f"  {name} {step:4d}: {shown}", flush=True)

    return cb


def rollout_speed(policy: GPT, tok, prompts, new_tokens: int, repeats: int) -> dict[str, float]:
    """Reply tokens/s of one batched rollout with and without the KV cache (no stop token: full length)."""
    by_len: dict[int, list[list[int]]] = {}
    for ex in prompts:
        p = encode_prompt(tok, ex.messages())[0]
        by_len.setdefault(len(p), []).append(p)
    ids = max(by_len.values(), key=len)[:64]  # one length group is one batch: the shape of a rollout
    out: dict[str, float] = {"batch": len(ids), "prompt_tokens": len(ids[0]), "new_tokens": new_tokens}
    samples = {}
    for use_cache in (True, False):
        rollout(policy, ids[:2], max_new_tokens=4, stop_ids=(), pad_id=0, seed=0, use_cache=use_cache)  # warm
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            ro = rollout(
                policy, ids, max_new_tokens=new_tokens, stop_ids=(), pad_id=0, seed=7, use_cache=use_cache
            )
            best = min(best, time.perf_counter() - t0)
        samples[use_cache] = ro.ids
        out["tokens_per_s_cache" if use_cache else "tokens_per_s_recompute"] = ro.num_reply_tokens / best
    out["identical_samples"] = float(torch.equal(samples[True], samples[False]))
    out["speedup"] = out["tokens_per_s_cache"] / out["tokens_per_s_recompute"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--embd", type=int, default=96)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for small models)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-size", type=int, default=3000, help="RL prompts (and preference pairs)")
    ap.add_argument("--sft-examples", type=int, default=300, help="demonstrations SFT learns from")
    ap.add_argument("--eval-size", type=int, default=250)
    ap.add_argument("--sft-steps", type=int, default=120)
    ap.add_argument(
        "--policy-samples", type=int, default=2, help="SFT samples per prompt for on-policy pairs"
    )
    ap.add_argument("--rm-steps", type=int, default=1500)
    ap.add_argument("--ppo-iters", type=int, default=60)
    ap.add_argument("--dpo-steps", type=int, default=150)
    ap.add_argument("--grpo-iters", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="a smoke run: tiny model, few steps")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument(
        "--mlflow", metavar="URI", help="also log the figures as a run of experiment nightshift-bench"
    )
    args = ap.parse_args()
    if args.quick:
        args.layers, args.embd, args.heads, args.train_size, args.eval_size = 2, 32, 2, 400, 50
        args.sft_steps, args.rm_steps, args.ppo_iters, args.dpo_steps, args.grpo_iters = 100, 60, 5, 20, 5
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()

    families = tuple(FAMILIES)
    splits = build_tasks(
        families, train_size=args.train_size, eval_size=args.eval_size, seed=args.seed, wrong_per_example=3
    )
    texts = [f"{ex.prompt} {ex.answer} {' '.join(ex.wrong)}" for ex in splits.train]
    tok = train_tokenizer(texts * 2, vocab_size=512)
    cfg = ModelConfig(n_layer=args.layers, n_head=args.heads, n_embd=args.embd, block_size=64, vocab_size=512)
    print(
        f"tasks {', '.join(families)}: SFT on {args.sft_examples} demonstrations, RL on {len(splits.train)} "
        f"prompts, {len(splits.eval)} held-out prompts; model {args.layers}x{args.embd}, "
        f"{torch.get_num_threads()} thread(s)",
        flush=True,
    )
    timings: dict[str, float] = {}

    def timed(name: str, fn):
        t0 = time.perf_counter()
        out = fn()
        timings[name] = time.perf_counter() - t0
        return out

    # a. SFT on a few demonstrations: it learns the format and part of the tasks, leaving room for RL.
    sft = GPT(cfg)
    sft_cfg = SFTConfig(steps=args.sft_steps, batch_size=64, lr=3e-3, warmup_steps=50)
    demos = splits.sft_pairs()[: args.sft_examples]
    timed("sft", lambda: train_sft(sft, tok, demos, sft_cfg, log_metrics=every(50, "sft")))
    sft.eval()

    # b. Preferences: task pairs plus the SFT policy's own mistakes (labelled by the checker).
    onpolicy = timed(
        "policy_pairs", lambda: policy_pairs(sft, tok, splits.train, samples=args.policy_samples, seed=3)
    )
    prefs = splits.preference_pairs() + onpolicy
    random.Random(args.seed).shuffle(prefs)
    rm = scalar_model_from(sft)
    rm_cfg = RewardConfig(steps=args.rm_steps, batch_size=64, lr=1e-3, warmup_steps=50, eval_every=200)
    heldout_pairs = splits.eval_pairs()
    rm_res = timed(
        "reward",
        lambda: train_reward(rm, tok, prefs, rm_cfg, heldout=heldout_pairs, log_metrics=every(200, "reward")),
    )
    rm.eval()
    rm_by_family = {
        f: reward_accuracy(rm, tok, [p for p in heldout_pairs if p.source.endswith(f":{f}")])["accuracy"]
        for f in families
    }
    heldout_onpolicy = policy_pairs(sft, tok, splits.eval, samples=args.policy_samples, seed=4)
    rm_onpolicy = reward_accuracy(rm, tok, heldout_onpolicy)["accuracy"] if heldout_onpolicy else float("nan")

    # c. RL from the SFT policy, each against a frozen copy of it.
    sampling = SamplingConfig(max_new_tokens=16)
    policies: dict[str, GPT] = {"sft": sft}

    def run_ppo(reward: str, lr: float, kl: float) -> GPT:
        pi = copy.deepcopy(sft)
        value = copy.deepcopy(rm)  # the reward model's features, a fresh head (returns are normalised)
        torch.nn.init.zeros_(value.score_head.weight)
        torch.nn.init.zeros_(value.score_head.bias)
        for p in value.parameters():
            p.requires_grad_(True)
        ppo_cfg = PPOConfig(
            iterations=args.ppo_iters,
            rollout_batch=64,
            minibatch=32,
            epochs=2,
            lr=lr,
            kl_coef=kl,
            reward=reward,
        )
        train_ppo(
            pi, copy.deepcopy(sft), value, tok, splits.train, ppo_cfg, sampling,
            reward_model=rm, seed=1, log_metrics=every(20, f"ppo-{reward}"),
        )  # fmt: skip
        return pi

    policies["ppo"] = timed("ppo", lambda: run_ppo("reward_model", lr=3e-5, kl=0.2))
    policies["ppo-task"] = timed("ppo-task", lambda: run_ppo("task", lr=1e-4, kl=0.05))
    dpo = copy.deepcopy(sft)
    dpo_cfg = DPOConfig(steps=args.dpo_steps, batch_size=64, lr=1e-4, beta=0.1)
    timed(
        "dpo", lambda: train_dpo(dpo, copy.deepcopy(sft), tok, prefs, dpo_cfg, log_metrics=every(50, "dpo"))
    )
    policies["dpo"] = dpo
    grpo = copy.deepcopy(sft)
    grpo_cfg = GRPOConfig(
        iterations=args.grpo_iters, prompts_per_step=16, group_size=8, minibatch=64, lr=3e-4
    )
    timed(
        "grpo",
        lambda: train_grpo(
            grpo, copy.deepcopy(sft), tok, splits.train, grpo_cfg, sampling,
            seed=2, log_metrics=every(20, "grpo"),
        ),
    )  # fmt: skip
    policies["grpo"] = grpo

    eval_cfg = PolicyEvalConfig(max_new_tokens=16, kl_samples=2, batch_size=128)
    results = {
        name: timed(
            f"eval_{name}", lambda p=p: evaluate_policy(p, tok, splits.eval, sft, rm, cfg=eval_cfg, seed=5)
        )
        for name, p in policies.items()
    }
    speed = rollout_speed(sft, tok, splits.train, new_tokens=32, repeats=3)

    print("\nheld-out prompts (greedy replies; KL on sampled replies, nats per reply)")
    cols = ("accuracy", "vs SFT", "reward", "vs SFT", "RM score", "KL")
    print(f"{'policy':8} " + " ".join(f"{c:>9}" for c in cols) + "  per family")
    base = results["sft"]
    for name, r in results.items():
        fam = " ".join(f"{f} {r[f'accuracy.{f}']:.2f}" for f in families)
        print(
            f"{name:8} {r['accuracy']:9.3f} {r['accuracy'] - base['accuracy']:+9.3f} {r['reward']:9.3f} "
            f"{r['reward'] - base['reward']:+9.3f} {r['rm_reward']:9.3f} {r['kl']:9.3f}  {fam}"
        )
    print(
        f"\nreward model: held-out pair accuracy {rm_res.metrics['heldout_accuracy']:.3f} "
        f"({len(heldout_pairs)} pairs; goal >= 0.90), train {rm_res.metrics['train_accuracy']:.3f}; "
        + "by family: "
        + ", ".join(f"{f} {a:.2f}" for f, a in rm_by_family.items())
        + f"; on the SFT policy's own held-out mistakes {rm_onpolicy:.3f} ({len(heldout_onpolicy)} pairs)"
    )
    print(
        f"rollout ({speed['batch']:.0f} prompts x {speed['new_tokens']:.0f} new tokens): KV cache "
        f"{speed['tokens_per_s_cache']:.0f} tok/s vs recompute {speed['tokens_per_s_recompute']:.0f} tok/s = "
        f"{speed['speedup']:.2f}x, identical samples: {bool(speed['identical_samples'])}"
    )
    total = time.perf_counter() - t_start
    print("time: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()) + f"; total {total:.0f}s")
    if args.json:
        figures = {
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "policies": results,
            "reward_model": {**rm_res.metrics, "by_family": rm_by_family, "onpolicy_heldout": rm_onpolicy},
            "rollout": speed,
            "timings_s": timings,
        }
        args.json.write_text(json.dumps(figures, indent=2))
    if args.mlflow:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=args.mlflow)
        exp = client.get_experiment_by_name("nightshift-bench")
        exp_id = exp.experiment_id if exp else client.create_experiment("nightshift-bench")
        run = client.create_run(exp_id, run_name="bench-rlhf", tags={"nightshift.bench": "rlhf"})
        metrics = {f"{name}.{k}": float(v) for name, r in results.items() for k, v in r.items()}
        metrics.update({f"reward_model.{k}": float(v) for k, v in rm_res.metrics.items()})
        metrics["reward_model.onpolicy_heldout_accuracy"] = float(rm_onpolicy)
        metrics["rollout.kv_cache_speedup"] = float(speed["speedup"])
        for k, v in metrics.items():
            client.log_metric(run.info.run_id, k.replace("@", "_"), v)
        for k, v in vars(args).items():
            if k not in ("json", "mlflow"):
                client.log_param(run.info.run_id, k, str(v))
        client.set_terminated(run.info.run_id)
        print(f"logged to MLflow: {args.mlflow} experiment nightshift-bench, run {run.info.run_id}")


if __name__ == "__main__":
    main()
