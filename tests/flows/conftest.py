from __future__ import annotations

import random

import pytest

WORDS = (
    "the night shift trains a model while the lab sleeps and every stage writes an artifact with a hash "
    "tokens flow from corpus to shards and the tracker records each run in the catalog for lineage"
).split()


def write_corpus(root, n_docs: int = 40, seed: int = 0):
    """Plain-text documents of generated English-like prose, plus one exact duplicate."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 16))) + "." for _ in range(12)]
        (root / f"doc{i:03d}.txt").write_text("\n".join(lines) + "\n")
    (root / "dup.txt").write_text((root / "doc000.txt").read_text())
    return root


@pytest.fixture(scope="session")
def prefect_server():
    """A real, temporary Prefect server for the session (Prefect's own test harness)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
