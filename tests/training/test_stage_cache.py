"""Stage caching: hit, miss and invalidation, on the real ingest and tokenize stages, a real MLflow
server and a real catalog; and which config each stage's identity reads."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

from catalog.memo import list_memos
from core.config import Config, load_config
from flows.common import tracker_for
from tests.flows.conftest import write_corpus
from training import stage_cache as cache

pytestmark = pytest.mark.slow


@pytest.fixture
def cfg(tmp_path: Path, mlflow_server: str, catalog_url: str) -> Config:
    src = write_corpus(tmp_path / "src", n_docs=12)
    return load_config(
        "tiny",
        {
            "data.sources": [str(src)],
            "tracking.mlflow_uri": mlflow_server,
            "tracking.catalog_url": catalog_url,
            "tracking.artifact_root": str(tmp_path / "artifacts"),
            "tracking.experiment": f"cache-{uuid.uuid4().hex[:8]}",
            "ray.num_cpus": 2,
        },
    )


def _night(cfg: Config, **night: object):
    """Ingest then tokenize through the cache as one tracked night; returns both results and the
    MLflow ids of the two stage runs."""
    cfg = cfg.model_copy(update={"night": cfg.night.model_copy(update=night)})
    with tracker_for(cfg).pipeline("pretrain", config={}) as pipe:
        with pipe.stage("ingest") as run:
            corpus = cache.ingest(cfg, run)
            ingest_id = run.mlflow_run_id
        with pipe.stage("tokenize") as run:
            tokens = cache.tokenize(cfg, run, corpus.artifact)
            tokenize_id = run.mlflow_run_id
    return corpus, tokens, ingest_id, tokenize_id


def test_a_second_night_reuses_ingest_and_tokenize_and_says_where_from(cfg: Config) -> None:
    corpus, tokens, ingest_1, tokenize_1 = _night(cfg)
    again, tokens_2, ingest_2, tokenize_2 = _night(cfg)
    assert again.artifact.sha256 == corpus.artifact.sha256 and again.manifest == corpus.manifest
    assert again.datacard == corpus.datacard
    assert (tokens_2.tokens.sha256, tokens_2.tokenizer.sha256) == (
        tokens.tokens.sha256,
        tokens.tokenizer.sha256,
    )
    assert tokens_2.stats == tokens.stats
    client = MlflowClient(cfg.tracking.mlflow_uri)
    for first, second in ((ingest_1, ingest_2), (tokenize_1, tokenize_2)):
        run = client.get_run(second)
        assert run.data.tags["nightshift.cached_from"] == first
        assert run.data.metrics["cached"] == 1.0
        assert "nightshift.cached_from" not in client.get_run(first).data.tags
        assert "CACHED.md" in {a.path for a in client.list_artifacts(second)}
        # The producing run's figures are on the cached run too, so nights compare in the UI.
        assert (
            run.data.metrics.items()
            >= {k: v for k, v in client.get_run(first).data.metrics.items() if k != "cached"}.items()
        )
    assert client.get_run(ingest_2).data.metrics["documents_kept"] == corpus.manifest["documents_kept"]
    # The reused artifacts are inputs of the cached stage run: the night's lineage stays whole.
    assert client.get_run(tokenize_2).inputs.dataset_inputs
    assert {m.stage for m in list_memos(cfg.tracking.catalog_url)} == {"ingest", "tokenize"}


def test_changed_source_content_and_changed_config_miss(cfg: Config) -> None:
    corpus, tokens, *_ = _night(cfg)
    # The same path with other bytes is a new input: ingest runs again, and tokenize on its output.
    src = Path(cfg.data.sources[0]) / "doc001.txt"
    src.write_text(src.read_text() + "\nthe lab wakes and the model has learned a new line.\n")
    corpus_2, tokens_2, ingest_id, tokenize_id = _night(cfg)
    client = MlflowClient(cfg.tracking.mlflow_uri)
    assert corpus_2.artifact.sha256 != corpus.artifact.sha256
    assert tokens_2.tokens.sha256 != tokens.tokens.sha256
    assert "nightshift.cached_from" not in client.get_run(ingest_id).data.tags
    assert "nightshift.cached_from" not in client.get_run(tokenize_id).data.tags
    # A tokenizer setting changes the tokenize identity only.
    bigger = cfg.model_copy(
        update={"data": cfg.data.model_copy(update={"vocab_size": cfg.data.vocab_size + 64})}
    )
    _, _, ingest_id, tokenize_id = _night(bigger)
    assert client.get_run(ingest_id).data.tags.get("nightshift.cached_from")
    assert "nightshift.cached_from" not in client.get_run(tokenize_id).data.tags


def test_a_damaged_cached_artifact_is_rebuilt_and_named(
    cfg: Config, caplog: pytest.LogCaptureFixture
) -> None:
    _, tokens, *_ = _night(cfg)
    shard = next(
        p for p in sorted(tokens.tokens.path.rglob("*")) if p.is_file() and p.name != "artifact.json"
    )
    shard.write_bytes(shard.read_bytes()[:-8])  # truncated on disk
    with caplog.at_level(logging.WARNING, logger="catalog.memo"):
        _, rebuilt, _, tokenize_id = _night(cfg)
    assert any(
        "tokenize" in r.message
        and tokens.tokens.sha256[:16] in r.message
        and "failed verification" in r.message
        for r in caplog.records
    ), [r.message for r in caplog.records]
    assert (
        "nightshift.cached_from" not in MlflowClient(cfg.tracking.mlflow_uri).get_run(tokenize_id).data.tags
    )
    # The same content again, repaired at its address, and the memo now names the run that rebuilt it.
    assert rebuilt.tokens.sha256 == tokens.tokens.sha256
    assert list_memos(cfg.tracking.catalog_url, "tokenize")[0].mlflow_run_id == tokenize_id
    assert cache.memos.recall(
        cfg.tracking.catalog_url, list_memos(cfg.tracking.catalog_url, "tokenize")[0].key
    )


def test_no_cache_and_rerun_force_a_stage(cfg: Config) -> None:
    _night(cfg)
    client = MlflowClient(cfg.tracking.mlflow_uri)
    _, _, ingest_id, tokenize_id = _night(cfg, rerun=["tokenize"])
    assert client.get_run(ingest_id).data.tags.get("nightshift.cached_from")
    assert "nightshift.cached_from" not in client.get_run(tokenize_id).data.tags
    _, _, ingest_id, tokenize_id = _night(cfg, cache=False)
    assert "nightshift.cached_from" not in client.get_run(ingest_id).data.tags
    assert "nightshift.cached_from" not in client.get_run(tokenize_id).data.tags


def test_each_stage_identity_reads_its_own_config_slice(tmp_path: Path) -> None:
    from catalog.artifacts import ArtifactRef

    cfg = load_config("tiny", {"tracking.catalog_url": f"sqlite:///{tmp_path / 'c.db'}"})
    tokens = ArtifactRef("tokens", tmp_path, "a" * 64)
    tok = ArtifactRef("tokenizer", tmp_path, "b" * 64)
    model = ArtifactRef("model", tmp_path, "c" * 64)

    def with_(**sections: dict) -> Config:
        return cfg.model_copy(update={k: getattr(cfg, k).model_copy(update=v) for k, v in sections.items()})

    base = cache.pretrain_key(cfg, tokens, tok)
    assert cache.pretrain_key(with_(train={"max_steps": 7}), tokens, tok) != base
    assert cache.pretrain_key(with_(eval={"batch_size": 3}), tokens, tok) == base  # gates: not read
    assert cache.pretrain_key(cfg, ArtifactRef("tokens", tmp_path, "d" * 64), tok) != base
    assert cache.pretrain_key(cfg.model_copy(update={"seed": 2}), tokens, tok) != base
    # A warm start's parent and replayed tokens are inputs: a new champion is a new pretraining.
    parent = ArtifactRef("model", tmp_path, "e" * 64)
    warm = cache.pretrain_key(cfg, tokens, tok, parent)
    assert warm != base and cache.pretrain_key(cfg, tokens, tok, parent, tokens) != warm
    assert cache.evaluate_key(with_(eval={"batch_size": 3}), model, tokens, None, None) != cache.evaluate_key(
        cfg, model, tokens, None, None
    )
    assert cache.tokenize_key(with_(data={"min_chars": 5}), tokens) == cache.tokenize_key(cfg, tokens)
    assert cache.sft_key(cfg, model, tokens) != cache.sft_key(
        with_(rlhf={"algorithm": "grpo" if cfg.rlhf.algorithm != "grpo" else "dpo"}), model, tokens
    )


def test_a_salt_bump_invalidates_only_its_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from catalog.artifacts import ArtifactRef

    cfg = load_config("tiny", {"tracking.catalog_url": f"sqlite:///{tmp_path / 'c.db'}"})
    tokens = ArtifactRef("tokens", tmp_path, "a" * 64)
    tok = ArtifactRef("tokenizer", tmp_path, "b" * 64)
    pre, tk = cache.pretrain_key(cfg, tokens, tok), cache.tokenize_key(cfg, tokens)
    monkeypatch.setitem(cache.SALT, "pretrain", cache.SALT["pretrain"] + 1)
    assert cache.pretrain_key(cfg, tokens, tok) != pre and cache.tokenize_key(cfg, tokens) == tk


def test_rerun_names_only_stages_that_cache() -> None:
    from core.config_base import ConfigError

    with pytest.raises(ConfigError, match=r"night.rerun: unknown stage 'deploy'"):
        load_config("tiny", {"night.rerun": ["deploy"]})


def test_reuse_keeps_the_champions_tokenizer_on_a_new_corpus(cfg: Config, tmp_path: Path) -> None:
    import shutil

    from catalog.artifacts import publish

    _, tokens, *_ = _night(cfg)
    # The champion: a model artifact holds the tokenizer it was trained with.
    with publish("model", root=tmp_path / "champion") as st:
        shutil.copyfile(tokens.tokenizer.path / "tokenizer.json", st.path / "tokenizer.json")
    champion = st.ref
    src = Path(cfg.data.sources[0])
    (src / "new.txt").write_text(
        "A new night brings new words: lanterns, harbours and quiet orchards by the river bend.\n"
        "Sailors mend their nets while gulls circle over the grey stones of the northern pier.\n"
        "Every morning the baker counts loaves, and the miller weighs flour for the coming week.\n"
    )
    with tracker_for(cfg).pipeline("pretrain", config={}) as pipe:
        with pipe.stage("ingest") as run:
            corpus = cache.ingest(cfg, run)
        with pipe.stage("tokenize") as run:
            reused = cache.tokenize(cfg, run, corpus.artifact, champion)
            reuse_run = run.mlflow_run_id
        with pipe.stage("tokenize") as run:
            cache.tokenize(cfg, run, corpus.artifact)
    assert reused.tokenizer.sha256 == tokens.tokenizer.sha256  # the same file, byte for byte
    assert reused.tokens.sha256 != tokens.tokens.sha256  # tonight's corpus, encoded with it
    params = MlflowClient(cfg.tracking.mlflow_uri).get_run(reuse_run).data.params
    assert params["tokenizer_source"] == f"champion model {champion.sha256[:16]}"
    assert MlflowClient(cfg.tracking.mlflow_uri).get_run(run.mlflow_run_id).data.params[
        "tokenizer_source"
    ] == ("trained on the corpus")


def test_a_night_keeps_the_parent_it_chose_when_run_again(cfg: Config, tmp_path: Path) -> None:
    """The warm-start parent is chosen once per night identity: a re-run continues from the same
    model even after the night's own candidate became the champion."""
    from catalog.artifacts import publish

    _, tokens, *_ = _night(cfg)

    def model(name: str):
        with publish("model", root=tmp_path / name) as st:
            (st.path / "model.safetensors").write_bytes(name.encode())
        return st.ref

    first, later = model("first"), model("later")

    def choose(c: Config, champion) -> object:
        with tracker_for(c).pipeline("pretrain", config={}) as pipe, pipe.stage("pretrain") as run:
            return cache.parent_of_night(c, run, tokens.tokens, tokens.tokenizer, lambda: champion)

    assert choose(cfg, first).sha256 == first.sha256
    assert choose(cfg, later).sha256 == first.sha256  # the same night again: the same parent
    assert choose(cfg.model_copy(update={"seed": cfg.seed + 1}), later).sha256 == later.sha256
    forced = cfg.model_copy(update={"night": cfg.night.model_copy(update={"rerun": ["pretrain"]})})
    assert choose(forced, None) is None  # forcing pretrain chooses again (here: scratch)
    assert choose(cfg, later) is None  # and that choice is the night's now
