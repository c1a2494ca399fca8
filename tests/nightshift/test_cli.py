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


def test_verb_help_lists_its_config_keys_with_preset_values_and_two_examples(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["pretrain", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "config keys it reads" in out and "values of preset 'tiny'" in out
    assert "--train.max_steps" in out and "--model.n_layer" in out and "--serve.port" not in out
    # tiny.yaml's value, not the field's default
    assert any(line.split()[:2] == ["--train.max_steps", "20"] for line in out.splitlines())
    examples = out.split("examples:\n", 1)[1].strip().splitlines()
    assert len(examples) == 2 and all(e.strip().startswith("nightshift pretrain") for e in examples)


def test_every_example_names_real_keys_and_every_verb_has_help_keys():
    import re

    from core.config import describe_fields
    from nightshift.cli import build_parser
    from nightshift.cli_help import EXAMPLES, VERB_KEYS, verb_keys

    known = {k for k, _, _ in describe_fields()}
    for verb, examples in EXAMPLES.items():
        for key in re.findall(r"--([a-z_]+\.[a-z_.]+)", " ".join(examples)):
            assert key in known, (verb, key)
    verbs = build_parser()._subparsers._group_actions[0].choices
    assert set(EXAMPLES) | {"infra"} == set(verbs)
    for verb in VERB_KEYS:
        assert verb_keys(verb, "tiny"), verb


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("nightshift 0.")


def test_mistyped_verb_and_key_get_a_did_you_mean(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["pretrian"])
    assert exit_.value.code == 2
    assert "did you mean 'pretrain'?" in capsys.readouterr().err
    assert main(["config", "--train.max_step", "5"]) == 2
    err = capsys.readouterr().err
    assert "train.max_step: unknown key; did you mean 'train.max_steps'?" in err
    assert "nightshift config --fields" in err and "--help-fields" not in err


def test_stack_error_is_one_message_without_traceback(tmp_path, capsys, monkeypatch):
    import socket

    monkeypatch.setenv("NIGHTSHIFT_HOME", str(tmp_path / "home"))
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert main(["up", "--no-deploy", "--stack.prefect_port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot start the stack") and "--stack.prefect_port" in err
    assert "Traceback" not in err


def test_checkpoint_and_wrapped_errors_are_expected_and_a_missing_extra_names_its_fix():
    from nightshift.cli_help import is_expected, missing_extra
    from training.data.sources import SourceError
    from training.pretrain.checkpoint import CheckpointError

    assert is_expected(CheckpointError("x")) and not is_expected(RuntimeError("x"))

    class RayTaskErrorLike(RuntimeError, SourceError):  # Ray's wrapper subclasses the cause's class
        pass

    assert is_expected(RayTaskErrorLike("x"))
    hint = missing_extra(ModuleNotFoundError("No module named 'transformers'", name="transformers"))
    assert "uv sync --extra hf" in hint
    assert missing_extra(ModuleNotFoundError("x", name="numpyy")) is None


def test_demo_archive_with_a_wrong_hash_is_refused_and_not_written(tmp_path, monkeypatch, capsys):
    import http.server
    import threading

    from nightshift.cli import DEMO_ARCHIVE

    class Index(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            base = f"http://127.0.0.1:{self.server.server_port}"
            body = (
                json.dumps({"files": [{"filename": DEMO_ARCHIVE, "url": f"{base}/f/{DEMO_ARCHIVE}"}]})
                if self.path.startswith("/simple/")
                else "not the archive"
            ).encode()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Index)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_port}/simple")
        monkeypatch.setenv("NIGHTSHIFT_HOME", str(tmp_path / "home"))
        assert main(["fetch-data"]) == 2
    finally:
        server.shutdown()
    assert "is not the pinned" in capsys.readouterr().err
    assert not (tmp_path / "home" / "sources" / DEMO_ARCHIVE).exists()
