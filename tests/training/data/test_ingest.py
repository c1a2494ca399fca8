"""The ingest stage end to end on generated corpora (Ray Data, local, 2 CPUs)."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile

import fsspec
import pytest

from catalog.artifacts import open_artifact
from core.config import RayConfig
from tests.training.data.conftest import make_text, perturb, write_docs
from training.data.ingest import EmptyCorpusError, ingest
from training.data.sources import SourceError

pytestmark = pytest.mark.slow
RAY = RayConfig(address="local", num_cpus=2)


def _docs(ref):
    out = []
    for p in sorted((ref.path / "shards").glob("*.jsonl")):
        out += [json.loads(line) for line in p.read_text().splitlines()]
    return out


def _balanced(m):
    return m["documents_in"] == m["documents_kept"] + sum(m["dropped"].values()) + len(m["quarantined"])


def test_every_source_kind(tmp_path, data_cfg, ray_local):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [make_text(100 + i) for i in range(12)]
    write_docs(tmp_path / "file", {"one.txt": texts[0]})
    write_docs(tmp_path / "dir", {"a.txt": texts[1], "sub/b.txt": texts[2], "skip.md": texts[11]})
    write_docs(tmp_path / "glob", {"g1.txt": texts[3], "g2.txt": texts[4]})
    with tarfile.open(tmp_path / "arc.tar.gz", "w:gz") as tf:
        for i, name in ((5, "pkg/texts/x_gut.txt"), (11, "pkg/texts/readme.md")):
            data = texts[i].encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    with zipfile.ZipFile(tmp_path / "arc.zip", "w") as zf:
        zf.writestr("z.txt", texts[6])
    (tmp_path / "d.jsonl").write_text(json.dumps({"body": texts[7]}) + "\n")
    pq.write_table(pa.table({"body": [texts[8]]}), tmp_path / "d.parquet")
    with fsspec.open("memory://corpus/m.txt", "w") as f:
        f.write(texts[9])
    cfg = data_cfg.model_copy(update={"include": ["*.txt", "*.jsonl", "*.parquet"], "text_field": "body"})
    sources = [
        str(tmp_path / "file" / "one.txt"),
        str(tmp_path / "dir"),
        str(tmp_path / "glob" / "*.txt"),
        f"tar://pkg/texts/*_gut*.txt::{tmp_path / 'arc.tar.gz'}",
        str(tmp_path / "arc.zip"),
        str(tmp_path / "d.jsonl"),
        str(tmp_path / "d.parquet"),
        "memory://corpus",
    ]
    res = ingest(cfg, sources=sources, out=tmp_path / "out", ray=RAY)
    m = res.manifest
    assert [d["text"] for d in _docs(res.artifact)] == texts[:10]
    assert m["documents_in"] == m["documents_kept"] == 10 and not m["quarantined"] and _balanced(m)
    assert len(m["sources"]) == 10 and all(len(s["sha256"]) == 64 for s in m["sources"])
    assert open_artifact(tmp_path / "out", kind="corpus").sha256 == res.artifact.sha256
    assert (tmp_path / "out" / "DATACARD.md").read_text() == res.datacard


def test_bad_input_quarantined_with_exact_accounting(tmp_path, data_cfg, ray_local):
    good = [make_text(200 + i) for i in range(3)]
    write_docs(tmp_path / "c", {"g0.txt": good[0], "g1.txt": good[1], "empty.txt": ""})
    c = tmp_path / "c"
    (c / "bin.dat").write_bytes(bytes(range(256)) * 10)
    (c / "nul.txt").write_bytes(b"some text " * 30 + b"\x00" + b" more text" * 30)
    (c / "bad.txt").write_bytes(b"\xff\xfe bad utf8 " * 30)
    (c / "big.txt").write_bytes(b"word " * (data_cfg.max_doc_bytes // 4))
    (c / "trunc.tar.gz").write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 40)
    (c / "corrupt.zip").write_bytes(b"PK\x03\x04broken")
    (c / "lines.jsonl").write_text(
        json.dumps({"text": good[2]}) + "\nnot json\n" + json.dumps({"other": 1}) + "\n"
    )
    with open(c / "long.jsonl", "wb") as f:
        f.write(b'{"text": "' + b"y" * (data_cfg.max_doc_bytes * 2) + b'"}\n')
    res = ingest(data_cfg, sources=[str(c)], out=tmp_path / "out", ray=RAY)
    m = res.manifest
    reasons = sorted(q["reason"].split(":")[0].split(" ")[0] for q in m["quarantined"])
    assert reasons == sorted(
        [
            "empty",
            "binary",
            "nul_bytes",
            "invalid_utf8",
            "too_large",
            "broken_archive",
            "broken_archive",
            "invalid_json",
            "missing_field",
            "too_large",
        ]
    )
    assert all(q["source"] == str(c) and q["item"] for q in m["quarantined"])
    assert m["documents_kept"] == 3 and _balanced(m)
    assert "## Quarantine" in res.datacard and "broken_archive" in res.datacard


def test_cleaning_dedup_and_filters(tmp_path, data_cfg, ray_local):
    base = [make_text(300 + i) for i in range(4)]
    docs = {
        "00.txt": base[0],
        "01.txt": base[0],  # exact duplicate
        "02.txt": "  " + base[0].replace("\n", "\r\n") + "\n\n\n",  # duplicate after whitespace clean-up
        "03.txt": perturb(base[1], 3),
        "04.txt": base[1],  # near duplicate of 03
        "05.txt": base[2] + "\nWrite to ann@example.org or 10.0.0.1, phone +1 212-555-0199.",
        "06.txt": "*** START OF THE PROJECT GUTENBERG EBOOK X ***\n" + base[3] + "\n*** END OF THE PROJECT "
        "GUTENBERG EBOOK X ***\nlicence " * 3,
        "07.txt": "short",
        "08.txt": "}{#@!%^&*" * 30,
        "09.txt": "\n".join(["same line again and again"] * 30),
        # Insults in otherwise ordinary text (one phrase said 20 times would fail Gopher's rules first).
        "10.txt": make_text(310, 120)
        + " You idiot, shut up. Nobody wants you here, loser. I hate you, moron.",
    }
    write_docs(tmp_path / "c", docs)
    res = ingest(data_cfg, sources=[str(tmp_path / "c")], out=tmp_path / "out", ray=RAY)
    m = res.manifest
    assert m["dropped"] == {
        "exact_duplicate": 2,
        "near_duplicate": 1,
        "too_short": 1,
        "symbol_ratio": 1,
        "repeated_lines": 1,
        "toxicity": 1,
    }
    assert m["documents_kept"] == 4 and _balanced(m)
    kept = _docs(res.artifact)
    assert [d["source"].rsplit("/", 1)[-1] for d in kept] == ["00.txt", "03.txt", "05.txt", "06.txt"]
    assert "<EMAIL>" in kept[2]["text"] and "<IP_ADDRESS>" in kept[2]["text"] and "<PHONE>" in kept[2]["text"]
    assert m["modifications"]["pii_replaced"] == {"email": 1, "phone": 1, "ipv4": 1, "ipv6": 0}
    assert kept[3]["text"] == base[3] and m["modifications"]["gutenberg_stripped"] == 1
    assert m["dedup"]["exact_removed"] == 2 and m["dedup"]["near_removed"] == 1
    assert "Near duplicates removed: **1**" in res.datacard


def test_rerun_same_hash_and_artifact_root(tmp_path, data_cfg, ray_local):
    write_docs(tmp_path / "c", {f"{i}.txt": make_text(400 + i) for i in range(6)})
    a = ingest(data_cfg, sources=[str(tmp_path / "c")], artifact_root=tmp_path / "arts", ray=RAY)
    b = ingest(data_cfg, sources=[str(tmp_path / "c")], artifact_root=tmp_path / "arts", ray=RAY)
    assert a.artifact.sha256 == b.artifact.sha256
    assert a.artifact.path == tmp_path / "arts" / "corpus" / a.artifact.sha256[:16]
    assert "seconds" in a.artifact.metadata


def test_nothing_kept_and_missing_source_fail_clearly(tmp_path, data_cfg, ray_local):
    write_docs(tmp_path / "c", {"a.txt": "tiny"})
    with pytest.raises(EmptyCorpusError, match="kept no document"):
        ingest(data_cfg, sources=[str(tmp_path / "c")], out=tmp_path / "out", ray=RAY)
    assert not (tmp_path / "out").exists()
    with pytest.raises(SourceError, match="missing.txt"):
        ingest(data_cfg, sources=[str(tmp_path / "missing.txt")], out=tmp_path / "out", ray=RAY)
