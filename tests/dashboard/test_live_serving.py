"""The Playground and fresh Feedback pairs against the pipeline's model live on Ray Serve."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from catalog.db import session_scope
from catalog.models import Completion, Feedback
from gpt.tokenizer import load_tokenizer
from tests.dashboard.conftest import Filled, open_page
from training.rlhf.feedback import feedback_pairs

pytestmark = pytest.mark.slow


def test_playground_streams_and_the_answer_traces_back_to_the_data(
    dash_env: Filled, served: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NIGHTSHIFT_SERVE_URL", served)
    at = open_page("playground")
    assert not at.warning, [w.value for w in at.warning]
    at.chat_input(key="pg_input").set_value("to be or not").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    captions = [c.value for c in at.caption if c.value.startswith("completion `")]
    assert len(captions) == 1
    completion_id = captions[0].split("`")[1]
    with session_scope(dash_env.catalog_url) as s:
        row = s.get(Completion, completion_id)
        assert row is not None, "serving recorded the streamed answer"
        assert row.model_artifact_id == dash_env.model_ids[0] and row.user == "alice"
    at.switch_page("views/lineage.py").run()
    at.text_input(key="trace_id").input(completion_id).run()
    sources = next(df.value for df in at.dataframe if "item" in df.value.columns)
    assert len(sources) == 40, "the answer traces back to every source file of the first night"


def test_feedback_labels_a_freshly_generated_pair(
    dash_env: Filled, served: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NIGHTSHIFT_SERVE_URL", served)
    at = open_page("feedback")
    at.radio(key="fb_mode").set_value("Generate fresh from the served model").run()
    at.text_area(key="fb_prompt").input("whether tis nobler").run()
    at.button(key="fb_generate").click().run()
    assert not at.error, [e.value for e in at.error]
    ids = [c.value.split("`")[1] for c in at.caption if c.value.startswith("`chatcmpl-")]
    assert len(ids) == 2
    at.button(key="fb_b").click().run()
    with session_scope(dash_env.catalog_url) as s:
        row = s.scalars(select(Feedback).where(Feedback.completion_id == ids[0])).one()
        assert (row.other_completion_id, row.preferred) == (ids[1], "b")
        assert (row.source, row.labeller) == ("dashboard", "alice")
        answers = {c: s.get(Completion, c).response for c in ids}
    # The next RLHF run's preference set reads the label: B chosen over A, traced to the feedback row.
    tokenizer = load_tokenizer(dash_env.model_paths[0] / "tokenizer.json")
    pairs = feedback_pairs(dash_env.catalog_url, tokenizer, block_size=1024).pairs
    (pair,) = [p for p in pairs if row.id in p.feedback_ids]
    assert (pair.chosen, pair.rejected) == (answers[ids[1]], answers[ids[0]])
