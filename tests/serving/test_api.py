"""The OpenAI-compatible API on a live Serve deployment: bodies, errors, feedback, keys and limits."""

from __future__ import annotations

import concurrent.futures as cf
import time

import httpx
import openai
import pytest
from sqlalchemy import func, select

from catalog.db import session_scope
from catalog.keys import create_key, revoke_key
from catalog.models import USER_CHARS, Artifact, Completion, Feedback
from serving.auth import digest
from serving.schemas import CompletionRequest, FeedbackRequest
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
    assert httpx.get(live.url + "/health").status_code == 200  # health needs no key


def test_retrieve_a_model_by_id(client, live):
    card = client.models.retrieve(MODEL)
    assert card.id == MODEL and card.owned_by == "nightshift"
    assert card.created == client.models.list().data[0].created
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-4")
    assert e.value.body["code"] == "model_not_found" and MODEL in e.value.body["message"]
    assert httpx.get(live.url + f"/v1/models/{MODEL}").status_code == 401  # a key, as for the list


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
        # The labeller is the key (a static one here), never the client's `user`, which stays as data.
        assert fb.kind == "preference" and fb.preferred == "b" and fb.source == "api"
        assert (
            fb.labeller == f"static-{digest(KEY)[:8]}"
            and fb.user == "ann"
            and fb.key_id.startswith("static-")
        )


def test_queue_full_gives_429_and_disconnect_frees_the_batch(live):
    h = {"Authorization": f"Bearer {KEY}"}
    body = {"model": MODEL, "prompt": "to be", "max_tokens": 60, "temperature": 1.0}

    def one(_):
        return httpx.post(live.url + "/v1/completions", json=body, headers=h, timeout=120)

    with cf.ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(one, range(24)))
    codes = [r.status_code for r in answers]
    assert set(codes) <= {200, 429} and 429 in codes and 200 in codes
    assert all(r.headers["Retry-After"] == "1" for r in answers if r.status_code == 429)
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
    figures = health["figures"]  # this replica's; every replica's are on Ray's metrics port
    assert figures["open_streams"] == 0  # the stream that left is no longer counted
    assert figures["stream_writes"] >= 1 and figures["process_resident_memory_bytes"] > 1e7
    assert figures["engine_process_resident_memory_bytes"] > 1e7  # serve.engine_process (the default)


# --- feedback integrity: named keys with roles, one label per key and target, rate limits ---------


def _h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _complete(live, key: str, n: int = 2) -> list[str]:
    r = httpx.post(
        live.url + "/v1/completions",
        json={"model": MODEL, "prompt": "to be", "max_tokens": 3, "n": n, "seed": 1},
        headers=_h(key),
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return [c["completion_id"] for c in r.json()["choices"]]


def _rate(live, key: str, body: dict) -> httpx.Response:
    return httpx.post(live.url + "/v1/feedback", json=body, headers=_h(key), timeout=30)


def test_client_keys_label_only_their_own_and_a_repeat_replaces(live):
    alice, a_info = create_key(live.catalog_url, "alice-client", "client")
    bob, _ = create_key(live.catalog_url, "bob-client", "client")
    lab, _ = create_key(live.catalog_url, "lena-labeller", "labeller")
    mine = _complete(live, alice)
    with session_scope(live.catalog_url) as s:
        assert {s.get(Completion, c).key_id for c in mine} == {a_info.id}  # the key's id, never the key
    r = _rate(live, bob, {"completion_id": mine[0], "rating": 5})
    assert r.status_code == 403 and r.json()["error"]["code"] == "not_your_completion", r.text
    pair = {"completion_id": mine[0], "other_completion_id": mine[1], "preferred": "a"}
    assert _rate(live, bob, pair).status_code == 403
    r = _rate(live, lab, {"completion_id": mine[0], "rating": 2})
    assert r.status_code == 200 and r.json()["labeller"] == "lena-labeller" and not r.json()["replaced"]

    first = _rate(live, alice, {"completion_id": mine[0], "rating": 1, "user": "someone-else"}).json()
    again = _rate(live, alice, {"completion_id": mine[0], "rating": 4, "user": "a third name"}).json()
    assert again["replaced"] and again["id"] == first["id"] and again["labeller"] == "alice-client"
    # The same pair in the other order is the same target.
    p1 = _rate(live, alice, pair).json()
    p2 = _rate(live, alice, {**pair, "completion_id": mine[1], "other_completion_id": mine[0]}).json()
    assert p2["replaced"] and p2["id"] == p1["id"]
    with session_scope(live.catalog_url) as s:
        rows = s.scalars(select(Feedback).where(Feedback.labeller == "alice-client")).all()
        assert len(rows) == 2
        rating = next(r for r in rows if r.kind == "rating")
        assert rating.rating == 4 and rating.user == "a third name" and rating.key_id == a_info.id
        total = s.scalar(select(func.count()).select_from(Feedback).where(Feedback.completion_id.in_(mine)))
        assert total == 3  # alice's rating and pair, the labeller's rating; bob's were refused


def test_a_revoked_key_is_refused_without_a_restart(live):
    key, _ = create_key(live.catalog_url, "soon-revoked", "client")
    assert httpx.get(live.url + "/v1/models", headers=_h(key)).status_code == 200
    revoke_key(live.catalog_url, "soon-revoked")
    deadline = time.monotonic() + 10
    while httpx.get(live.url + "/v1/models", headers=_h(key)).status_code == 200:
        assert time.monotonic() < deadline, (
            "the revoked key still works after 10 s (serve.key_cache_s is 0.5)"
        )
        time.sleep(0.2)
    r = httpx.get(live.url + "/v1/models", headers=_h(key))
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]


def test_feedback_over_the_key_rate_gets_429_with_retry_after(live):
    key, _ = create_key(live.catalog_url, "hasty", "client")
    (cid,) = _complete(live, key, n=1)
    codes = [_rate(live, key, {"completion_id": cid, "rating": i % 5}) for i in range(8)]
    # serve.feedback_per_minute 30 with a 10 s burst: 5 at once, then 429s naming when to retry.
    assert [r.status_code for r in codes[:5]] == [200] * 5
    limited = codes[5]
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(limited.headers["Retry-After"]) <= 2
    other, _ = create_key(live.catalog_url, "patient", "client")  # the limit is per key
    assert httpx.get(live.url + "/v1/models", headers=_h(other)).status_code == 200


def test_request_limits_match_the_catalog_columns(live):
    """A value the API accepts always fits its column: a 256-character user is a 400, not a failed batch."""
    assert CompletionRequest.model_fields["user"].metadata[0].max_length == USER_CHARS
    assert FeedbackRequest.model_fields["user"].metadata[0].max_length == USER_CHARS
    assert Completion.__table__.c.user.type.length == USER_CHARS == Feedback.__table__.c.user.type.length
    key, _ = create_key(live.catalog_url, "long-user", "client")
    r = httpx.post(
        live.url + "/v1/completions",
        json={"model": MODEL, "prompt": "to be", "max_tokens": 2, "user": "u" * (USER_CHARS + 1)},
        headers=_h(key),
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "user"
