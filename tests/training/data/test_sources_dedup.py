"""Source resolution, safe reading of bad input, and dedup decisions, without Ray."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import zipfile

import numpy as np
import pytest

from tests.training.data.conftest import make_text, perturb, write_docs
from training.data.dedup import (
    Deduper,
    jaccard_estimate,
    lsh_params,
    minhash_signature,
    text_hash,
    true_jaccard,
)
from training.data.sources import SourceError, read_unit, resolve_sources


def _read_all(path, cfg):
    units, q = resolve_sources([str(path)], cfg)
    recs = [r for u in units for r in read_unit(u, cfg)]
    return recs + q


def test_missing_path_and_empty_glob_fail_at_once(tmp_path, data_cfg):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(SourceError) as e:
        resolve_sources(
            [str(tmp_path / "nope.txt"), str(tmp_path / "*.md"), str(tmp_path / "a.txt")], data_cfg
        )
    msg = str(e.value)
    assert "nope.txt" in msg and "does not exist" in msg
    assert "*.md" in msg and "matches no files" in msg
    with pytest.raises(SourceError, match="memory://absent"):
        resolve_sources(["memory://absent/x.txt"], data_cfg)
    arc = tmp_path / "a.tar.gz"
    with tarfile.open(arc, "w:gz") as tf:
        tf.add(tmp_path / "a.txt", arcname="d/a.txt")
    with pytest.raises(SourceError, match=r"no member .* matches 'd/\*\.md'"):
        resolve_sources([f"tar://d/*.md::{arc}"], data_cfg)


def test_env_vars_and_include_filter(tmp_path, data_cfg, monkeypatch):
    write_docs(tmp_path / "c", {"a.txt": "a", "sub/b.txt": "b", "sub/skip.md": "c"})
    monkeypatch.setenv("CORPUS_DIR", str(tmp_path / "c"))
    cfg = data_cfg.model_copy(update={"include": ["*.txt"]})
    units, _ = resolve_sources(["$CORPUS_DIR"], cfg)
    assert [u["url"].rsplit("/", 1)[-1] for u in units] == ["a.txt", "b.txt"]


def _reasons(recs):
    return {
        r["item"].rsplit("/", 1)[-1]: r["reason"].split(":")[0] for r in recs if r["kind"] == "quarantine"
    }


def test_bad_files_are_quarantined(tmp_path, data_cfg):
    good = make_text(1)
    write_docs(tmp_path, {"good.txt": good, "empty.txt": "  \n"})
    (tmp_path / "binary.bin").write_bytes(bytes(range(256)) * 40)
    (tmp_path / "nul.txt").write_bytes(b"hello\x00world " * 50)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 50)
    (tmp_path / "huge.txt").write_bytes(b"x" * (data_cfg.max_doc_bytes + 10))
    recs = _read_all(tmp_path, data_cfg)
    assert _reasons(recs) == {
        "binary.bin": "binary",
        "empty.txt": "empty",
        "huge.txt": "too_large",
        "latin1.txt": "invalid_utf8 at byte 3",
        "nul.txt": "nul_bytes",
    }
    docs = [r for r in recs if r["kind"] == "doc"]
    assert [d["text"] for d in docs] == [good]
    inputs = {r["item"].rsplit("/", 1)[-1] for r in recs if r["kind"] == "input"}
    assert "good.txt" in inputs and "huge.txt" not in inputs  # oversized files are never read


def test_bad_jsonl_lines_quarantined_and_long_line_skipped(tmp_path, data_cfg):
    lines = [
        json.dumps({"text": "first good document"}).encode(),
        b"{not json",
        json.dumps({"body": "no text field"}).encode(),
        json.dumps({"text": "x" * (data_cfg.max_doc_bytes * 3)}).encode(),
        json.dumps({"text": "after the long line"}).encode(),
    ]
    p = tmp_path / "d.jsonl.gz"
    p.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    recs = _read_all(p, data_cfg)
    q = {r["item"].rsplit(":", 1)[-1]: r["reason"].split(":")[0] for r in recs if r["kind"] == "quarantine"}
    assert q == {"2": "invalid_json", "3": "missing_field", "4": "too_large"}
    assert [r["text"] for r in recs if r["kind"] == "doc"] == ["first good document", "after the long line"]


def test_broken_archives_and_parquet_quarantined(tmp_path, data_cfg):
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for i in range(5):
            data = make_text(i, 2000).encode()
            info = tarfile.TarInfo(f"docs/{i}.txt")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    (tmp_path / "trunc.tar.gz").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (tmp_path / "corrupt.zip").write_bytes(b"PK\x03\x04" + b"garbage" * 100)
    pq.write_table(pa.table({"body": ["a", "b"]}), tmp_path / "nocol.parquet")
    recs = _read_all(tmp_path, data_cfg)
    reasons = [r["reason"].split(":")[0] for r in recs if r["kind"] == "quarantine"]
    assert sorted(reasons) == ["broken_archive", "broken_archive", "missing_column"]
    # Members before the truncation point are still read.
    assert any(r["kind"] == "doc" for r in recs)


def test_zip_member_glob_and_hashes(tmp_path, data_cfg):
    arc = tmp_path / "a.zip"
    with zipfile.ZipFile(arc, "w") as zf:
        zf.writestr("x/keep.txt", "kept text")
        zf.writestr("x/skip.md", "skipped")
    recs = _read_all(f"zip://x/*.txt::{arc}", data_cfg)
    assert [r["text"] for r in recs if r["kind"] == "doc"] == ["kept text"]
    (inp,) = [r for r in recs if r["kind"] == "input"]
    assert inp["item"].endswith("::x/keep.txt") and len(inp["sha256"]) == 64 and inp["nbytes"] == 9


def test_minhash_estimates_jaccard():
    a = make_text(10, 400)
    b = perturb(a, 4)
    c = make_text(11, 400)
    sa, sb, sc = (minhash_signature(t, 128, 5) for t in (a, b, c))
    assert sa.dtype == np.uint32 and sa.shape == (128,)
    assert abs(jaccard_estimate(sa, sb) - true_jaccard(a, b, 5)) < 0.12
    assert jaccard_estimate(sa, sc) < 0.1
    assert np.array_equal(sa, minhash_signature(a, 128, 5))  # deterministic
    b_, r_ = lsh_params(0.8, 128)
    assert b_ * r_ <= 128 and (b_, r_) == (9, 13)


def test_one_permutation_minhash_is_unbiased_over_many_pairs():
    # One-permutation hashing with densification must estimate Jaccard as well as 128 independent
    # permutations (whose mean absolute error is ~0.03 at 128 slots on these pairs), for short
    # documents (many empty bins, densified) as for long ones.
    errors = []
    for n_words in (40, 300, 1000):
        for share in (0.02, 0.1, 0.3, 0.6):
            for s in range(15):
                a = make_text(1000 + s, n_words)
                b = perturb(a, max(1, int(share * n_words / 5)), seed=s)
                est = jaccard_estimate(minhash_signature(a, 128, 5), minhash_signature(b, 128, 5))
                errors.append(est - true_jaccard(a, b, 5))
    err = np.asarray(errors)
    assert np.abs(err).mean() < 0.04 and abs(err.mean()) < 0.015


def test_minhash_of_tiny_and_empty_texts():
    one = minhash_signature("just five words in here", 64, 5)
    assert len(set(one.tolist())) == 1  # one shingle: every bin densified from it
    assert np.array_equal(one, minhash_signature("Just five words, in here!", 64, 5))
    assert (minhash_signature("", 64, 5) == 0xFFFFFFFF).all()
    assert len(set(minhash_signature("a b c d e f", 64, 5).tolist())) <= 2  # two shingles


def test_deduper_keeps_first_in_order():
    a, c = make_text(20, 300), make_text(21, 300)
    near = perturb(a, 3)
    d = Deduper(exact=True, near=True, num_perm=128, threshold=0.8)

    def check(item, t):
        return d.check(item, text_hash(t), minhash_signature(t, 128, 5))

    assert [check("a", a), check("a2", a), check("near", near), check("c", c)] == [
        None,
        "exact_duplicate",
        "near_duplicate",
        None,
    ]
    assert d.stats.exact == 1 and d.stats.near == 1 and d.stats.examples[0]["kept"] == "a"
