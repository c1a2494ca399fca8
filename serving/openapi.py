"""The OpenAPI description of the served API (``GET /openapi.json``): response bodies, errors, auth.

The routes answer with hand-built JSON (``serving.responses``), so FastAPI cannot infer their
response schemas; the models here state them, and :func:`responses` attaches them, with every
error status a route can give and the OpenAI error body, to the route's ``responses=``. The spec is
what the abuse tests fuzz the live server against (``tests/serving/test_abuse_schema.py``): a
status or a body the spec does not declare is a test failure.

:func:`install` also declares the Bearer scheme on the ``/v1`` routes and removes FastAPI's
automatic 422 (validation errors are 400 here, in the OpenAI shape). The spec itself is served
without a key, like ``/health``: it describes the API and holds no data.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

SECURITY_SCHEME = "apiKey"


class ErrorDetail(BaseModel):
    message: str = Field(description="What went wrong and how to fix it.")
    type: str = Field(description="invalid_request_error, authentication_error, rate_limit_error, ...")
    param: str | None = Field(description="The request parameter at fault, if one is.")
    code: str | None = Field(description="A stable code, e.g. context_length_exceeded, body_too_large.")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: Literal["stop", "length"] | None
    completion_id: str = Field(description="The id to send feedback on this choice with.")


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: Literal["stop", "length"] | None
    completion_id: str = Field(description="The id to send feedback on this choice with.")


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChunkChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: Literal["stop", "length"] | None


class CompletionChunk(BaseModel):
    """One event of a completions stream; with ``stream_options.include_usage`` the last has ``usage``."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChunkChoice]
    usage: Usage | None = None


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None
    finish_reason: Literal["stop", "length"] | None


class ChatCompletionChunk(BaseModel):
    """One event of a chat stream; with ``stream_options.include_usage`` the last has ``usage``."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class FeedbackAck(BaseModel):
    id: int
    object: Literal["feedback"]
    kind: Literal["rating", "preference"]
    created: int
    labeller: str | None
    replaced: bool


class Health(BaseModel):
    status: Literal["ok", "failed"]
    model: str = Field(description="model:<sha256> of the served artifact.")
    running: int
    waiting: int
    steps: int
    tokens_generated: int
    figures: dict[str, float] = Field(
        description="This replica now: batch and queue, open streams, stream writes, memory, CPU and start "
        "time of the replica and its engine process. Every replica's are on Ray's metrics port."
    )


_ERRORS = {
    400: "A parameter is missing, malformed or out of range (`param` names it), or the body is not JSON.",
    401: "No API key, or not a valid one: send `Authorization: Bearer <key>`.",
    403: "A client key gave feedback on a completion it did not receive (a labeller key may label any).",
    404: "No such model (or, for feedback, no such completion).",
    408: "The request body did not arrive within serve.body_timeout_s.",
    413: "The request body is larger than serve.max_body_bytes.",
    429: "The server is at capacity, or this key is over its rate limit; retry after `Retry-After` seconds.",
    503: "The generation engine failed, or the catalog could not store the completion (or, for feedback, "
    "the deployment has no catalog); retry after `Retry-After` seconds.",
}
RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}
}
_BODY_ERRORS = (400, 408, 413)


_CHUNKS: tuple[type[BaseModel], ...] = (CompletionChunk, ChatCompletionChunk)


def _event_stream(chunk: type[BaseModel]) -> dict[str, Any]:
    """A ``text/event-stream`` media type whose ``schema`` describes one event (OpenAPI 3.1 usage;
    3.2 calls it ``itemSchema``): ``data`` is a JSON ``chunk``, or ``[DONE]`` at the end."""
    data = {
        "type": "string",
        "anyOf": [
            {"const": "[DONE]"},
            {
                "contentMediaType": "application/json",
                "contentSchema": {"$ref": f"#/components/schemas/{chunk.__name__}"},
            },
        ],
    }
    return {"schema": {"type": "object", "required": ["data"], "properties": {"data": data}}}


def responses(
    model: type[BaseModel] | None, *errors: int, stream: type[BaseModel] | None = None
) -> dict[int | str, Any]:
    """``responses=`` for a route: its 200 body (``model``), each of ``errors`` with the error body.

    ``stream`` (a chunk model) adds the server-sent events form of the 200 (``stream: true``).
    """
    out: dict[int | str, Any] = {}
    if model is not None:
        out[200] = {"model": model, "description": "OK"}
        if stream is not None:
            out[200]["content"] = {"text/event-stream": _event_stream(stream)}
    for status in sorted(set(errors)):
        out[status] = {"model": ErrorResponse, "description": _ERRORS[status]}
        if status in (429, 503):
            out[status]["headers"] = RETRY_AFTER
    return out


def body_responses(
    model: type[BaseModel], *errors: int, stream: type[BaseModel] | None = None
) -> dict[int | str, Any]:
    """:func:`responses` for a route that reads a JSON body: 400, 408 and 413 besides ``errors``."""
    return responses(model, *_BODY_ERRORS, *errors, stream=stream)


def install(api: FastAPI) -> None:
    """Serve the spec with the Bearer scheme on ``/v1`` routes and without FastAPI's 422."""

    def build() -> dict[str, Any]:
        if api.openapi_schema is None:
            spec = get_openapi(
                title=api.title,
                version=api.version,
                description=api.description,
                routes=api.routes,
                servers=api.servers or None,  # FastAPI adds the route prefix Serve mounts the app under
            )
            for path, item in spec.get("paths", {}).items():
                for op in item.values():
                    op.get("responses", {}).pop("422", None)
                    if path.startswith("/v1/"):
                        op["security"] = [{SECURITY_SCHEME: []}]
            components = spec.setdefault("components", {})
            schemas = components.setdefault("schemas", {})
            for unused in ("HTTPValidationError", "ValidationError"):
                schemas.pop(unused, None)
            # The chunk models appear only inside the event-stream schemas, which FastAPI does not scan.
            _, chunk_defs = models_json_schema(
                [(m, "serialization") for m in _CHUNKS], ref_template="#/components/schemas/{model}"
            )
            schemas.update(chunk_defs.get("$defs", {}))
            components["securitySchemes"] = {
                SECURITY_SCHEME: {"type": "http", "scheme": "bearer", "description": "An API key (ns-...)."}
            }
            served = getattr(api.state, "served_model", None)
            for body in ("CompletionRequest", "ChatCompletionRequest"):
                if served and body in schemas:
                    schemas[body]["properties"]["model"]["enum"] = [served]
            api.openapi_schema = spec
        return api.openapi_schema

    api.openapi = build  # type: ignore[method-assign]


def set_served_model(api: FastAPI, name: str) -> None:
    """State in the spec the one model id this deployment answers to (others get 404)."""
    api.state.served_model = name
    api.openapi_schema = None
