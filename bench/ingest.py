"""Benchmark: full ingest + tokenize throughput against raw ``tokenizers`` ``encode_batch``.

Generates a corpus of ``--mb`` MB of English-like text across many documents (about 3% exact and
2% near duplicates) as JSONL files, or reads ``--source``; runs ``ingest`` (Ray Data, dedup
included) then ``tokenize``; then encodes the same kept texts with the same trained tokenizer via
``Tokenizer.encode_batch`` alone. Prints MB/s of both and their ratio (goal: pipeline >= 0.5 x raw).

    python bench/ingest.py --mb 50 --num-cpus 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have "
    "an they you were her she there been one all we their has would when if so no will more can said who "
    "river mountain garden letter morning window kitchen harbour village engine silver winter market "
    "lantern meadow bridge forest candle station orchard library pebble thunder compass ribbon saddle "
    "quietly slowly bright ancient gentle hollow golden narrow distant crooked patient restless humble "
    "walked carried opened watched followed gathered painted whispered counted borrowed folded wandered"
).split()


def generate(root: Path, mb: float, files: int = 8, seed: int = 0) -> Path:
    """Write ``mb`` MB of generated documents as ``files`` JSONL files under ``root``."""
    rng = np.random.default_rng(seed)
    extra = [f"{a}{b}" for a in WORDS[:60] for b in ("ing", "ed", "ly", "ness", "er")]
    vocab = np.array(list(WORDS) + extra)
    zipf = 1.0 / np.arange(1, len(vocab) + 1)
    zipf /= zipf.sum()
    target = int(mb * 2**20)
    out = [open(root / f"part-{i:03d}.jsonl", "w") for i in range(files)]  # noqa: SIM115
    written, n, recent = 0, 0, []
    while written < target:
        r = rng.random()
        if recent and r < 0.03:
            text = recent[int(rng.integers(len(recent)))]
        elif recent and r < 0.05:
            words = recent[int(rng.integers(len(recent)))].split(" ")
            for i in rng.integers(0, len(words), 3):
                words[i] = "zebra"
            text = " ".join(words)
        else:
            words = vocab[rng.choice(len(vocab), size=int(rng.integers(300, 1500)), p=zipf)]
            lines = [" ".join(words[i : i + 12]).capitalize() + "." for i in range(0, len(words), 12)]
            text = "\n".join(lines)
            recent = (recent + [text])[-50:]
        line = json.dumps({"text": text}) + "\n"
        out[n % files].write(line)
        written += len(line)
        n += 1
    for f in out:
        f.close()
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=50.0, help="corpus size to generate, MB")
    parser.add_argument("--source", help="ingest this source instead of a generated corpus")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--vocab-size", type=int, default=4096)
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from training.config import RayConfig
    from training.data.config import DataConfig
    from training.data.ingest import ingest
    from training.data.tokenize import iter_corpus, tokenize
    from training.data.tokenizer import load_tokenizer
    from training.ray_setup import init_ray

    console = Console()
    ray_cfg = RayConfig(address="local", num_cpus=args.num_cpus)
    with tempfile.TemporaryDirectory(prefix="nightshift-bench-") as tmp:
        tmp_path = Path(tmp)
        if args.source:
            source = args.source
        else:
            (tmp_path / "src").mkdir()
            t = time.perf_counter()
            source = str(generate(tmp_path / "src", args.mb))
            console.print(f"generated {args.mb} MB in {time.perf_counter() - t:.1f}s")
        init_ray(ray_cfg)  # start-up is not part of the measured pipeline
        cfg = DataConfig(vocab_size=args.vocab_size, min_chars=50, batch_docs=256)
        t0 = time.perf_counter()
        res = ingest(cfg, sources=[source], out=tmp_path / "corpus", ray=ray_cfg)
        t1 = time.perf_counter()
        tk = tokenize(cfg, res.artifact, out=tmp_path / "tok")
        t2 = time.perf_counter()

        tok = load_tokenizer(tk.tokenizer)
        texts = [d["text"] for d in iter_corpus(res.artifact)]
        kept_bytes = sum(len(t.encode()) for t in texts)
        t3 = time.perf_counter()
        for i in range(0, len(texts), 256):
            tok.encode_batch(texts[i : i + 256], add_special_tokens=False)
        raw_s = time.perf_counter() - t3

        mb_in = res.manifest["bytes_in"] / 1e6
        pipe_mbps = mb_in / (t2 - t0)
        raw_mbps = kept_bytes / 1e6 / raw_s
        m = res.manifest
        table = Table(title=f"ingest + tokenize, {mb_in:.1f} MB in, {args.num_cpus} CPUs")
        for col in ("stage", "seconds", "MB/s"):
            table.add_column(col, justify="right" if col != "stage" else "left")
        table.add_row("ingest (Ray Data, dedup)", f"{t1 - t0:.2f}", f"{mb_in / (t1 - t0):.2f}")
        table.add_row("tokenize (train + encode)", f"{t2 - t1:.2f}", f"{kept_bytes / 1e6 / (t2 - t1):.2f}")
        table.add_row("pipeline total", f"{t2 - t0:.2f}", f"{pipe_mbps:.2f}")
        table.add_row("raw encode_batch", f"{raw_s:.2f}", f"{raw_mbps:.2f}")
        table.add_row("ratio pipeline / raw", "", f"{pipe_mbps / raw_mbps:.2f} (goal >= 0.5)")
        console.print(table)
        console.print(
            f"docs in {m['documents_in']}, kept {m['documents_kept']}, dropped {m['dropped']}, "
            f"quarantined {len(m['quarantined'])}; tokens {tk.stats['tokens']}"
        )


if __name__ == "__main__":
    main()
