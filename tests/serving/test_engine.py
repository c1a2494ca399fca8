"""The continuous-batching engine gives the same tokens as one-at-a-time generation."""

from __future__ import annotations

import threading

import pytest
import torch

from core.model_config import ModelConfig
from gpt.model import GPT
from gpt.tokenizer import EOT, train_tokenizer
from serving.engine import Delta, Engine, QueueFull, SamplingParams

TEXT = "the quick brown fox jumps over the lazy dog and then the cat sat on the mat again " * 40


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer([TEXT], vocab_size=300)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=300)).eval()


def prompts(tok, k):
    words = TEXT.split()
    return [tok.encode(" ".join(words[i : i + 2 + 3 * i])).ids for i in range(k)]


def test_batched_greedy_equals_single_generate(model, tok):
    eng = Engine(model, tok, max_batch=4).start()
    try:
        ps = prompts(tok, 6)  # more requests than slots: some wait and join as others leave
        results: dict[int, list[Delta]] = {}

        def run(i):
            results[i] = eng.generate(ps[i], SamplingParams(max_tokens=8 + 3 * i, temperature=0))

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(ps))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, p in enumerate(ps):
            ref = model.generate(p, 8 + 3 * i, temperature=0.0).tokens[0]
            assert results[i][0].token_ids == ref, i
            assert results[i][0].finish_reason == "length"
            assert results[i][0].text == tok.decode(ref, skip_special_tokens=False)
        assert eng.stats()["running"] == 0
    finally:
        eng.stop()


def test_seeded_sampling_is_independent_of_the_batch(model, tok):
    eng = Engine(model, tok, max_batch=8).start()
    try:
        p = prompts(tok, 1)[0]
        params = SamplingParams(max_tokens=12, temperature=0.9, top_p=0.9, top_k=50, seed=7)
        alone = eng.generate(p, params)[0].token_ids
        noise = [
            threading.Thread(target=eng.generate, args=(q, SamplingParams(max_tokens=20)))
            for q in prompts(tok, 4)
        ]
        for t in noise:
            t.start()
        crowded = eng.generate(p, params)[0].token_ids
        for t in noise:
            t.join()
        assert alone == crowded
        two = eng.generate(p, SamplingParams(max_tokens=12, temperature=1.0, seed=3), n=2)
        assert [d.index for d in two] == [0, 1] and all(d.completion_tokens == 12 for d in two)
    finally:
        eng.stop()


def test_seeded_choices_keep_their_tokens_when_their_slots_move(model, tok):
    """A seeded n=2 request gives the same tokens alone and next to other traffic, also when a
    neighbour that finishes first moves its second choice ahead of its first (slots stay
    contiguous): each choice samples from a generator of its own."""
    p = prompts(tok, 2)[1]
    params = SamplingParams(max_tokens=16, temperature=1.0, seed=11)

    def run(with_traffic: bool) -> list[list[int]]:
        eng = Engine(model, tok, max_batch=8)  # started after the submits: all join the first step
        got: dict[int, list[int]] = {0: [], 1: []}
        finished: set[int] = set()
        done = threading.Event()

        def sink(d: Delta) -> None:
            got[d.index] += d.token_ids
            if d.finish_reason:
                finished.add(d.index)
                if len(finished) == 2:
                    done.set()

        if with_traffic:
            # Slots [long, short, choice 0, choice 1]: when the short one leaves after 2 tokens,
            # choice 1 (the last slot) moves into its slot, ahead of choice 0.
            eng.submit(prompts(tok, 3)[2], SamplingParams(max_tokens=30, temperature=0.7), lambda d: None)
            eng.submit(prompts(tok, 1)[0], SamplingParams(max_tokens=2, seed=5), lambda d: None)
        eng.submit(p, params, sink, n=2)
        eng.start()
        try:
            assert done.wait(30)
        finally:
            eng.stop()
        return [got[0], got[1]]

    alone = run(False)
    assert alone[0] != alone[1]  # two samples, not one twice
    assert run(True) == alone


def test_stop_strings_tokens_and_logprobs(model, tok):
    eng = Engine(model, tok, max_batch=2).start()
    try:
        p = prompts(tok, 1)[0]
        full = eng.generate(p, SamplingParams(max_tokens=20, temperature=0))[0]
        stop = full.text[5:8]
        cut = eng.generate(p, SamplingParams(max_tokens=20, temperature=0, stop=(stop,)))[0]
        assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.find(stop)]
        first = full.token_ids[0]
        ended = eng.generate(p, SamplingParams(max_tokens=20, temperature=0, stop_ids=(first,)))[0]
        assert ended.finish_reason == "stop" and ended.text == "" and ended.completion_tokens == 1
        lp = eng.generate(p, SamplingParams(max_tokens=3, temperature=0, logprobs=2))[0]
        assert len(lp.logprobs) == 3
        token, value, top = lp.logprobs[0]
        assert len(top) == 2 and value == pytest.approx(max(top.values()))
    finally:
        eng.stop()


def test_queue_bound_and_cancel(model, tok):
    eng = Engine(model, tok, max_batch=1, max_waiting=1)  # not started: requests stay queued
    p = prompts(tok, 1)[0]
    rid = eng.submit(p, SamplingParams(max_tokens=4), lambda d: None)
    with pytest.raises(QueueFull):
        eng.submit(p, SamplingParams(max_tokens=4), lambda d: None)
    with pytest.raises(ValueError, match="exceeds the context"):
        eng.submit(p, SamplingParams(max_tokens=64), lambda d: None)
    eng.cancel(rid)
    got: list[Delta] = []
    eng.start()
    try:
        # A long request that is cancelled while running leaves the batch.
        rid2 = eng.submit(p, SamplingParams(max_tokens=60 - len(p)), got.append)
        while not got:
            pass
        eng.cancel(rid2)
        for _ in range(200):
            if eng.stats()["running"] == 0:
                break
            threading.Event().wait(0.01)
        assert eng.stats()["running"] == 0 and eng.stats()["waiting"] == 0
        assert len(got) < 60 - len(p)
    finally:
        eng.stop()
    assert tok.token_to_id(EOT) == 0


def test_run_decodes_in_the_calling_thread_until_stopped(model, tok):
    """``Engine.run`` is the decode loop in the caller's thread (the engine process's main thread):
    requests from other threads are served there, and ``stop`` returns it."""
    eng = Engine(model, tok, max_batch=2)
    p = prompts(tok, 1)[0]
    got: list[Delta] = []

    def client():
        try:
            got.extend(eng.generate(p, SamplingParams(max_tokens=6, temperature=0)))
        finally:
            eng.stop()

    t = threading.Thread(target=client)
    t.start()
    eng.run()  # returns once the client has its answer and stopped the engine
    t.join(timeout=10)
    assert got[0].token_ids == model.generate(p, 6, temperature=0.0).tokens[0]
    assert eng.error is None and eng.stats()["running"] == 0
