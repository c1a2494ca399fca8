"""Who labelled: one label per labeller and target, outlier labellers left out with the reason in the
snapshot's data card. On SQLite and on Postgres."""

from __future__ import annotations

import json
from pathlib import Path

from catalog import db
from catalog.models import Artifact, Completion, Feedback, feedback_target
from training.rlhf.labellers import outliers, votes
from training.rlhf.preferences import build_preference_set, snapshot_preferences

BLOCK = 64


def _catalog(url: str, n_prompts: int) -> list[tuple[str, str]]:
    """``n_prompts`` prompts with two completions each: (good id, bad id) per prompt."""
    db.migrate(url)
    with db.session_scope(url) as s:
        model = Artifact(kind="model", sha256="b" * 64, uri="file:///m", size_bytes=1, meta={})
        s.add(model)
        s.flush()
        out = []
        for i in range(n_prompts):
            for cid, resp in ((f"g{i}", f"good answer {i}"), (f"b{i}", f"bad {i}")):
                s.add(
                    Completion(
                        id=cid, model_artifact_id=model.id, endpoint="completions", prompt=f"Prompt {i}:",
                        response=resp, prompt_tokens=1, completion_tokens=1,
                    )
                )  # fmt: skip
            out.append((f"g{i}", f"b{i}"))
    return out


def _pref(labeller: str, a: str, b: str, preferred: str, source: str = "api") -> Feedback:
    return Feedback(
        kind="preference", completion_id=a, other_completion_id=b, preferred=preferred,
        labeller=labeller, source=source, target=feedback_target(a, b),
    )  # fmt: skip


def test_a_labeller_against_the_majority_is_left_out_and_named(tokenizer, any_db_url: str, tmp_path: Path):
    pairs = _catalog(any_db_url, 5)
    with db.session_scope(any_db_url) as s:
        for who in ("alice", "bob", "carol"):
            s.add_all(_pref(who, g, b, "a") for g, b in pairs)
        s.add_all(_pref("mallory", g, b, "b") for g, b in pairs)  # always the bad answer
        s.add(_pref("dana", *pairs[0], "a", source="dashboard"))
    pset = build_preference_set(tokenizer, BLOCK, catalog_url=any_db_url, max_disagreement=0.5, min_overlap=3)
    assert dict(pset.labellers) == {
        "api:alice": 5,
        "api:bob": 5,
        "api:carol": 5,
        "api:mallory": 5,
        "dashboard:dana": 1,
    }
    assert [lo["labeller"] for lo in pset.left_out] == ["api:mallory"]
    assert all("bad" in p.rejected for p in pset.pairs) and len(pset.pairs) == 16
    skipped = [q for q in pset.skipped if q["code"] == "outlier_labeller"]
    assert len(skipped) == 5 and "5 of 5 shared pairs" in skipped[0]["reason"]
    ref = snapshot_preferences(pset, root=tmp_path)
    card = (ref.path / "DATACARD.md").read_text()
    assert "5 distinct labeller(s)" in card and "**api:mallory** (5 labels): disagrees" in card
    manifest = json.loads((ref.path / "manifest.json").read_text())
    assert manifest["labellers"] == 5 and manifest["left_out_labellers"][0]["disagreed"] == 5


def test_older_labels_of_one_labeller_are_replaced_not_counted(tokenizer, any_db_url: str):
    """Rows from before the catalog kept one label per target: only the newest of a labeller counts."""
    (g, b), *_ = _catalog(any_db_url, 1)
    with db.session_scope(any_db_url) as s:
        for i in range(20):  # what one key could post before: twenty labels of one pair, untargeted
            s.add(Feedback(kind="preference", completion_id=g, other_completion_id=b, preferred="ab"[i % 2],
                           labeller="eve", source="api"))  # fmt: skip
            s.flush()
    pset = build_preference_set(tokenizer, BLOCK, catalog_url=any_db_url)
    assert len(pset.pairs) == 1 and pset.labellers == {"api:eve": 1}
    assert sum(q["code"] == "replaced" for q in pset.skipped) == 19
    assert pset.rows_in["feedback"] == 20 == len(pset.pairs) + len(pset.skipped) + len(pset.quarantined)


def test_ratings_vote_within_a_labeller_and_ties_compare_nothing():
    prompts = {"x": ("completions", "p"), "y": ("completions", "p"), "z": ("completions", "q")}
    facts = [
        {"source": "api", "labeller": "a", "completion_id": "x", "rating": 5},
        {"source": "api", "labeller": "a", "completion_id": "y", "rating": 1},
        {"source": "api", "labeller": "a", "completion_id": "z", "rating": 1},  # another prompt: no vote
        {
            "source": "api",
            "labeller": "b",
            "completion_id": "x",
            "other_completion_id": "y",
            "preferred": "b",
        },
    ]
    cast = votes(facts, prompts, min_rating_gap=1)
    assert cast == {"api:a": {("x", "y"): "x"}, "api:b": {("x", "y"): "y"}}
    # One against one: no majority either way, so neither is judged.
    assert outliers(cast, {}, max_disagreement=0.0, min_overlap=1) == {}
