"""The model runtime's speed, before and after a change, in one run: decoding, rollouts, the engine.

The figures a change of ``gpt/`` (the model, its cache and forward, the sampler, the generation
loop) or of the serving engine can move, measured on two source trees in the same command. Each
round runs one worker process per tree, alternating, so both see the same machine; medians over
``--rounds`` are reported, with the ratio after/before:

a. a training step (forward, backward, AdamW) at ``bench/train_throughput.py``'s shape
   (4 layers, 256 dims, 4 heads, context 256, batch 16, fp32);
b. ``GPT.generate``: 4 samples of 128 new tokens, the ``small`` preset's shape
   (4 layers, 256 dims, context 256, vocab 4096);
c. an RLHF rollout at ``bench/rlhf.py``'s shape (3 layers, 96 dims; 64 prompts of one length,
   32 new tokens), with the KV cache and recomputing the whole sequence (its figure (e));
d. the serving engine in-process (``bench/serve.py``'s (a) and its batching), the ``small``
   shape: one stream, and 16 concurrent requests of 64 tokens.

Random weights (seed 0); no stop tokens, so every row decodes to full length. One torch thread,
as the replica and the RLHF workers run. Run (after is this tree):
``python bench/runtime.py --before ../main [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def _modules(tree: Path) -> dict:
    """The tree's GPT, config and tokenizer trainer, wherever that tree keeps them."""
    if (tree / "core" / "model_config.py").exists():
        from core.model_config import ModelConfig
        from gpt.model import GPT
        from gpt.tokenizer import train_tokenizer
    elif (tree / "gpt" / "model.py").exists():  # the model's config still in gpt/
        from gpt.config import ModelConfig

        from gpt.model import GPT
        from gpt.tokenizer import train_tokenizer
    else:  # the layout before the model runtime moved into gpt/
        from training.data.tokenizer import train_tokenizer
        from training.model import GPT
        from training.model_config import ModelConfig
    return {"GPT": GPT, "ModelConfig": ModelConfig, "train_tokenizer": train_tokenizer}


def _best(fn, repeats: int) -> float:
    fn()  # warm
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def worker(tree: Path) -> dict[str, float]:
    import torch

    torch.set_num_threads(1)
    m = _modules(tree)
    GPT, ModelConfig = m["GPT"], m["ModelConfig"]
    out: dict[str, float] = {}

    # a. a training step
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=4, n_head=4, n_embd=256, block_size=256, vocab_size=4096))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, 4096, (16, 256))

    def step() -> None:
        _, loss = model(x, x, return_logits=False)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    out["train_tokens_per_s"] = 16 * 256 / _best(step, 3)

    # b. GPT.generate
    torch.manual_seed(0)
    small = GPT(ModelConfig(n_layer=4, n_head=4, n_embd=256, block_size=256, vocab_size=4096)).eval()
    prompt = list(range(1, 33))
    t = _best(lambda: small.generate(prompt, 128, seed=1, num_samples=4), 3)
    out["generate_tokens_per_s"] = 4 * 128 / t

    # c. rollouts, with the cache and recomputing
    from training.rlhf.rollout import rollout

    torch.manual_seed(0)
    policy = GPT(ModelConfig(n_layer=3, n_head=4, n_embd=96, block_size=128, vocab_size=512)).eval()
    prompts = [list(torch.randint(1, 512, (20,)).tolist()) for _ in range(64)]
    for use_cache, key in ((True, "rollout_cache_tokens_per_s"), (False, "rollout_recompute_tokens_per_s")):
        t = _best(
            lambda uc=use_cache: rollout(
                policy, prompts, max_new_tokens=32, stop_ids=(), pad_id=0, seed=7, use_cache=uc
            ),
            2,
        )
        out[key] = 64 * 32 / t
    out["rollout_speedup"] = out["rollout_cache_tokens_per_s"] / out["rollout_recompute_tokens_per_s"]

    # d. the serving engine in-process
    from serving.engine import Engine, SamplingParams

    text = "the quick brown fox jumps over the lazy dog and then the cat sat on the mat " * 200
    tok = m["train_tokenizer"]([text], vocab_size=4096)
    eng = Engine(small, tok, max_batch=32).start()
    try:
        words = text.split()
        reqs = [tok.encode(" ".join(words[i : i + 12])).ids for i in range(16)]
        params = SamplingParams(max_tokens=64, temperature=1.0, seed=3)
        t = _best(lambda: eng.generate(reqs[0], params), 3)
        out["engine_1_stream_tokens_per_s"] = 64 / t

        def burst() -> None:
            threads = [threading.Thread(target=eng.generate, args=(r, params)) for r in reqs]
            for th in threads:
                th.start()
            for th in threads:
                th.join()

        out["engine_16_streams_tokens_per_s"] = 16 * 64 / _best(burst, 3)
    finally:
        eng.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=False, help="the source tree to compare against")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker is not None:
        sys.path.insert(0, str(a.worker))
        print(json.dumps(worker(a.worker)))
        return
    trees = {"after": HERE}
    if a.before is not None:
        trees = {"before": a.before.resolve(), "after": HERE}
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in trees}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    for r in range(a.rounds):
        for name, tree in trees.items():
            done = subprocess.run(
                [sys.executable, __file__, "--worker", str(tree)],
                cwd=tree,
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                sys.exit(f"{name} ({tree}) failed:\n{done.stderr[-3000:]}")
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}/{a.rounds}: {name} done", file=sys.stderr)
    keys = list(runs["after"][0])
    med = {name: {k: statistics.median(x[k] for x in rs) for k in keys} for name, rs in runs.items()}
    head = f"{'figure (median of ' + str(a.rounds) + ')':40s}" + "".join(f"{n:>12s}" for n in trees)
    print(head + ("   after/before" if "before" in trees else ""))
    for k in keys:
        row = f"{k:40s}" + "".join(f"{med[n][k]:12.1f}" for n in trees)
        if "before" in trees:
            row += f"   {med['after'][k] / med['before'][k]:.3f}"
        print(row)


if __name__ == "__main__":
    main()
