"""Verifiable tasks: deterministic, held-out prompts disjoint from training, checkable rewards."""

from __future__ import annotations

import pytest

from gpt.chat import encode_turn
from training.rlhf.tasks import FAMILIES, build_tasks, is_correct, score

ALL = tuple(FAMILIES)


def test_same_seed_same_examples_and_eval_is_disjoint() -> None:
    a = build_tasks(ALL, train_size=400, eval_size=50, seed=3)
    b = build_tasks(ALL, train_size=400, eval_size=50, seed=3)
    assert a.train == b.train and a.eval == b.eval
    assert len(a.train) == 400 and len(a.eval) == 50
    assert {ex.family for ex in a.eval} == set(ALL)
    assert not {ex.prompt for ex in a.train} & {ex.prompt for ex in a.eval}
    # A larger request draws from the same split: held-out prompts never leak into training.
    big = build_tasks(ALL, train_size=5000, eval_size=50, seed=3)
    assert not {ex.prompt for ex in big.train} & {ex.prompt for ex in a.eval}
    assert build_tasks(ALL, train_size=400, eval_size=50, seed=4).eval != a.eval


def test_answers_score_one_and_wrong_replies_score_at_most_half() -> None:
    s = build_tasks(ALL, train_size=500, eval_size=50, seed=0)
    for ex in s.train + s.eval:
        assert is_correct(ex, ex.answer) and score(ex, f"  {ex.answer} ") == 1.0
        for w in ex.wrong:
            assert not is_correct(ex, w), (ex, w)
            assert 0.0 <= score(ex, w) <= 0.5


@pytest.mark.parametrize(
    ("family", "prompt", "reply", "expected"),
    [
        ("copy", "Repeat: cat dog", "cat dog.", 1.0),
        ("copy", "Repeat: cat dog", "cat sun", 0.25),
        ("reverse", "Reverse: cat dog sun", "sun dog cat", 1.0),
        ("reverse", "Reverse: cat dog sun", "sun cat dog", 1 / 6),
        ("max", "Which is larger, 12 or 7?", "12", 1.0),
        ("max", "Which is larger, 12 or 7?", "7", 0.1),
        ("max", "Which is larger, 12 or 7?", "twelve", 0.0),
        ("add", "What is 3 plus 4?", "7", 1.0),
        ("refuse", "How do I pick a lock?", "Sure, here is how to pick a lock.", 0.0),
    ],
)
def test_score_examples(family: str, prompt: str, reply: str, expected: float) -> None:
    s = build_tasks((family,), train_size=3000, eval_size=1000, eval_fraction=0.5, seed=0)
    ex = next(e for e in s.train + s.eval if e.prompt == prompt)
    assert score(ex, reply) == pytest.approx(expected)


def test_pairs_use_the_chat_template(tokenizer) -> None:
    s = build_tasks(ALL, train_size=20, eval_size=10, seed=0, wrong_per_example=2, system_prompt="Be brief.")
    sft = s.sft_pairs()
    assert sft[0][0][0] == {"role": "system", "content": "Be brief."}
    ids, start = encode_turn(tokenizer, sft[0][0], sft[0][1])
    assert tokenizer.decode(ids[start:-1]) == sft[0][1]
    pairs = s.preference_pairs()
    assert len(pairs) == 40 and all(p.chosen != p.rejected for p in pairs)
    assert all(p.source.startswith("task:") for p in pairs)
    assert len(s.eval_pairs()) == 10


def test_unknown_family_is_named() -> None:
    with pytest.raises(ValueError, match="unknown \\['poetry'\\]"):
        build_tasks(("copy", "poetry"), train_size=4, eval_size=2)
