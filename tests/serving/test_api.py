"""The live Serve deployment driven by the official `openai` client: wire format, streaming, errors, auth."""

from __future__ import annotations

import concurrent.futures as cf
import time

import httpx
import openai
import pytest
from sqlalchemy import select

from catalog.db import session_scope
from catalog.models import Artifact, Completion, Feedback
from tests.serving.conftest import KEY

MODEL = "nightshift-gpt"


@pytest.fixture
def client(live):
    return openai.OpenAI(base_url=live.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def test_models_and_completion(client, live):
    assert [m.id for m in client.models.list()] == [MODEL]
    raw = client.completions.with_raw_response.create(
        model=MODEL, prompt="to be or", max_tokens=8, temperature=0, seed=1
    )
    assert raw.headers["x-nightshift-model"] == f"model:{live.model_sha}"
    c = raw.parse()
    assert c.object == "text_completion" and c.id.startswith("cmpl-")
    assert c.choices[0].finish_reason in ("length", "stop")
    assert c.usage.prompt_tokens > 0 and c.usage.completion_tokens <= 8
    assert c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens
    with session_scope(live.catalog_url) as s:
        row = s.get(Completion, c.id)
        assert row is not None and row.response == c.choices[0].text and row.endpoint == "completions"
        assert s.get(Artifact, row.model_artifact_id).sha256 == live.model_sha


def test_streaming_equals_non_streaming(client):
    kw = dict(model=MODEL, prompt="whether tis nobler", max_tokens=12, temperature=0.8, seed=42)
    whole = client.completions.create(**kw).choices[0]
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == whole.text
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == whole.finish_reason
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_chat_and_chat_stream(client, live):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "to be or not?"}]
    c = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=10, temperature=0, n=2)
    assert c.object == "chat.completion" and len(c.choices) == 2
    assert (
        c.choices[0].message.role == "assistant"
        and c.choices[0].message.content == c.choices[1].message.content
    )
    stream = client.chat.completions.create(
        model=MODEL, messages=msgs, max_tokens=10, temperature=0, stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == c.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")
    with session_scope(live.catalog_url) as s:
        rows = s.scalars(select(Completion).where(Completion.id.like(c.id + "%"))).all()
        assert len(rows) == 2 and rows[0].prompt.startswith("<|system|>Be brief.")


def test_logprobs_and_stop(client):
    c = client.completions.create(model=MODEL, prompt="to be", max_tokens=5, temperature=0, logprobs=2)
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) and all(
        len(t) == 2 for t in lp.top_logprobs
    )
    text = (
        client.completions.create(model=MODEL, prompt="to be", max_tokens=20, temperature=0).choices[0].text
    )
    if len(text) > 4:
        cut = client.completions.create(
            model=MODEL, prompt="to be", max_tokens=20, temperature=0, stop=[text[2:4]]
        )
        assert cut.choices[0].text == text[: text.find(text[2:4])] and cut.choices[0].finish_reason == "stop"


def test_client_errors_are_openai_style(client, live):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4", prompt="x", max_tokens=1)
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="to be", max_tokens=500)
    assert e.value.body["param"] == "max_tokens" and e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="x", max_tokens=1, temperature=5)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="x", max_tokens=1, extra_body={"tempreature": 1})
    assert "unrecognized" in e.value.body["message"] and e.value.body["param"] == "tempreature"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "robot", "content": "x"}])
    assert e.value.body["param"].startswith("messages[0]")
    r = httpx.post(
        live.url + "/v1/completions", content=b"{not json", headers={"Authorization": f"Bearer {KEY}"}
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(
        live.url + "/v1/completions",
        json={"model": MODEL, "prompt": "x" * 30_000},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    r = httpx.get(live.url + "/v1/nothing", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(live.url + "/v1/completions")
    assert r.status_code == 405 and "error" in r.json()


def test_auth(live):
    for key in ("wrong-key", ""):
        bad = openai.OpenAI(base_url=live.url + "/v1", api_key=key or "x", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as e:
            bad.models.list()
        assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    r = httpx.post(live.url + "/v1/completions", json={"model": MODEL, "prompt": "x"})
    assert r.status_code == 401 and "Bearer" in r.json()["error"]["message"]
    assert httpx.get(live.url + "/health").status_code == 200  # health and metrics need no key


def test_feedback_rating_and_comparison(client, live):
    a = client.completions.create(model=MODEL, prompt="to be", max_tokens=4, n=2, seed=3)
    ids = [ch.model_extra["completion_id"] for ch in a.choices]
    assert ids == [a.id, a.id + ".1"]
    h = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(live.url + "/v1/feedback", json={"completion_id": ids[0], "rating": 1}, headers=h)
    assert r.status_code == 200, r.text
    r = httpx.post(
        live.url + "/v1/feedback",
        json={"completion_id": ids[0], "other_completion_id": ids[1], "preferred": "b", "user": "ann"},
        headers=h,
    )
    assert r.status_code == 200, r.text
    fid = r.json()["id"]
    r = httpx.post(live.url + "/v1/feedback", json={"completion_id": "cmpl-nope", "rating": 1}, headers=h)
    assert r.status_code == 404 and r.json()["error"]["param"] == "completion_id"
    r = httpx.post(live.url + "/v1/feedback", json={"completion_id": ids[0], "preferred": "a"}, headers=h)
    assert r.status_code == 400
    with session_scope(live.catalog_url) as s:
        fb = s.get(Feedback, fid)
        assert fb.kind == "preference" and fb.preferred == "b" and fb.labeller == "ann" and fb.source == "api"


def test_queue_full_gives_429_and_disconnect_frees_the_batch(live):
    h = {"Authorization": f"Bearer {KEY}"}
    body = {"model": MODEL, "prompt": "to be", "max_tokens": 60, "temperature": 1.0}

    def one(_):
        return httpx.post(live.url + "/v1/completions", json=body, headers=h, timeout=120).status_code

    with cf.ThreadPoolExecutor(24) as pool:
        codes = list(pool.map(one, range(24)))
    assert set(codes) <= {200, 429} and 429 in codes and 200 in codes
    # A streaming client that leaves after the first chunk: its sequence leaves the running batch.
    with httpx.stream("POST", live.url + "/v1/completions", json={**body, "stream": True}, headers=h) as r:
        next(r.iter_lines())
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        health = httpx.get(live.url + "/health").json()
        if health["running"] == 0 and health["waiting"] == 0:
            break
        time.sleep(0.1)
    assert health["running"] == 0
    metrics = httpx.get(live.url + "/metrics").text
    assert "nightshift_completion_tokens_total" in metrics and "process_resident_memory_bytes" in metrics
    assert "nightshift_open_streams 0.0" in metrics  # the stream that left is no longer counted
