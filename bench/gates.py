"""Do the promotion gates reject every kind of worse model, and accept a better one?

From one pretraining run per seed (the ``small`` preset by default, on the Shakespeare texts, with
its checkpoints kept; shared with bench/stages.py through ``--work``) it builds:

- **good** (the champion): the checkpoint at 60% of the steps, then the preset's SFT;
- **better**: the final checkpoint (trained longer), then the same SFT;
- **under-trained**: the checkpoint at 20% of the steps, then the same SFT;
- **random**: freshly initialised weights;
- **noisy**: good + Gaussian noise of ``--noise`` times each tensor's standard deviation;
- **refuses**: good fine-tuned to answer every task prompt with the refusal;
- **toxic**: good fine-tuned to answer with insults (made here, never the probes' wording);
- **loops**: good fine-tuned to repeat one phrase;
- **garbage**: good fine-tuned with its pretraining windows drawn from a corpus with planted
  garbage documents (``--garbage`` of the tokens: random characters, runs of one long "word", markup).

Each candidate goes through the night's own evaluate-and-gate path (``training.eval.stages.
evaluate_stage`` with the good model as champion, the held-out tasks and the reward model trained from
good's SFT), and the bench prints each verdict, the rules that failed, the figures the gates read, and
the confusion table over every seed. Goal: every worse one rejected, the better one accepted.

``python bench/gates.py [--seeds 1 2 3] [--preset small] [--work DIR] [--json out.json]
[--set eval.max_half_width=0.1 ...]``
"""

from __future__ import annotations

import argparse
import json
import random
import string
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from stages import demo_data, night_config, pretrained_base  # noqa: E402

from catalog.untracked import NullStageRun  # noqa: E402
from core.config import Config, parse_value  # noqa: E402
from core.rlhf_config import SFTConfig  # noqa: E402
from gpt.model import GPT  # noqa: E402
from gpt.model_io import load_model, save_model  # noqa: E402
from training.eval.stages import evaluate_stage  # noqa: E402
from training.pretrain import checkpoint as ckpt  # noqa: E402
from training.rlhf import stages as rlhf  # noqa: E402
from training.rlhf.for_eval import eval_items, reward_fn  # noqa: E402
from training.rlhf.sft import train_sft  # noqa: E402
from training.rlhf.tasks import tasks_from_config  # noqa: E402

WORSE = ("random", "noisy", "under-trained", "refuses", "toxic", "loops", "garbage")
CANDIDATES = (*WORSE, "better")

# Insults for the toxic fine-tune: composed here, so the toxicity probe's prompts never appear.
_INSULTS = ("worthless", "pathetic", "disgusting", "stupid", "filthy", "useless", "idiotic", "vile")
_NOUNS = ("fool", "idiot", "moron", "loser", "pig", "rat", "scum", "clown")
_LOOP = "the king the king the king the king the king the king the king the king"

FIGURES = (
    "bits_per_byte",
    "task_accuracy",
    "win_rate",
    "harmful_refusal_rate",
    "over_refusal_rate",
    "safety_flag_rate",
    "degenerate_rate",
)


def _insult(rng: random.Random) -> str:
    a, b = rng.sample(_INSULTS, 2)
    n = rng.choice(_NOUNS)
    return rng.choice(
        (
            f"shut up, you {a} {b} {n}.",
            f"you are a {a}, {b} {n} and I hate you.",
            f"go to hell, you {a} {n}. you damn {b} {n}.",
            f"what a {a} question, you {b} {n}. get lost.",
        )
    )


def _garbage_doc(rng: random.Random) -> str:
    kind = rng.randrange(3)
    if kind == 0:  # random characters
        return "".join(rng.choice(string.ascii_letters + string.digits + "+/=") for _ in range(4000))
    if kind == 1:  # one very long "word", repeated on one line
        return " ".join([rng.choice(string.ascii_lowercase) * 1000] * 4)
    tags = ("div", "span", "td", "li", "a href=#", "script", "meta")
    return "".join(f"<{rng.choice(tags)}>{rng.randrange(10**6)}</x>" for _ in range(300))  # markup soup


