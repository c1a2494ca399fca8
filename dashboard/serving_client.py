"""Talking to the served model through its OpenAI-compatible REST API, with the official client.

The API is the serving room's contract (``GET /v1/models``, ``POST /v1/chat/completions`` with
``stream: true`` as server-sent events); the dashboard is one more client of it. Each answer's
``id`` is the completion id the server stored in the catalog, which is what feedback refers to.
Errors come back as :class:`ServingError` with a message fit for the page.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import streamlit as st

from dashboard import queries

# httpx and the openai client are imported inside the functions that use them, not here: each
# takes a second or more to import, and not every user of this module needs them.

if TYPE_CHECKING:
    from openai import OpenAI

STATUS_TIMEOUT_S = 2.0
CHAT_TIMEOUT_S = 120.0


class ServingError(RuntimeError):
    """The served endpoint could not answer; the message says why and what to do."""


@dataclass(frozen=True)
class ServingStatus:
    """What ``GET /v1/models`` said."""

    ok: bool
    models: tuple[str, ...]
    detail: str
    model_sha256: str | None = None  # from the X-Nightshift-Model header: the artifact that answers


@dataclass
class Answer:
    """One chat answer; ``id`` is the catalog completion id (filled in while streaming)."""

    id: str | None = None
    model: str | None = None
    text: str = ""
    finish_reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


@st.cache_data(ttl=5, show_spinner=False)
def serving_status(base_url: str, api_key: str | None) -> ServingStatus:
    """Ask ``GET {base_url}/models`` with a short timeout; never raises."""
    import httpx

    url = f"{base_url.rstrip('/')}/models"
    try:
        resp = httpx.get(url, headers=_headers(api_key), timeout=STATUS_TIMEOUT_S)
    except httpx.HTTPError as exc:
        return ServingStatus(
            False, (), f"not reachable at {base_url} ({type(exc).__name__}); start it with `nightshift serve`"
        )
    if resp.status_code == 401:
        return ServingStatus(False, (), f"{url} refused the API key (HTTP 401); set NIGHTSHIFT_API_KEY")
    if resp.status_code != 200:
        return ServingStatus(False, (), f"{url} answered HTTP {resp.status_code}")
    try:
        models = tuple(str(m["id"]) for m in resp.json().get("data", []))
    except (ValueError, KeyError, TypeError, AttributeError):
        return ServingStatus(False, (), f"{url} did not answer in the OpenAI models format")
    served = resp.headers.get("x-nightshift-model", "")
    sha = served.removeprefix("model:") if served.startswith("model:") else None
    return ServingStatus(True, models, f"{len(models)} model(s) at {base_url}", sha)


@st.cache_data(ttl=300, show_spinner=False)
def context_length(catalog_url: str, model_sha256: str | None) -> int | None:
    """The served model's context (``block_size``), read from its artifact's ``config.json``.

    None when the model is unknown to the catalog or its artifact is not on this machine; the
    server then still refuses prompt + max_tokens beyond the context with a clear 400.
    """
    if not model_sha256 or queries.catalog_problem(catalog_url):
        return None
    found = queries.artifacts_by_sha(catalog_url, "model", (model_sha256,)).get(model_sha256)
    root = found.local_path if found else None
    config = root / "config.json" if root else None
    if config is None or not config.is_file():
        return None
    try:
        return int(json.loads(config.read_text())["block_size"])
    except (ValueError, KeyError, TypeError, OSError):
        return None


def default_max_tokens(context: int | None, wanted: int = 256) -> int:
    """``wanted`` new tokens, or half the context when that is smaller (room for the prompt)."""
    return max(1, min(wanted, context // 2)) if context else wanted


@st.cache_resource(show_spinner=False)
def _client(base_url: str, api_key: str | None) -> OpenAI:
    from openai import OpenAI

    # The local demo runs without auth; the client insists on some key, and the server ignores it.
    return OpenAI(base_url=base_url, api_key=api_key or "no-key", timeout=CHAT_TIMEOUT_S, max_retries=0)


def _explain(exc: Exception, base_url: str) -> ServingError:
    import openai

    if isinstance(exc, openai.APIConnectionError):
        return ServingError(
            f"the served model at {base_url} is not reachable; start it with `nightshift serve`"
        )
    if isinstance(exc, openai.APIStatusError):
        try:
            message = exc.response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.response.text[:500]
        return ServingError(f"the served model answered HTTP {exc.status_code}: {message}")
    return ServingError(f"{type(exc).__name__}: {exc}")


def stream_chat(
    base_url: str,
    api_key: str | None,
    messages: list[dict[str, str]],
    answer: Answer,
    *,
    model: str,
    temperature: float,
    max_tokens: int,
    user: str | None = None,
) -> Iterator[str]:
    """Stream a chat completion, yielding text deltas and filling ``answer`` as they arrive.

    Raises:
        ServingError: when the endpoint is down or refuses the request.
    """
    import openai

    try:
        stream = _client(base_url, api_key).chat.completions.create(
            model=model,
            messages=messages,  # type: ignore[arg-type]
            temperature=temperature,
            max_tokens=max_tokens,
            stream=True,
            user=user or openai.NOT_GIVEN,
        )
        for chunk in stream:
            answer.id = answer.id or chunk.id
            answer.model = answer.model or chunk.model
            for choice in chunk.choices:
                if choice.finish_reason:
                    answer.finish_reason = choice.finish_reason
                delta = choice.delta.content or ""
                if delta:
                    answer.text += delta
                    yield delta
    except openai.OpenAIError as exc:
        raise _explain(exc, base_url) from exc


def complete_pair(
    base_url: str,
    api_key: str | None,
    prompt: str,
    *,
    models: tuple[str, str],
    temperature: float,
    max_tokens: int,
    user: str | None = None,
) -> tuple[Answer, Answer]:
    """Two answers to one prompt (from two models, or one model sampled twice) for labelling.

    Raises:
        ServingError: when the endpoint is down or refuses either request.
    """
    import openai

    out = []
    for i, model in enumerate(models):
        try:
            resp = _client(base_url, api_key).chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": prompt}],
                temperature=temperature,
                max_tokens=max_tokens,
                # Different seeds, so one model sampled twice gives two different answers.
                seed=1000 + i,
                user=user or openai.NOT_GIVEN,
            )
        except openai.OpenAIError as exc:
            raise _explain(exc, base_url) from exc
        choice = resp.choices[0]
        out.append(
            Answer(
                id=resp.id,
                model=resp.model,
                text=choice.message.content or "",
                finish_reason=choice.finish_reason,
            )
        )
    return out[0], out[1]
