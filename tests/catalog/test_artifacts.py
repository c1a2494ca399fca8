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
