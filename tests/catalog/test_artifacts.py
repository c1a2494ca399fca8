"""catalog.artifacts: publish, reuse by hash, replace at dest, corruption detection, atomicity."""

from __future__ import annotations

from pathlib import Path

import pytest

from catalog.artifacts import INDEX, ArtifactError, open_artifact, publish


def _write(staging_path: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (staging_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (staging_path / rel).write_text(text)


def test_publish_and_reuse_by_hash(tmp_path: Path) -> None:
    with publish("corpus", root=tmp_path) as st:
        _write(st.path, {"a.txt": "hello", "shards/0.txt": "world"})
        st.metadata["docs"] = 2
    ref = st.ref
    assert ref is not None and ref.path == tmp_path / "corpus" / ref.sha256[:16]
    assert set(ref.files) == {"a.txt", "shards/0.txt"} and ref.size_bytes == 10
    assert open_artifact(ref.path, kind="corpus").metadata == {"docs": 2}

    with publish("corpus", root=tmp_path) as st2:
        _write(st2.path, {"a.txt": "hello", "shards/0.txt": "world"})
    assert st2.ref is not None and st2.ref.sha256 == ref.sha256 and st2.ref.path == ref.path
    assert [p.name for p in (tmp_path / "corpus").iterdir()] == [ref.path.name]  # no staging debris


def test_publish_replaces_at_dest(tmp_path: Path) -> None:
    dest = tmp_path / "model"
    with publish("model", dest=dest) as st:
        _write(st.path, {"w.bin": "v1", "old.txt": "gone soon"})
    with publish("model", dest=dest) as st2:
        _write(st2.path, {"w.bin": "v2"})
    assert st.ref is not None and st2.ref is not None and st.ref.sha256 != st2.ref.sha256
    ref = open_artifact(dest, kind="model")
    assert ref.sha256 == st2.ref.sha256 and set(ref.files) == {"w.bin"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_corruption_is_detected_and_names_the_file(tmp_path: Path) -> None:
    with publish("tokens", root=tmp_path) as st:
        _write(st.path, {"train.bin": "abc", "val.bin": "def"})
    assert st.ref is not None
    (st.ref.path / "val.bin").write_text("tampered")
    with pytest.raises(ArtifactError, match="val.bin"):
        open_artifact(st.ref.path)
    (st.ref.path / "val.bin").unlink()
    with pytest.raises(ArtifactError, match="val.bin is missing"):
        open_artifact(st.ref.path)
    with pytest.raises(ArtifactError, match="expected 'model'"):
        open_artifact(st.ref.path, kind="model", verify=False)
    (st.ref.path / INDEX).write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupt"):
        open_artifact(st.ref.path)


def test_nothing_published_on_exception(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    with publish("model", dest=dest) as st:
        _write(st.path, {"w.bin": "good"})
    with pytest.raises(RuntimeError), publish("model", dest=dest) as st2:
        _write(st2.path, {"w.bin": "half-written"})
        raise RuntimeError("stage crashed")
    assert st2.ref is None
    assert open_artifact(dest).sha256 == st.ref.sha256  # the previous artifact survives intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(ArtifactError, match="holds no files"), publish("corpus", root=tmp_path):
        pass
    assert list((tmp_path / "corpus").iterdir()) == []


def test_content_files_are_fsynced_before_the_rename(tmp_path: Path, monkeypatch) -> None:
    import os

    synced: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    with publish("corpus", root=tmp_path) as st:
        _write(st.path, {"a.txt": "hello", "shards/0.txt": "world"})
        staged = st.path
    assert {str(staged / "a.txt"), str(staged / "shards" / "0.txt")} <= set(synced)
    # ... and before the index, the commit marker, is written.
    assert synced.index(str(staged / "a.txt")) < synced.index(str(staged / INDEX))


def test_a_corrupt_artifact_at_its_address_is_replaced_and_named(tmp_path: Path, caplog) -> None:
    files = {"a.txt": "hello", "b.txt": "world"}
    with publish("corpus", root=tmp_path) as st:
        _write(st.path, files)
    ref = st.ref
    (ref.path / "a.txt").write_text("HELLO")  # bit rot, a bad disk, a hand edit
    with pytest.raises(ArtifactError, match="a.txt does not match"):
        open_artifact(ref.path)
    with publish("corpus", root=tmp_path) as st2:  # the re-run stages the same content again
        _write(st2.path, files)
    assert st2.ref.path == ref.path and open_artifact(ref.path).sha256 == ref.sha256
    assert (ref.path / "a.txt").read_text() == "hello"
    assert any(
        "replacing the corrupt artifact at" in r.message and str(ref.path) in r.message
        for r in caplog.records
    )


def test_reads_check_the_hash_the_catalog_recorded(tmp_path: Path, catalog_url: str) -> None:
    from catalog import db
    from catalog.lineage import open_recorded, record_artifact
    from catalog.models import Artifact

    with publish("corpus", root=tmp_path) as a:
        _write(a.path, {"a.txt": "one"})
    with publish("corpus", root=tmp_path) as b:
        _write(b.path, {"a.txt": "two"})
    db.migrate(catalog_url)
    with db.session_scope(catalog_url) as s:
        row = record_artifact(s, a.ref)
        assert open_recorded(row).sha256 == a.ref.sha256
        # Another complete, self-consistent artifact moved to that address: its own index verifies ...
        moved = Artifact(kind="corpus", sha256=a.ref.sha256, uri=b.ref.uri, size_bytes=3, meta={})
        assert open_artifact(b.ref.path).sha256 == b.ref.sha256
        # ... but not against what the catalog recorded for the address.
        with pytest.raises(ArtifactError, match="the catalog recorded"):
            open_recorded(moved)
