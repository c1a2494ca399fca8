"""Serving throughput and latency: our engine over HTTP at 1/4/16 clients vs single-stream baselines.

One fixed small model (the ``small`` preset's shape: 4 layers, 256 dims, 4 heads, context 256,
vocab 4096; random weights from seed 0, tokenizer trained on a generated corpus) and one fixed
set of prompts. In the same run it measures:

a. our engine called in-process, one request at a time (single stream): tokens/s and
   time-to-first-token (TTFT), at each of ``--baseline-threads`` torch thread counts;
b. Hugging Face ``transformers`` ``generate()`` on the same weights exported to GPT-2 format,
   the same prompts one by one, the same number of new tokens, at the same thread counts;
c. the deployed Ray Serve application driven by streaming HTTP clients (the OpenAI wire
   format, from one asyncio load generator) at 1, 4 and 16 concurrent clients: aggregate
   generated tokens/s and TTFT p50/p99 (time to the first chunk that carries text).

The faster thread count of (a) and of (b) is the baseline. This machine's speed drifts by 10-20%
over the minutes a run takes, so (a) and (b) at their faster thread counts run again after (c),
with Ray shut down as before, and the ratios are taken against the mean of the two runs of each.
The replica runs with the ``small`` preset's ``serve.torch_threads`` (``--serve-threads`` to change it).

Goals (issue 4): at 16 clients >= 6x (a) and >= 4x (b); HTTP + Serve adds <= 15 ms to p50 TTFT
(c at 1 client minus a at the replica's thread count). ``--load`` adds the bounded load run
(2,000 requests at concurrency 32, mixed endpoints, streaming and not) and reports status codes
and the replica's memory before and after. Run: ``python bench/serve.py [--max-tokens 64] [--load]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from serve_http import bench_http, load_run, pct, replica_figures, replica_rss  # noqa: E402

from core.model_config import ModelConfig  # noqa: E402
from gpt.model import GPT  # noqa: E402
from gpt.model_io import save_model  # noqa: E402
from gpt.tokenizer import train_tokenizer  # noqa: E402
from serving.engine import Engine, SamplingParams  # noqa: E402

WORDS = (
    "night watch model token serve batch queue river stone light shadow crown king queen sword "
    "field storm ship harbour letter poem song verse dream heart mind time world love death"
).split()


def corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))) + "." for _ in range(n)]


def prompts(k: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(12, 24))) for _ in range(k)]


def make_model(root: Path, steps: int = 60):
    """The fixed model: seed 0, trained ``steps`` AdamW steps on the generated corpus.

    A few steps are enough for it to write words rather than random bytes, which matters here:
    a stream holds back bytes that do not yet form a whole UTF-8 character, so time to first
    token is only meaningful for a model that writes text.
    """
    texts = corpus(4000)
    tok = train_tokenizer(texts, vocab_size=4096)
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=4, n_head=4, n_embd=256, block_size=256, vocab_size=4096))
    ids = torch.tensor([i for t in texts for i in tok.encode(t + "<|endoftext|>").ids][: 400 * 257])
    windows = ids[: (len(ids) // 257) * 257].view(-1, 257)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = windows[torch.randint(len(windows), (8,), generator=g)]
        _, loss = model(batch[:, :-1].contiguous(), batch[:, 1:].contiguous())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, tok, save_model(model, tok, root=root, metadata={"bench_train_loss": float(loss)})


def bench_engine_single(model, tok, ps: list[str], max_tokens: int) -> dict[str, float]:
    """Our engine in-process, one request at a time from a client thread.

    The decode loop runs in this thread (``Engine.run``), which also built the model and runs the
    HF baseline: all parallel torch work of the process on one thread, as the replica's engine
    process does. A loop on a thread of its own here would measure OpenMP's throttled spin-waits
    at 2 threads rather than the engine.
    """
    eng = Engine(model, tok, max_batch=32)
    ttfts: list[float] = []
    result: dict[str, float] = {}

    def client() -> None:
        try:
            eng.generate(tok.encode(ps[0]).ids, SamplingParams(max_tokens=8))  # warm-up
            tokens = 0
            t0 = time.perf_counter()
            for p in ps:
                first = threading.Event()
                done = threading.Event()
                t_req = time.perf_counter()
                stamp: list[float] = []

                def sink(d, stamp=stamp, first=first, done=done, t_req=t_req):
                    # The same criterion as the HTTP clients: the first delta that carries text.
                    if not first.is_set() and (d.text or d.finish_reason):
                        stamp.append(time.perf_counter() - t_req)
                        first.set()
                    if d.finish_reason:
                        stamp.append(d.completion_tokens)
                        done.set()

                eng.submit(tok.encode(p).ids, SamplingParams(max_tokens=max_tokens, temperature=1.0), sink)
                done.wait()
                ttfts.append(stamp[0])
                tokens += int(stamp[-1])
            result["tokens_per_s"] = tokens / (time.perf_counter() - t0)
        finally:
            eng.stop()

    t = threading.Thread(target=client, name="bench-client")
    t.start()
    eng.run()
    t.join()
    if eng.error is not None or "tokens_per_s" not in result:
        raise RuntimeError(f"the in-process engine baseline failed: {eng.error!r}")
    return {
        "tokens_per_s": result["tokens_per_s"],
        "ttft_p50_ms": 1e3 * pct(ttfts, 0.5),
        "ttft_p99_ms": 1e3 * pct(ttfts, 0.99),
    }


def load_hf(ref, tmp: Path):
    """The bench model exported to GPT-2 format and loaded as ``transformers``' GPT2LMHeadModel."""
    from transformers import GPT2LMHeadModel

    from gpt.hf import export_hf

    return GPT2LMHeadModel.from_pretrained(export_hf(ref, tmp / "hf")).eval()


