"""A live Ray Serve deployment of a tiny model for the API tests (started once per session)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch

from core.model_config import ModelConfig
from gpt.model import GPT
from gpt.model_io import save_model
from gpt.tokenizer import train_tokenizer
from serving.auth import digest

KEY = "ns-test-key-0123456789"
TEXT = "to be or not to be that is the question whether tis nobler in the mind to suffer " * 60


def make_model_artifact(root: Path, seed: int = 0, block_size: int = 64):
    """A tiny random GPT with a real tokenizer, published as a ``model`` artifact under ``root``."""
    tok = train_tokenizer([TEXT], vocab_size=300)
    torch.manual_seed(seed)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=block_size, vocab_size=300))
    return save_model(model, tok, root=root)


@dataclass
class Live:
    url: str  # http://127.0.0.1:<port>
    catalog_url: str
    model_sha: str


def wait_http(url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer 200 within {timeout} s")


@pytest.fixture(scope="session")
def live(serve_port, tmp_path_factory) -> Iterator[Live]:
    from ray import serve

    from catalog.db import migrate
    from serving.app import build_app

    root = tmp_path_factory.mktemp("serve")
    ref = make_model_artifact(root / "artifacts")
    catalog_url = f"sqlite:///{root}/catalog.db"
    migrate(catalog_url)
    args = {
        "model": str(ref.path),
        "catalog_url": catalog_url,
        "serve": {
            "api_key_hashes": [digest(KEY)],
            "api_key_file": str(root / "no-keys"),
            "key_cache_s": 0.5,
            "completions_per_minute": 0,  # the queue tests send bursts; test_feedback_keys sets its own
            "feedback_per_minute": 30,
            "rate_limit_burst_s": 10,
            "max_batch": 4,
            "max_waiting": 4,
            "max_body_bytes": 20_000,
            "torch_threads": 1,
            "replica_cpus": 0.1,
        },
    }
    serve.run(build_app(args), name="api-test", route_prefix="/api-test")
    url = f"http://127.0.0.1:{serve_port}/api-test"
    wait_http(url + "/health")
    yield Live(url, catalog_url, ref.sha256)
    serve.delete("api-test")
