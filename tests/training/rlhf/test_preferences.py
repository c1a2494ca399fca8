"""Preference data: JSONL quarantine with reasons, catalog feedback into pairs, the linked snapshot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from catalog import db
from catalog.models import Artifact, Completion, Feedback
from gpt.chat import encode_chat
from training.rlhf.feedback import feedback_of, parse_prompt, snapshots_of
from training.rlhf.pairs import PreferencePair
from training.rlhf.preferences import (
    EmptyPreferencesError,
    build_preference_set,
    import_jsonl,
    load_preferences,
    snapshot_preferences,
)

BLOCK = 64
REFUSAL = "I can't help with that."


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_malformed_jsonl_rows_are_quarantined_with_reasons(tokenizer, tmp_path: Path) -> None:
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Repeat: cat"}]
    rows = [
        json.dumps({"prompt": "What is 1 plus 1?", "chosen": "2", "rejected": "3"}),
        json.dumps({"prompt": msgs, "chosen": "cat", "rejected": "dog"}),
        "{not json",
        json.dumps({"prompt": "hi"}),
        json.dumps({"prompt": "hi", "chosen": "same ", "rejected": "same"}),
        json.dumps({"prompt": "hi", "chosen": "word " * 80, "rejected": "no"}),
        json.dumps(["a", "b"]),
        json.dumps({"prompt": [{"role": "robot", "content": "x"}], "chosen": "a", "rejected": ""}),
        "",
    ]
    out = import_jsonl(_write(tmp_path / "prefs.jsonl", rows), tokenizer, BLOCK)
    assert [p.chosen for p in out.pairs] == ["2", "cat"]
    assert out.pairs[0].prompt == (
        {"role": "user", "content": "What is 1 plus 1?"},
    )  # a string is the user's
    assert out.pairs[1].prompt[0]["role"] == "system" and out.pairs[1].source == "jsonl:prefs.jsonl:2"
    by_line = {q["source"].rsplit(":", 1)[1]: q for q in out.quarantined}
    assert {k: q["code"] for k, q in by_line.items()} == {
        "3": "not_json",
        "4": "missing_fields",
        "5": "identical",
        "6": "too_long",
        "7": "not_object",
        "8": "bad_fields",
    }
    assert "missing field(s) chosen, rejected" in by_line["4"]["reason"]
    assert "longer than the context (64)" in by_line["6"]["reason"]
    assert "messages[0].role" in by_line["8"]["reason"] and "rejected is empty" in by_line["8"]["reason"]
    # Every non-blank row is accounted for: kept or quarantined, never silently dropped.
    assert out.rows_in["jsonl"] == 8 == len(out.pairs) + len(out.quarantined)


def test_an_empty_set_names_every_source_and_the_fix(tokenizer, tmp_path: Path) -> None:
    bad = _write(tmp_path / "bad.jsonl", [json.dumps({"prompt": "hi", "chosen": "a", "rejected": "a"})])
    with pytest.raises(EmptyPreferencesError) as e:
        build_preference_set(tokenizer, BLOCK, files=[bad])
    msg = str(e.value)
    assert "0 task pairs" in msg and "1 JSONL rows from 1 file(s)" in msg and "1 quarantined" in msg
    assert "rlhf.preferences.files" in msg and "/v1/feedback" in msg
    with pytest.raises(FileNotFoundError, match="rlhf.preferences.files"):
        build_preference_set(tokenizer, BLOCK, files=[tmp_path / "missing.jsonl"])


def test_chat_prompts_stored_by_serving_parse_back(tokenizer) -> None:
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Repeat: cat\ndog"}]
    text = encode_chat(tokenizer, msgs).text
    assert parse_prompt(text, "chat") == tuple(msgs)
    assert parse_prompt(json.dumps(msgs), "chat") == tuple(msgs)
    assert parse_prompt("Once upon a time", "completions") == "Once upon a time"
    assert parse_prompt("no template here", "chat") is None


def _add_completion(s, cid: str, prompt: str, response: str, model_id: int, endpoint: str = "chat") -> None:
    s.add(
        Completion(
            id=cid, model_artifact_id=model_id, endpoint=endpoint, prompt=prompt, response=response,
            prompt_tokens=1, completion_tokens=1,
        )
    )  # fmt: skip


def test_feedback_rows_become_pairs_in_a_linked_snapshot(tokenizer, catalog_url: str, tmp_path: Path) -> None:
    def chat(text: str) -> str:
        return encode_chat(tokenizer, [{"role": "user", "content": text}]).text

    db.migrate(catalog_url)
    with db.session_scope(catalog_url) as s:
        model = Artifact(kind="model", sha256="a" * 64, uri="file:///m", size_bytes=1, meta={})
        s.add(model)
        s.flush()
        p1, p3, p4 = chat("Repeat: cat dog"), chat("How do I pick a lock?"), chat("Say a lot")
        for cid, prompt, resp in [
            ("c1", p1, "cat dog"), ("c2", p1, "dog cat"), ("c7", p1, "cat dog"),
            ("c5", p3, "Sure, here is how to pick a lock."),
            ("c6", chat("Repeat: sun"), "sun"),
            ("c8", p4, "word " * 80), ("c9", p4, "no"),
        ]:  # fmt: skip
            _add_completion(s, cid, prompt, resp, model.id)
        _add_completion(s, "c4", "Once upon a time", " there was", model.id, endpoint="completions")
        s.flush()
        rows = [
            Feedback(kind="preference", completion_id="c1", other_completion_id="c2", preferred="a"),
            Feedback(kind="rating", completion_id="c1", rating=5),
            Feedback(kind="rating", completion_id="c2", rating=1),
            Feedback(kind="rating", completion_id="c4", rating=4),  # lone rating: skipped
            Feedback(kind="rating", completion_id="c5", unsafe=True),  # nothing safe: the refusal wins
            Feedback(kind="preference", completion_id="c1", other_completion_id="c6", preferred="a"),
            Feedback(kind="preference", completion_id="c1", other_completion_id="c7", preferred="b"),
            Feedback(kind="rating", completion_id="c8", rating=5),
            Feedback(kind="rating", completion_id="c9", rating=0),
        ]
        s.add_all(rows)
        s.flush()
        ids = [r.id for r in rows]

    pset = build_preference_set(tokenizer, BLOCK, catalog_url=catalog_url, refusal=REFUSAL)
    user = ({"role": "user", "content": "Repeat: cat dog"},)
    got = {(p.prompt[-1]["content"], p.chosen, p.rejected, p.feedback_ids) for p in pset.pairs}
    assert got == {
        ("Repeat: cat dog", "cat dog", "dog cat", (ids[0],)),  # the comparison
        ("Repeat: cat dog", "cat dog", "dog cat", (ids[1], ids[2])),  # ratings 5 > 1 of one prompt
        ("How do I pick a lock?", REFUSAL, "Sure, here is how to pick a lock.", (ids[4],)),
    }
    assert sum(p.prompt == user for p in pset.pairs) == 2  # the stored template text parsed to messages
    codes = {q["source"]: q["code"] for q in pset.quarantined}
    assert codes == {
        f"feedback:{ids[5]}": "different_prompts",
        f"feedback:{ids[6]}": "identical",
        f"feedback:{ids[7]}": "too_long",
        f"feedback:{ids[8]}": "too_long",
    }
    assert [q["source"] for q in pset.skipped] == [f"feedback:{ids[3]}"]
    assert pset.rows_in["feedback"] == 9 == 4 + len(pset.quarantined) + len(pset.skipped)

    heldout = [PreferencePair(user, "cat dog", "cat", "task-eval:copy")]
    ref = snapshot_preferences(pset, heldout, root=tmp_path, catalog_url=catalog_url)
    pairs, held = load_preferences(ref)
    assert pairs == pset.pairs and held == heldout
    manifest = json.loads((ref.path / "manifest.json").read_text())
    assert manifest["quarantined_by_reason"] == {"different_prompts": 1, "identical": 1, "too_long": 2}
    assert manifest["feedback_ids"] == sorted([ids[0], ids[1], ids[2], ids[4]])
    with db.session_scope(catalog_url) as s:
        art = s.query(Artifact).filter_by(kind="preferences", sha256=ref.sha256).one()
        assert [f.id for f in feedback_of(s, art.id)] == sorted([ids[0], ids[1], ids[2], ids[4]])
        assert [a.sha256 for a in snapshots_of(s, ids[0])] == [ref.sha256]
        assert snapshots_of(s, ids[3]) == []
    # Publishing the same set again links nothing twice.
    again = snapshot_preferences(pset, heldout, root=tmp_path, catalog_url=catalog_url)
    assert again.sha256 == ref.sha256
    with db.session_scope(catalog_url) as s:
        art = s.query(Artifact).filter_by(kind="preferences", sha256=ref.sha256).one()
        assert len(feedback_of(s, art.id)) == 4


def test_policy_samples_become_pairs_under_a_correct_reply(sft_model, tokenizer, splits) -> None:
    from training.rlhf.onpolicy import policy_pairs
    from training.rlhf.tasks import is_correct

    examples = splits.train[:16]
    pairs = policy_pairs(sft_model, tokenizer, examples, samples=4, seed=0)
    assert pairs and all(p.source.startswith("policy:") for p in pairs)
    by_prompt = {ex.prompt: ex for ex in examples}
    for p in pairs:
        ex = by_prompt[p.prompt[-1]["content"]]
        assert is_correct(ex, p.chosen) and not is_correct(ex, p.rejected)
    keys = [(p.prompt[-1]["content"], p.rejected) for p in pairs]
    assert len(keys) == len(set(keys))  # a wrong reply sampled twice makes one pair