def bench_hf(hf, tok, ps: list[str], max_tokens: int) -> dict[str, float]:
    gen_kw = dict(
        max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=True, top_k=0, temperature=1.0
    )
    with torch.inference_mode():
        hf.generate(
            torch.tensor([tok.encode(ps[0]).ids]), **{**gen_kw, "max_new_tokens": 8, "min_new_tokens": 8}
        )
        tokens = 0
        t0 = time.perf_counter()
        for p in ps:
            ids = torch.tensor([tok.encode(p).ids])
            out_ids = hf.generate(ids, attention_mask=torch.ones_like(ids), pad_token_id=0, **gen_kw)
            tokens += out_ids.shape[1] - ids.shape[1]
        wall = time.perf_counter() - t0
    return {"tokens_per_s": tokens / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=12, help="requests of the single-stream baselines")
    ap.add_argument(
        "--baseline-threads", default="1,2", help="torch thread counts tried for (a) and (b); the best counts"
    )
    ap.add_argument(
        "--serve-threads", type=int, default=None, help="serve.torch_threads (default: the small preset's)"
    )
    ap.add_argument(
        "--compare-thread",
        action="store_true",
        help="also measure (c) with the engine as a thread of the replica (serve.engine_process: false)",
    )
    ap.add_argument(
        "--compare-uncapped",
        action="store_true",
        help="also measure the engine process with serve.stream_writes_per_s 0 (every stream written "
        "every serve.stream_interval_ms, however many are open), first",
    )
    ap.add_argument("--load", action="store_true", help="also run 2,000 requests at concurrency 32")
    ap.add_argument("--load-requests", type=int, default=2000)
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    import ray
    from ray import serve

    from core.config import load_config
    from serving.app import build_app
    from tests.conftest import free_port

    # The model has the small preset's shape; its replica runs as that preset configures it.
    serve_threads = args.serve_threads or load_config("small").serve.torch_threads
    tmp = Path(tempfile.mkdtemp(prefix="nightshift-bench-serve-"))
    model, tok, ref = make_model(tmp / "artifacts")
    hf_model = load_hf(ref, tmp)
    ps = prompts(64)
    # Each baseline at every thread count, and the faster one counts: on small models the
    # per-op cost of synchronising threads can outweigh the second core, so either can win.
    singles: dict[int, dict[str, float]] = {}
    hfs: dict[int, dict[str, float]] = {}
    for threads in sorted({int(t) for t in args.baseline_threads.split(",")} | {serve_threads}):
        torch.set_num_threads(threads)
        singles[threads] = bench_engine_single(model, tok, ps[: args.prompts], args.max_tokens)
        print(
            f"(a) engine in-process, 1 stream, {threads} thread(s): {singles[threads]['tokens_per_s']:.0f} "
            f"tokens/s, TTFT p50 {singles[threads]['ttft_p50_ms']:.1f} ms"
        )
        hfs[threads] = bench_hf(hf_model, tok, ps[: args.prompts], args.max_tokens)
        print(
            f"(b) HF transformers generate(), 1 stream, {threads} thread(s): "
            f"{hfs[threads]['tokens_per_s']:.0f} tokens/s"
        )
    single_threads = max(singles, key=lambda t: singles[t]["tokens_per_s"])
    hf_threads = max(hfs, key=lambda t: hfs[t]["tokens_per_s"])

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"

    def deploy(engine_process: bool, **serve_extra: object) -> None:
        serve_cfg = {
            "auth": "none",
            "torch_threads": serve_threads,
            "max_batch": 32,
            "max_waiting": 512,
            "engine_process": engine_process,
            **serve_extra,
        }
        app = {"model": str(ref.path), "serve": serve_cfg, "catalog_url": f"sqlite:///{tmp}/catalog.db"}
        serve.run(build_app(app), name="bench", route_prefix="/")

    def levels(label: str, which: tuple[tuple[int, int], ...]) -> list[dict[str, float]]:
        out = []
        for clients, per in which:
            f0 = replica_figures(base)
            r = bench_http(base, ps, clients, per, args.max_tokens)
            # Tokens per decode step: how full the running batch was; stream writes: how often each
            # stream was written (serve.stream_interval_ms, stretched by serve.stream_writes_per_s).
            # Both over the warm-up requests too.
            tokens_all, seconds_all = r.pop("tokens_all"), r.pop("seconds_all")
            f1 = replica_figures(base)
            steps = f1["engine_decode_steps"] - f0["engine_decode_steps"]
            writes = f1["stream_writes"] - f0["stream_writes"]
            r["mean_batch"] = tokens_all / max(1.0, steps)
            r["tokens_per_write"] = tokens_all / max(1.0, writes)
            r["stream_write_interval_ms"] = 1e3 * clients * seconds_all / max(1.0, writes)
            out.append(r)
            print(
                f"(c) HTTP, engine {label}, {clients:>2} clients: {r['tokens_per_s']:.0f} tokens/s, "
                f"TTFT p50 {r['ttft_p50_ms']:.1f} ms, p99 {r['ttft_p99_ms']:.1f} ms ({r['requests']} "
                f"requests, mean batch {r['mean_batch']:.1f}; a write per stream every "
                f"{r['stream_write_interval_ms']:.0f} ms, {r['tokens_per_write']:.1f} tokens each)"
            )
        return out

    all_levels = ((1, args.prompts), (4, 6), (16, 8))
    thread_http = None
    if args.compare_thread:
        # The engine as a thread of the replica (serve.engine_process: false), same run, first.
        deploy(False)
        thread_http = levels("thread", all_levels)
        serve.delete("bench")
    uncapped_http = None
    if args.compare_uncapped:
        deploy(True, stream_writes_per_s=0)
        uncapped_http = levels("process, writes uncapped", all_levels)
        serve.delete("bench")
    deploy(True)
    http = levels("process", all_levels)
    at16 = http[-1]["tokens_per_s"]
    # Same threads on both sides: what HTTP + Serve add to the engine the replica runs.
    overhead = http[0]["ttft_p50_ms"] - singles[serve_threads]["ttft_p50_ms"]
    summary: dict[str, object] = {
        "engine_single_by_threads": singles,
        "hf_generate_single_by_threads": hfs,
        "serve_torch_threads": serve_threads,
        "http": http,
        "http_engine_thread": thread_http,
        "http_writes_uncapped": uncapped_http,
        "http_serve_ttft_overhead_p50_ms": overhead,
    }
    if args.load:
        rss0 = replica_rss(base)
        warm = load_run(base, ps, 200, 32)
        rss1 = replica_rss(base)
        res = load_run(base, ps, args.load_requests, 32)
        rss2 = replica_rss(base)
        five = sum(v for k, v in res["codes"].items() if k >= 500)
        summary["load"] = {
            **res,
            "warmup_codes": warm["codes"],
            "rss_mb": [rss0 / 2**20, rss1 / 2**20, rss2 / 2**20],
        }
        print(
            f"\nload: {args.load_requests} requests at concurrency 32 in {res['seconds']:.1f} s: "
            f"codes {res['codes']}, 5xx {five}; replica RSS {rss0 / 2**20:.0f} MB at start, "
            f"{rss1 / 2**20:.0f} MB after 200 warm-up requests, {rss2 / 2**20:.0f} MB after the run "
            f"({(rss2 - rss1) / 2**20:+.1f} MB)"
        )
    serve.shutdown()
    ray.shutdown()

    # The baselines again, as the machine is now, and the ratios against the mean of both runs.
    torch.set_num_threads(single_threads)
    single_after = bench_engine_single(model, tok, ps[: args.prompts], args.max_tokens)
    print(f"(a) again after (c), {single_threads} thread(s): {single_after['tokens_per_s']:.0f} tokens/s")
    torch.set_num_threads(hf_threads)
    hf_after = bench_hf(hf_model, tok, ps[: args.prompts], args.max_tokens)
    print(f"(b) again after (c), {hf_threads} thread(s): {hf_after['tokens_per_s']:.0f} tokens/s")
    single = (singles[single_threads]["tokens_per_s"] + single_after["tokens_per_s"]) / 2
    hf = (hfs[hf_threads]["tokens_per_s"] + hf_after["tokens_per_s"]) / 2
    summary.update(
        engine_single_tokens_per_s=single,
        engine_single_after=single_after,
        hf_generate_single_tokens_per_s=hf,
        hf_generate_single_after=hf_after,
        x_vs_engine_single_at_16=at16 / single,
        x_vs_hf_at_16=at16 / hf,
    )
    print(f"\n(a) single stream, mean of before and after (c): {single:.0f} tokens/s")
    print(f"(b) HF generate(), mean of before and after (c): {hf:.0f} tokens/s")
    print(f"16 clients vs our single stream: {at16 / single:.1f}x (goal >= 6x)")
    print(f"16 clients vs HF generate():     {at16 / hf:.1f}x (goal >= 4x)")
    print(f"HTTP + Serve added to p50 TTFT:  {overhead:.1f} ms (goal <= 15 ms)")
    if thread_http:
        print(f"16 clients, engine process vs engine thread: {at16 / thread_http[-1]['tokens_per_s']:.2f}x")
    if uncapped_http:
        print(f"16 clients, writes capped vs uncapped: {at16 / uncapped_http[-1]['tokens_per_s']:.2f}x")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
