"""catalog.artifacts on a real S3-compatible server: upload with the index last, open by URL into a
fresh cache, idempotent re-publish, interrupted uploads, corruption named by file."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from catalog import storage
from catalog.artifacts import INDEX, ArtifactError, open_artifact, publish
from tests.conftest import S3Server


def _write(staging_path: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (staging_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (staging_path / rel).write_text(text)


def _keys(s3: S3Server, prefix: str) -> dict[str, bytes]:
    client = boto3.client("s3")
    listed = client.list_objects_v2(Bucket=s3.bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"]: client.get_object(Bucket=s3.bucket, Key=o["Key"])["Body"].read() for o in listed}


def _root(s3: S3Server, tmp_path: Path) -> str:
    return s3.url(f"t-{tmp_path.name}")  # one prefix per test


def test_publish_uploads_and_a_fresh_cache_opens_by_url(s3_server: S3Server, tmp_path: Path, monkeypatch):
    root = _root(s3_server, tmp_path)
    monkeypatch.setenv("NIGHTSHIFT_ARTIFACT_CACHE", str(tmp_path / "cache-a"))
    with publish("corpus", root=root) as st:
        _write(st.path, {"manifest.json": "{}", "shards/docs-00000.jsonl": '{"text": "hi"}\n'})
        st.metadata["docs"] = 1
    ref = st.ref
    url = f"{root}/corpus/{ref.sha256[:16]}"
    assert ref.uri == ref.location == url
    assert (
        ref.path
        == tmp_path / "cache-a" / "s3" / s3_server.bucket / f"t-{tmp_path.name}" / "corpus" / ref.sha256[:16]
    )
    prefix = url.removeprefix(f"s3://{s3_server.bucket}/")
    objects = _keys(s3_server, prefix)
    assert set(objects) == {f"{prefix}/{n}" for n in ("manifest.json", "shards/docs-00000.jsonl", INDEX)}
    assert json.loads(objects[f"{prefix}/{INDEX}"])["sha256"] == ref.sha256
    assert not [p for p in ref.path.parent.iterdir() if p.name.startswith(".")]  # no staging debris
    # The cached copy is a plain artifact directory that knows where it came from.
    assert open_artifact(ref.path, kind="corpus").uri == url

    # Another machine: an empty cache, only the URL (as the catalog records it).
    monkeypatch.setenv("NIGHTSHIFT_ARTIFACT_CACHE", str(tmp_path / "cache-b"))
    other = open_artifact(url, kind="corpus")
    assert other.sha256 == ref.sha256 and other.files == ref.files and other.metadata == {"docs": 1}
    assert other.path.is_relative_to(tmp_path / "cache-b") and other.uri == url
    assert (other.path / "shards/docs-00000.jsonl").read_text() == '{"text": "hi"}\n'
    assert open_artifact(url + "/", kind="corpus").path == other.path  # served from the cache now
    with pytest.raises(ArtifactError, match="expected 'model'"):
        open_artifact(url, kind="model")


def test_republishing_the_same_content_uploads_nothing_new(s3_server, tmp_path, artifact_cache):
    root = _root(s3_server, tmp_path)
    with publish("tokens", root=root) as st:
        _write(st.path, {"train.bin": "abc"})
        st.metadata["run"] = 1
    with publish("tokens", root=root) as st2:
        _write(st2.path, {"train.bin": "abc"})
        st2.metadata["run"] = 2
    assert st2.ref.sha256 == st.ref.sha256 and st2.ref.location == st.ref.location
    # Like a local root: the first publication (its index, its metadata) is kept.
    assert st2.ref.metadata == {"run": 1}
    index = _keys(s3_server, st.ref.location.removeprefix(f"s3://{s3_server.bucket}/") + f"/{INDEX}")
    assert json.loads(next(iter(index.values())))["metadata"] == {"run": 1}


def test_an_interrupted_upload_is_never_opened_and_a_republish_completes_it(
    s3_server, tmp_path, artifact_cache, monkeypatch
):
    root = _root(s3_server, tmp_path)
    real_put = storage.ObjectStore.put

    def put_but_die_before_the_index(self, local_root, rels):
        rels = list(rels)
        if rels == [INDEX]:
            raise ConnectionError("network gone before the index went up")
        real_put(self, local_root, rels)

    monkeypatch.setattr(storage.ObjectStore, "put", put_but_die_before_the_index)
    with pytest.raises(ConnectionError), publish("model", root=root) as st:
        _write(st.path, {"model.safetensors": "weights", "config.json": "{}"})
    assert st.ref is None
    url = f"{root}/model/" + next(iter(_keys(s3_server, f"t-{tmp_path.name}/model/"))).split("/")[2]
    assert not list((artifact_cache / "s3").rglob(INDEX)), "nothing enters the cache on a failed publish"
    with pytest.raises(ArtifactError, match=r"no artifact\.json.*upload did not finish"):
        open_artifact(url)

    monkeypatch.setattr(storage.ObjectStore, "put", real_put)
    with publish("model", root=root) as st2:
        _write(st2.path, {"model.safetensors": "weights", "config.json": "{}"})
    assert st2.ref.location == url
    assert open_artifact(url, kind="model").sha256 == st2.ref.sha256


def test_a_damaged_remote_file_is_named(s3_server, tmp_path, artifact_cache, monkeypatch):
    root = _root(s3_server, tmp_path)
    with publish("tokens", root=root) as st:
        _write(st.path, {"train.bin": "abc", "val.bin": "def"})
    url = st.ref.location
    key = url.removeprefix(f"s3://{s3_server.bucket}/")
    client = boto3.client("s3")

    def fresh_open():
        monkeypatch.setenv("NIGHTSHIFT_ARTIFACT_CACHE", str(tmp_path / f"cache-{fresh_open.n}"))
        fresh_open.n += 1
        return open_artifact(url)

    fresh_open.n = 0
    client.put_object(Bucket=s3_server.bucket, Key=f"{key}/val.bin", Body=b"xyz")  # same size
    with pytest.raises(ArtifactError, match=r"val\.bin does not match its recorded sha256"):
        fresh_open()
    client.put_object(Bucket=s3_server.bucket, Key=f"{key}/val.bin", Body=b"longer")
    with pytest.raises(ArtifactError, match=r"val\.bin has 6 bytes"):
        fresh_open()
    client.delete_object(Bucket=s3_server.bucket, Key=f"{key}/val.bin")
    with pytest.raises(ArtifactError, match=r"val\.bin is missing"):
        fresh_open()
    client.put_object(Bucket=s3_server.bucket, Key=f"{key}/extra.txt", Body=b"?")
    with pytest.raises(ArtifactError, match=r"extra\.txt is not part of the artifact"):
        fresh_open()
    # A failed download leaves nothing in the cache to be mistaken for the artifact.
    assert not list(tmp_path.glob("cache-*/**/" + INDEX))
    # A damaged cached copy is fetched again rather than trusted.
    client.delete_object(Bucket=s3_server.bucket, Key=f"{key}/extra.txt")
    client.put_object(Bucket=s3_server.bucket, Key=f"{key}/val.bin", Body=b"def")
    good = fresh_open()
    (good.path / "train.bin").write_text("tampered")
    assert (open_artifact(url).path / "train.bin").read_text() == "abc"


def test_bad_destinations_are_clear_errors(s3_server, tmp_path, artifact_cache):
    with (
        pytest.raises(ValueError, match="dest must be a local directory"),
        publish("model", dest=s3_server.url("x")),
    ):
        pass
    with (
        pytest.raises(ArtifactError, match="holds no files"),
        publish("corpus", root=_root(s3_server, tmp_path)),
    ):
        pass
    with (
        pytest.raises(ValueError, match="not a usable object store URL"),
        publish("corpus", root="s3:///nobucket"),
    ):
        pass