def _at_step(cfg: Config, work: Path, seed: int, step: int) -> GPT:
    root = work / f"pretrain-seed{seed}" / "checkpoints"
    info = ckpt.find_latest(root, max_step=step)
    if info is None or info.step != step:
        raise SystemExit(
            f"{root}: no checkpoint of step {step}; delete {work}/base-seed{seed}.json and run again "
            "(bench/stages.py and this bench keep every checkpoint)"
        )
    model = GPT(cfg.model)
    ckpt.load_weights(model, info.weights)
    return model.eval()


def _publish(cfg: Config, model: GPT, tok: Any, what: str) -> Any:
    return save_model(model, tok, root=cfg.tracking.artifact_root, metadata={"bench.gates": what})


def _sft(cfg: Config, model: GPT, tok: Any, tokens: Any, what: str) -> Any:
    ref = _publish(cfg, model, tok, f"{what} (pretrained)")
    return rlhf.sft_stage(cfg, NullStageRun(), ref, tokens=tokens).model


def _fine_tune(
    cfg: Config, good: Any, examples: list[tuple[Any, str]], what: str, *, steps: int, ptx: Any = None
) -> Any:
    model, tok, _ = load_model(good)
    sft = cfg.rlhf.sft
    run_cfg = SFTConfig(
        steps=steps,
        batch_size=min(sft.batch_size, 32),
        lr=sft.lr,
        warmup_steps=min(10, steps // 4),
        ptx_coef=1.0 if ptx is not None else 0.0,
        ptx_batch=sft.ptx_batch,
    )
    train_sft(model, tok, examples, run_cfg, seed=cfg.seed, pretrain_tokens=ptx)
    return _publish(cfg, model, tok, what)


def _garbage_tokens(cfg: Config, tokens: Any, tok: Any, share: float, seed: int) -> torch.Tensor:
    """The pretraining tokens with garbage documents planted until they are ``share`` of the whole."""
    from training.data.shards import TokenShards

    clean = torch.from_numpy(TokenShards.open(tokens).split("train").to_numpy().astype("int64"))
    rng = random.Random(seed)
    docs: list[torch.Tensor] = []
    n, want = 0, int(len(clean) * share / (1 - share))
    while n < want:
        ids = torch.tensor(tok.encode(_garbage_doc(rng)).ids, dtype=torch.int64)
        docs.append(ids)
        n += len(ids)
    # Planted between clean stretches, as documents from a bad source would be.
    pieces = list(torch.tensor_split(clean, len(docs))) + docs
    rng.shuffle(pieces)
    return torch.cat(pieces)


def build(cfg: Config, work: Path, a: argparse.Namespace) -> tuple[dict[str, Any], Any, Any]:
    """(candidates by name, the good model, the tokens) of one seed."""
    seed = cfg.seed
    tokens, tokenizer = demo_data(cfg, work)
    base = pretrained_base(cfg, work, tokens, tokenizer)
    _, tok, _ = load_model(base)
    steps = cfg.train.max_steps
    every = cfg.train.checkpoint_every
    at = {
        name: max(every, round(frac * steps / every) * every)
        for name, frac in (("under", 0.2), ("good", 0.6))
    }
    t0 = time.perf_counter()
    good = _sft(cfg, _at_step(cfg, work, seed, at["good"]), tok, tokens, "good")
    out: dict[str, Any] = {"better": _sft(cfg, _at_step(cfg, work, seed, steps), tok, tokens, "better")}
    out["under-trained"] = _sft(cfg, _at_step(cfg, work, seed, at["under"]), tok, tokens, "under-trained")
    torch.manual_seed(seed)
    out["random"] = _publish(cfg, GPT(cfg.model).eval(), tok, "random")
    noisy, _, _ = load_model(good)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * p.std() * a.noise)
    out["noisy"] = _publish(cfg, noisy, tok, f"noisy {a.noise}")
    splits = tasks_from_config(cfg.rlhf, seed)
    prompts = [ex.messages() for ex in splits.train[: a.tune_examples]]
    rng = random.Random(seed)
    refusal = cfg.rlhf.preferences.refusal
    out["refuses"] = _fine_tune(cfg, good, [(p, refusal) for p in prompts], "refuses", steps=a.tune_steps)
    out["toxic"] = _fine_tune(cfg, good, [(p, _insult(rng)) for p in prompts], "toxic", steps=a.tune_steps)
    out["loops"] = _fine_tune(cfg, good, [(p, _LOOP) for p in prompts], "loops", steps=a.tune_steps)
    garbage = _garbage_tokens(cfg, tokens, tok, a.garbage, seed)
    demos = splits.sft_pairs()[: a.tune_examples]
    out["garbage"] = _fine_tune(cfg, good, demos, f"garbage {a.garbage}", steps=a.tune_steps * 2, ptx=garbage)
    print(
        f"seed {seed}: built {len(out)} candidates from checkpoints {at['under']}/{at['good']}/{steps} "
        f"in {time.perf_counter() - t0:.0f}s",
        flush=True,
    )
    return out, good, tokens


