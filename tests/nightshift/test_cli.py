"""The `nightshift` console script: the same stage functions, without an orchestrator."""

from __future__ import annotations

import json

import pytest

from nightshift.cli import main
from tests.flows.conftest import write_corpus


def test_config_fields_lists_every_key_with_help(capsys):
    assert main(["config", "--fields"]) == 0
    out = capsys.readouterr().out
    assert "--data.vocab_size" in out and "BPE vocabulary size" in out


def test_config_prints_overrides(capsys):
    assert main(["config", "--preset", "small", "--data.vocab_size", "2048"]) == 0
    assert "vocab_size: 2048" in capsys.readouterr().out


def test_bad_config_exits_2_listing_every_problem(capsys):
    assert main(["config", "--model.n_head", "3", "--data.bogus", "1"]) == 2
    err = capsys.readouterr().err
    assert "model.n_embd" in err and "data.bogus" in err


def test_missing_source_fails_at_once_naming_it(tmp_path, capsys):
    missing = tmp_path / "nope.txt"
    assert main(["ingest", "--source", str(missing), "--out", str(tmp_path / "c"), "--no-track"]) == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_ingest_then_tokenize_without_tracking(tmp_path, capsys):
    src = write_corpus(tmp_path / "src", n_docs=20)
    corpus = tmp_path / "corpus"
    assert (
        main(["ingest", "--source", str(src), "--out", str(corpus), "--no-track", "--ray.num_cpus", "2"]) == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["documents_in"] == 21 and report["documents_kept"] == 20
    assert report["dropped"] == {"exact_duplicate": 1}
    assert main(["tokenize", "--corpus", str(corpus), "--out", str(tmp_path / "tok"), "--no-track"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stats"]["tokens"]["train"] > 0
    assert (tmp_path / "tok" / "tokenizer" / "tokenizer.json").is_file()


def test_evaluate_prints_the_verdict_and_exits_3_on_a_failed_gate(tmp_path, capsys, monkeypatch):
    from tests.serving.conftest import make_model_artifact

    monkeypatch.setenv("NIGHTSHIFT_HOME", str(tmp_path / "home"))
    a = make_model_artifact(tmp_path / "art", seed=1)
    b = make_model_artifact(tmp_path / "art", seed=2)
    args = ["evaluate", "--model", str(a.path), "--champion", str(b.path), "--no-track"]
    assert main([*args, "--out", str(tmp_path / "r1"), "--eval.max_perplexity_vs_unigram", "null"]) == 0
    out = capsys.readouterr().out
    assert "PASSED" in out and (tmp_path / "r1" / "REPORT.md").is_file()
    # An impossible threshold: the gate fails, and the exit status says so.
    assert main([*args, "--out", str(tmp_path / "r2"), "--eval.min_task_accuracy", "1.0"]) == 3
    assert "FAILED" in capsys.readouterr().out


def test_sft_then_dpo_from_the_command_line(tmp_path, capsys, monkeypatch):
    from tests.serving.conftest import make_model_artifact

    monkeypatch.setenv("NIGHTSHIFT_HOME", str(tmp_path / "home"))
    base = make_model_artifact(tmp_path / "art", seed=1, block_size=128)
    common = ["--no-track", "--model.block_size", "128", "--rlhf.sft.steps", "5", "--rlhf.dpo.steps", "3"]
    assert main(["sft", "--model", str(base.path), "--out", str(tmp_path / "sft"), *common]) == 0
    sft = json.loads(capsys.readouterr().out)
    assert main(["dpo", "--model", sft["artifact"], "--out", str(tmp_path / "dpo"), *common]) == 0
    dpo = json.loads(capsys.readouterr().out)
    assert dpo["sha256"] != sft["sha256"] and dpo["preferences"]


def test_keys_create_list_revoke(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    over = ["--tracking.catalog_url", url]
    assert main(["keys", "create", "--name", "ann", "--role", "labeller", *over]) == 0
    out, err = capsys.readouterr()
    key = out.strip()
    assert key.startswith("ns-") and "labeller key 'ann'" in err and key not in err
    assert main(["keys", "create", "--name", "ann", *over]) == 2  # names are unique
    assert "a key named 'ann' exists" in capsys.readouterr().err
    assert main(["keys", "create", "--name", "bad name!", *over]) == 2
    assert main(["keys", "list", *over]) == 0
    listed = capsys.readouterr().out
    assert "ann" in listed and "labeller" in listed and "active" in listed and key not in listed
    assert main(["keys", "revoke", "ann", *over]) == 0
    assert main(["keys", "list", *over]) == 0
    assert "revoked" in capsys.readouterr().out
    from catalog.keys import digest, lookup

    assert lookup(url, digest(key)) is None
