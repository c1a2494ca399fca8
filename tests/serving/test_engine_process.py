"""The engine in its own process gives what the in-process engine gives, and fails loudly."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from gpt.model_io import load_model
from serving.engine import Delta, Engine, QueueFull, SamplingParams
from serving.engine_process import EngineProcess
from tests.serving.conftest import TEXT, make_model_artifact


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return make_model_artifact(tmp_path_factory.mktemp("engine-process"))


@pytest.fixture(scope="module")
def local(artifact):
    model, tok, _ = load_model(artifact.path)
    eng = Engine(model, tok, max_batch=4).start()
    yield eng, tok
    eng.stop()


@pytest.fixture
def remote(artifact):
    eng = EngineProcess(artifact.path, block_size=64, max_batch=4, max_waiting=8).start()
    yield eng
    eng.stop()


def prompts(tok, k):
    words = TEXT.split()
    return [tok.encode(" ".join(words[i : i + 2 + 3 * i])).ids for i in range(k)]


def run_all(eng, ps, params):
    results: dict[int, Delta] = {}

    def run(i):
        results[i] = eng.generate(ps[i], params[i])[0]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(ps))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_same_tokens_and_text_as_the_engine_in_this_process(local, remote):
    eng, tok = local
    ps = prompts(tok, 6)  # more requests than slots: some wait in the child's queue
    params = [
        SamplingParams(max_tokens=6 + 3 * i, temperature=0 if i % 2 else 0.9, top_p=0.9, seed=i)
        for i in range(len(ps))
    ]
    here, there = run_all(eng, ps, params), run_all(remote, ps, params)
    for i in range(len(ps)):
        assert there[i].token_ids == here[i].token_ids, i
        assert there[i].text == here[i].text and there[i].finish_reason == here[i].finish_reason
    lp = remote.generate(ps[0], SamplingParams(max_tokens=3, temperature=0, logprobs=2))[0]
    assert (
        lp.logprobs
        == eng.generate(ps[0], SamplingParams(max_tokens=3, temperature=0, logprobs=2))[0].logprobs
    )
    two = remote.generate(ps[1], SamplingParams(max_tokens=5, seed=3), n=2)
    assert [d.index for d in two] == [0, 1] and all(d.completion_tokens == 5 for d in two)
    stats = remote.stats()
    assert stats["running"] == 0 and stats["waiting"] == 0 and stats["tokens_generated"] > 0


def test_queue_bound_bad_requests_and_cancel(artifact, local):
    _, tok = local
    p = prompts(tok, 1)[0]
    eng = EngineProcess(artifact.path, block_size=64, max_batch=1, max_waiting=1).start()
    try:
        with pytest.raises(ValueError, match="exceeds the context"):
            eng.submit(p, SamplingParams(max_tokens=64), lambda d: None)
        with pytest.raises(ValueError, match="exceeds the engine's batch"):
            eng.submit(p, SamplingParams(max_tokens=4), lambda d: None, n=2)
        first: list[Delta] = []
        running = eng.submit(p, SamplingParams(max_tokens=60 - len(p)), first.append)
        deadline = time.monotonic() + 30
        while not first and time.monotonic() < deadline:
            time.sleep(0.01)
        assert first, "the first request never started"
        queued = eng.submit(p, SamplingParams(max_tokens=4), lambda d: None)  # waits for the one slot
        with pytest.raises(QueueFull):
            eng.submit(p, SamplingParams(max_tokens=4), lambda d: None)
        eng.cancel(queued)
        eng.cancel(running)  # leaves the child's batch at its next step
        for _ in range(300):
            if eng.stats()["running"] == 0:
                break
            time.sleep(0.01)
        assert eng.stats() | {"steps": 0, "tokens_generated": 0} == {
            "running": 0, "waiting": 0, "steps": 0, "tokens_generated": 0
        }  # fmt: skip
        assert len(first) < 60 - len(p)
        # The slot is free again.
        assert eng.generate(p, SamplingParams(max_tokens=3))[0].completion_tokens == 3
    finally:
        eng.stop()


def test_a_dead_engine_process_fails_its_requests_and_refuses_new_ones(artifact, local):
    _, tok = local
    p = prompts(tok, 1)[0]
    eng = EngineProcess(artifact.path, block_size=64, max_batch=2).start()
    try:
        got: list[Delta] = []
        done = threading.Event()

        def sink(d: Delta) -> None:
            got.append(d)
            if d.finish_reason:
                done.set()

        eng.submit(p, SamplingParams(max_tokens=60 - len(p)), sink)
        while not got:
            time.sleep(0.01)
        os.kill(eng._proc.pid, signal.SIGKILL)
        assert done.wait(10), "the request was left hanging"
        assert got[-1].finish_reason == "error"
        assert "engine process exited" in str(eng.error)
        with pytest.raises(RuntimeError, match="engine failed"):
            eng.submit(p, SamplingParams(max_tokens=3), lambda d: None)
    finally:
        eng.stop()


def test_stop_ends_the_child_and_a_bad_artifact_is_named(tmp_path, artifact):
    eng = EngineProcess(artifact.path, block_size=64).start()
    proc = eng._proc
    eng.stop()
    assert proc.poll() is not None
    with pytest.raises(RuntimeError, match=str(tmp_path)):
        EngineProcess(tmp_path, block_size=64, start_timeout_s=60).start()