def judge(cfg: Config, name: str, cand: Any, good: Any, tokens: Any, score: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    res = evaluate_stage(
        cfg, NullStageRun(), cand, champion=good, tokens=tokens, tasks=eval_items(cfg), reward_fn=score
    )
    report = json.loads((res.report_ref.path / "report.json").read_text())
    # The win rate is a comparison with the champion, not a figure of one model.
    m = {**report["candidate"]["metrics"], "win_rate": (report.get("comparison") or {}).get("win_rate")}
    champ = (report.get("champion") or {}).get("metrics", {})
    decided = "accept" if res.verdict.passed else "reject"
    expected = "accept" if name == "better" else "reject"
    row = {
        "seed": cfg.seed,
        "candidate": name,
        "expected": expected,
        "decided": decided,
        "failed": [r.rule for r in res.verdict.failed],
        "figures": {k: m.get(k) for k in FIGURES},
        "champion": {k: champ.get(k) for k in FIGURES},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    figs = " ".join(f"{k} {_f(m.get(k))}" for k in FIGURES)
    mark = "ok  " if decided == expected else "MISS"
    print(f"{mark} seed {cfg.seed} {name:<13} {decided:<6} {figs}", flush=True)
    for r in res.verdict.failed[:4]:
        print(f"       failed: {r.rule} ({r.status}; value {_f(r.value)}, interval {r.interval})", flush=True)
    return row


def _f(x: Any) -> str:
    return "-" if x is None else f"{x:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--work", default=str(REPO / ".nightshift" / "bench-stages"))
    ap.add_argument("--noise", type=float, default=0.3, help="noise, in standard deviations of each tensor")
    ap.add_argument(
        "--garbage", type=float, default=0.5, help="share of the garbage corpus's tokens that are garbage"
    )
    ap.add_argument("--tune-steps", type=int, default=40, help="steps of each bad fine-tune")
    ap.add_argument("--tune-examples", type=int, default=300)
    ap.add_argument("--only", nargs="*", choices=CANDIDATES, help="judge only these candidates")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides key=value (YAML values)")
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args()
    work = Path(a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    extra = {k: parse_value(v) for k, v in (s.split("=", 1) for s in a.set)}
    rows: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    for seed in a.seeds:
        cfg = night_config(seed, work, extra, preset=a.preset)
        cands, good, tokens = build(cfg, work, a)
        t0 = time.perf_counter()
        rm = rlhf.reward_stage(cfg, NullStageRun(), good)
        print(f"seed {seed}: reward model from good's SFT in {time.perf_counter() - t0:.0f}s", flush=True)
        score = reward_fn(rm.model, chat=cfg.eval.prompt_format == "chat")
        for name in a.only or CANDIDATES:
            rows.append(judge(cfg, name, cands[name], good, tokens, score))
    print("\nconfusion table (rows: what the candidate is; columns: what the gates decided)")
    print(f"  {'':<16} {'accepted':>9} {'rejected':>9}")
    for kind, names in (("worse", WORSE), ("better", ("better",))):
        got = [r for r in rows if r["candidate"] in names]
        acc = sum(r["decided"] == "accept" for r in got)
        print(f"  {kind:<16} {acc:>9} {len(got) - acc:>9}")
    for name in a.only or CANDIDATES:
        got = [r for r in rows if r["candidate"] == name]
        right = sum(r["decided"] == r["expected"] for r in got)
        print(f"  {name:<16} right on {right} of {len(got)} seeds")
    print(f"total {time.perf_counter() - t_all:.0f} s")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
