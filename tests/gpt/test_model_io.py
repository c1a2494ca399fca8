"""The ``model`` artifact (save/load, verification, vocab checks) and its MLflow pyfunc flavour."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from catalog.artifacts import ArtifactError
from core.model_config import ModelConfig
from gpt.model import GPT
from gpt.model_io import ModelArtifactError, load_model, save_model
from gpt.tokenizer import train_tokenizer

CFG = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=320)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["hello world, the cat sat on the mat by the door. " * 40], vocab_size=300)


@pytest.fixture
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(CFG).eval()


def test_save_load_round_trip(tmp_path: Path, model: GPT, tokenizer) -> None:
    ref = save_model(model, tokenizer, root=tmp_path, metadata={"step": 20, "val_loss": 4.2})
    assert ref.kind == "model" and ref.path.parent == tmp_path / "model"
    assert set(ref.files) == {"model.safetensors", "config.json", "tokenizer.json"}
    assert ref.metadata["step"] == 20 and ref.metadata["num_params"] == model.num_params(non_embedding=False)
    config = json.loads((ref.path / "config.json").read_text())
    assert config == {"format": "nightshift.gpt/1", **CFG.model_dump()}

    m2, tok2, ref2 = load_model(ref.path)
    assert ref2.sha256 == ref.sha256 and m2.cfg == CFG and not m2.training
    assert m2.lm_head.weight is m2.transformer.wte.weight
    assert tok2.encode("the cat").ids == tokenizer.encode("the cat").ids
    idx = torch.randint(0, 300, (2, 16))
    with torch.no_grad():
        assert torch.equal(model(idx)[0], m2(idx)[0])


def test_tied_weights_stored_once_and_no_pickle(tmp_path: Path, model: GPT, tokenizer) -> None:
    from safetensors import safe_open

    ref = save_model(model, tokenizer, root=tmp_path)
    with safe_open(str(ref.path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "lm_head.weight" not in keys and "transformer.wte.weight" in keys
    assert keys == set(model.state_dict()) - {"lm_head.weight"}


def test_same_model_same_artifact(tmp_path: Path, model: GPT, tokenizer) -> None:
    a = save_model(model, tokenizer, root=tmp_path, metadata={"run": 1})
    b = save_model(model, tokenizer, root=tmp_path, metadata={"run": 2})
    assert a.sha256 == b.sha256 and a.path == b.path  # metadata is not part of the identity


def test_tampered_weights_are_rejected(tmp_path: Path, model: GPT, tokenizer) -> None:
    ref = save_model(model, tokenizer, dest=tmp_path / "m")
    data = bytearray((ref.path / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (ref.path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="model.safetensors"):
        load_model(ref)


def test_tokenizer_larger_than_the_vocab_is_a_clear_error(tmp_path: Path, tokenizer) -> None:
    small = GPT(CFG.model_copy(update={"vocab_size": 260}))
    with pytest.raises(ModelArtifactError, match="vocab_size is 260"):
        save_model(small, tokenizer, root=tmp_path)
    # A config edited after the fact is caught on load too.
    ref = save_model(GPT(CFG), tokenizer, dest=tmp_path / "m")
    cfg = json.loads((ref.path / "config.json").read_text())
    (ref.path / "config.json").write_text(json.dumps({**cfg, "vocab_size": 260}))
    with pytest.raises(ModelArtifactError, match="tokenizer has"):
        load_model(ref, verify=False)


def test_weights_that_do_not_fit_the_config_are_rejected(tmp_path: Path, model: GPT, tokenizer) -> None:
    ref = save_model(model, tokenizer, dest=tmp_path / "m")
    cfg = json.loads((ref.path / "config.json").read_text())
    (ref.path / "config.json").write_text(json.dumps({**cfg, "n_layer": 3}))
    with pytest.raises(ModelArtifactError, match="missing"):
        load_model(ref, verify=False)


def test_loads_a_tokenizer_artifact_path(tmp_path: Path, model: GPT, tokenizer) -> None:
    from catalog.artifacts import publish

    with publish("tokenizer", root=tmp_path) as st:
        tokenizer.save(str(st.path / "tokenizer.json"))
    assert st.ref is not None
    ref = save_model(model, st.ref, root=tmp_path)
    assert (ref.path / "tokenizer.json").read_bytes() == (st.ref.path / "tokenizer.json").read_bytes()


@pytest.mark.slow
def test_mlflow_pyfunc_round_trip(tmp_path: Path, model: GPT, tokenizer, mlflow_server: str) -> None:
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    from training.mlflow_model import input_example, log_model

    ref = save_model(model, tokenizer, root=tmp_path)
    client = MlflowClient(mlflow_server)
    exp = client.create_experiment(f"model-io-{tmp_path.name}")
    run = client.create_run(exp)
    uri = log_model(
        ref, run_id=run.info.run_id, tracking_uri=mlflow_server, registered_model_name="nightshift-gpt-test"
    )
    assert client.get_run(run.info.run_id).info.status == "RUNNING"  # the stage run stays open
    outputs = client.get_run(run.info.run_id).outputs.model_outputs
    assert [o.model_id for o in outputs] == [uri.removeprefix("models:/")]

    mlflow.set_tracking_uri(mlflow_server)
    loaded = mlflow.pyfunc.load_model(uri)
    params = {"max_new_tokens": 5, "seed": 0}
    a = loaded.predict(pd.DataFrame({"prompt": ["hello"]}), params=params)
    b = loaded.predict(pd.DataFrame({"prompt": ["hello"]}), params=params)
    assert isinstance(a, list) and len(a) == 1 and isinstance(a[0], str)
    assert a == b
    two = loaded.predict({"prompt": ["hello", ""]}, params={**params, "temperature": 0.0})
    assert len(two) == 2
    # The logged model shows how to call it: an input example with params, which predict takes.
    example, example_params = input_example()
    assert list(loaded.input_example["prompt"]) == example["prompt"]
    assert len(loaded.predict(loaded.input_example, params=example_params)) == len(example["prompt"])
    version = mlflow.pyfunc.load_model("models:/nightshift-gpt-test/1")
    assert version.predict(pd.DataFrame({"prompt": ["hello"]}), params=params) == a
