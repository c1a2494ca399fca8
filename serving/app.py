"""The Ray Serve application: an OpenAI-compatible FastAPI ingress over the generation engine.

``build_app(args) -> serve.Application`` is the entry point for ``serve run``/``serve deploy``
(``import_path: serving.app:build_app``), for ``nightshift serve`` and for the deploy stage.
Each replica loads the model, starts an :class:`~serving.engine.Engine` thread, and answers:

- ``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/completions``, ``POST /v1/chat/completions``
  (``stream: true`` gives server-sent events ending in ``data: [DONE]``), ``POST /v1/feedback``;
- ``GET /health`` (this replica's state and figures) and ``GET /openapi.json`` (see
  :mod:`serving.openapi`), without auth. Metrics go through ``ray.serve.metrics`` to Ray's metrics
  port, tagged by replica (:mod:`serving.metrics`).

A 429 or 503 always carries ``Retry-After`` (seconds).

Every response names the model artifact that produced it (``X-Nightshift-Model``) and every
completion is stored in the catalog with that artifact and the deployment.
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures at runtime
# through Serve's ingress wrapper, which cannot resolve postponed (string) annotations.

import asyncio
import logging
import sys
import threading
import time
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve

from catalog.db import session_scope
from catalog.lineage import record_artifact
from gpt.chat import END, encode_chat
from gpt.generate import encode_prompt
from gpt.tokenizer import EOT
from serving import errors, openapi
from serving.auth import AuthProblem, Identity, KeyCheck, collect_digests
from serving.engine import Engine, QueueFull, SamplingParams
from serving.engine_process import EngineProcess
from serving.limits import LimitSettings, RequestLimits
from serving.loader import load_served
from serving.metrics import Metrics
from serving.openapi import body_responses, responses
from serving.options import ServeArgs, deployment_options
from serving.ratelimit import RateLimiter
from serving.recorder import NotYours, Recorder
from serving.replica_bind import bind_to_node_address
from serving.responses import (
    Choice,
    chat_body,
    choice_id,
    completion_body,
    new_id,
)
from serving.schemas import ChatCompletionRequest, CompletionRequest, FeedbackRequest
from serving.streams import EventQueue, StreamingMixin

__all__ = ["NightshiftServer", "ServeArgs", "build_app", "deployment_options"]

log = logging.getLogger(__name__)

api = FastAPI(title="Nightshift", description="OpenAI-compatible API of the Nightshift GPT.", version="1")
errors.install(api)
openapi.install(api)
_LIMITS = LimitSettings()
api.add_middleware(RequestLimits, settings=_LIMITS)
# Besides the body errors: no key, unknown model, queue full or key over its rate, engine failed.
_GENERATION_ERRORS = (401, 404, 429, 503)
# Retry-After (s) of a full queue (it drains within a decode step or two) and of a failed engine or
# catalog write (Serve's health check replaces a failed replica within seconds).
_RETRY_FULL_S, _RETRY_FAILED_S = 1, 5


class Handoff:
    """Events from the engine thread to the replica's event loop, one wake-up per batch.

    A decode step emits one event per running sequence; waking the event loop once per step
    (not once per sequence) keeps the loop free for HTTP work when many sequences run.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Queue, Any]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def post(self, q: asyncio.Queue, item: Any) -> None:
        with self._lock:
            first = not self._pending
            self._pending.append((q, item))
        if first:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._flush)

    def bind(self) -> None:
        self._loop = asyncio.get_running_loop()

    def _flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        for q, item in batch:
            q.put_nowait(item)


@serve.deployment(name="NightshiftServer")
@serve.ingress(api)
class NightshiftServer(StreamingMixin):
    def __init__(self, args: dict[str, Any]):
        bind_to_node_address()  # before Serve starts this replica's gRPC server (on [::] otherwise)
        a = ServeArgs(**args)
        self.cfg = a.serve
        torch.set_num_threads(self.cfg.torch_threads)
        # The engine thread and the event loop share the GIL. With Python's default 5 ms switch
        # interval the engine, which takes the GIL back after every tensor op, can wait up to 5 ms
        # each time the loop is busy with HTTP work; a short interval hands it over sooner.
        sys.setswitchinterval(self.cfg.gil_switch_interval_ms / 1000)
        _LIMITS.max_body_bytes = self.cfg.max_body_bytes
        _LIMITS.body_timeout_s = self.cfg.body_timeout_s
        # An engine process loads the weights itself: the replica only verifies the artifact.
        self.served = load_served(a.model, tracking_uri=a.tracking_uri, weights=not self.cfg.engine_process)
        self.tok = self.served.tokenizer
        self.block_size = self.served.cfg.block_size
        self.engine: Engine | EngineProcess
        if self.cfg.engine_process:
            self.engine = EngineProcess(
                self.served.ref.path,
                block_size=self.block_size,
                max_batch=self.cfg.max_batch,
                max_waiting=self.cfg.max_waiting,
                threads=self.cfg.torch_threads,
            ).start()
        else:
            assert self.served.model is not None
            self.engine = Engine(
                self.served.model, self.tok, max_batch=self.cfg.max_batch, max_waiting=self.cfg.max_waiting
            ).start()
        self.name = self.cfg.model_name
        self.created = int(time.time())  # when this replica started serving the model
        openapi.set_served_model(api, self.name)
        self.headers = {"X-Nightshift-Model": f"model:{self.served.ref.sha256}"}
        version = self.served.registry.get("version") or a.registry_version
        if version:
            self.headers["X-Nightshift-Model-Version"] = str(version)
        if self.cfg.auth == "none":
            self.keys = KeyCheck(None)
        else:
            digests = collect_digests(self.cfg.api_key_hashes, self.cfg.api_key_file)
            if not digests and not a.catalog_url:
                raise ValueError(
                    "serve.auth is 'api_key' but there is no catalog to hold keys and no static key; set "
                    "tracking.catalog_url and run `nightshift keys create --name NAME`, set "
                    "$NIGHTSHIFT_API_KEYS, or set serve.auth: none for a local demo"
                )
            self.keys = KeyCheck(digests, a.catalog_url, self.cfg.key_cache_s)
        self.limits = {
            "completions": RateLimiter(self.cfg.completions_per_minute, self.cfg.rate_limit_burst_s),
            "feedback": RateLimiter(self.cfg.feedback_per_minute, self.cfg.rate_limit_burst_s),
        }
        self.metrics = Metrics(getattr(self.engine, "pid", None))
        self.metrics.start(lambda: (self.engine.stats(), self._open_streams))
        self._handoff = Handoff()
        self.recorder = None
        self.deployment_id = a.deployment_id
        self.artifact_id: int | None = None
        if a.catalog_url and self.cfg.record_completions:
            self.recorder = Recorder(a.catalog_url)
            self.metrics.watch_recorder(self.recorder)
            with session_scope(a.catalog_url) as s:
                self.artifact_id = record_artifact(s, self.served.ref).id
        log.info("replica ready: %s, auth %s", self.headers["X-Nightshift-Model"], self.cfg.auth)

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.stop()
        if getattr(self, "metrics", None) is not None:
            self.metrics.stop()

    async def check_health(self) -> None:
        """Serve's replica health check: a failed engine thread makes the replica unhealthy."""
        if self.engine.error is not None:
            raise RuntimeError(f"generation engine failed: {self.engine.error!r}")

    # --- helpers --------------------------------------------------------------------------------

    async def _auth(self, request: Request, limit: str | None = None) -> Identity | None:
        """The identity of the request's key (None without auth); 401 without a valid key, and 429 when
        the key is over its ``limit`` (``completions`` or ``feedback``) with ``Retry-After``."""
        ident = None
        if self.keys.enabled:
            try:
                d = self.keys.digest_of(request.headers.get("authorization"))
            except AuthProblem as e:
                raise errors.APIError(401, str(e), code="invalid_api_key") from None
            found = self.keys.cached(d)
            if found is False:
                found = await asyncio.to_thread(self.keys.lookup, d)
            if not isinstance(found, Identity):
                raise errors.APIError(401, "invalid API key (unknown or revoked)", code="invalid_api_key")
            ident = found
        # Limits are per key: with serve.auth 'none' there is no key to limit (local experiments only).
        if limit is not None and ident is not None and (wait := self.limits[limit].take(ident.id)):
            self.metrics.rate_limited.inc(tags={"limit": limit})
            raise errors.APIError(
                429,
                f"this key is over its {limit} rate limit (serve.{limit}_per_minute); retry after {wait} s",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(wait)},
            )
        return ident

    def _model(self, name: str) -> None:
        if name != self.name:
            raise errors.APIError(
                404,
                f"the model '{name}' does not exist; this server serves '{self.name}'",
                param="model",
                code="model_not_found",
            )

    def _params(
        self, body: Any, n_prompt: int, *, default_max: int, stops: tuple[str, ...], stop_ids, lp
    ) -> SamplingParams:
        if n_prompt >= self.block_size:
            raise errors.APIError(
                400,
                f"the prompt has {n_prompt} tokens; this model's context is {self.block_size} tokens. "
                "Shorten the prompt.",
                param="messages" if isinstance(body, ChatCompletionRequest) else "prompt",
                code="context_length_exceeded",
            )
        max_tokens = (
            body.max_tokens if body.max_tokens is not None else min(default_max, self.block_size - n_prompt)
        )
        if n_prompt + max_tokens > self.block_size:
            raise errors.APIError(
                400,
                f"this model's maximum context length is {self.block_size} tokens, but "
                f"{n_prompt + max_tokens} were requested ({n_prompt} in the prompt, {max_tokens} in the "
                "completion); reduce the prompt or max_tokens",
                param="max_tokens",
                code="context_length_exceeded",
            )
        # Every choice of a request decodes in the batch at once, so n is bounded by the batch too.
        max_n = min(self.cfg.max_n, self.cfg.max_batch)
        if body.n > max_n:
            raise errors.APIError(
                400, f"n is {body.n}; at most {max_n} is allowed (serve.max_n, serve.max_batch)", param="n"
            )
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            stop=stops,
            stop_ids=stop_ids,
            logprobs=lp,
        )

    def _submit(
        self, prompts: list[list[int]], params: SamplingParams, n: int
    ) -> tuple[EventQueue, list[int]]:
        """Queue every prompt x n; events arrive on the returned asyncio queue as (prompt_index, delta)."""
        q = EventQueue()
        self._handoff.bind()
        post = self._handoff.post
        ids: list[int] = []
        try:
            for pi, ids_ in enumerate(prompts):
                ids.append(self.engine.submit(ids_, params, lambda d, pi=pi: post(q, (pi, d)), n))
        except QueueFull as e:
            for rid in ids:
                self.engine.cancel(rid)
            self.metrics.rejected.inc()
            raise errors.APIError(
                429,
                f"the server is at capacity ({e}); retry after {_RETRY_FULL_S} s",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(_RETRY_FULL_S)},
            ) from e
        return q, ids

    async def _record(
        self,
        endpoint: str,
        rid: str,
        prompts: list[str],
        choices: list[Choice],
        n: int,
        n_prompt_tokens: list[int],
        body: Any,
        who: Identity | None,
    ) -> None:
        if self.recorder is None:
            return
        params = body.model_dump(
            exclude={"messages", "prompt", "stream", "stream_options"}, exclude_none=True
        )
        rows = [
            {
                "id": choice_id(rid, c.index),
                "deployment_id": self.deployment_id,
                "model_artifact_id": self.artifact_id,
                "endpoint": endpoint,
                "prompt": prompts[c.prompt_index],
                "response": c.text,
                "params": params,
                "prompt_tokens": n_prompt_tokens[c.prompt_index],
                "completion_tokens": c.completion_tokens,
                "user": body.user,
                "key_id": who.id if who is not None else None,
            }
            for c in choices
        ]
        try:
            await asyncio.wrap_future(self.recorder.record(rows))
        except Exception as e:
            raise errors.APIError(
                503,
                "the completion could not be stored in the catalog; retry later",
                code="record_failed",
                headers={"Retry-After": str(_RETRY_FAILED_S)},
            ) from e

    async def _collect(self, q: asyncio.Queue, ids: list[int], total: int, n: int) -> list[Choice]:
        choices = [Choice(i, i // n) for i in range(total)]
        done = 0
        t0 = time.perf_counter()
        first = True
        try:
            while done < total:
                pi, d = await q.get()
                if first:
                    self.metrics.ttft.observe(time.perf_counter() - t0)
                    first = False
                c = choices[pi * n + d.index]
                c.add(d)
                if d.finish_reason:
                    if d.finish_reason == "error":
                        raise errors.APIError(
                            503,
                            "the generation engine failed; retry later",
                            code="engine_error",
                            headers={"Retry-After": str(_RETRY_FAILED_S)},
                        )
                    done += 1
        except asyncio.CancelledError:
            for rid in ids:
                self.engine.cancel(rid)
            self.metrics.disconnects.inc()
            raise
        return choices

    def _json(self, route: str, body: dict[str, Any], t0: float) -> JSONResponse:
        usage = body["usage"]
        self.metrics.count_answer(
            route, time.perf_counter() - t0, usage["prompt_tokens"], usage["completion_tokens"]
        )
        return JSONResponse(body, headers=self.headers)

    # --- routes ---------------------------------------------------------------------------------

    @api.get(
        "/health",
        responses={
            200: {"model": openapi.Health},
            503: {"model": openapi.Health, "headers": openapi.RETRY_AFTER},
        },
    )
    async def health(self) -> JSONResponse:
        ok = self.engine.error is None
        stats = self.engine.stats()
        return JSONResponse(
            {
                "status": "ok" if ok else "failed",
                "model": self.headers["X-Nightshift-Model"],
                **stats,
                # This replica's figures now; the scrape of every replica is Ray's metrics port.
                "figures": self.metrics.snapshot(stats, self._open_streams)
                | {"stream_writes": self.metrics.stream_writes_total},
            },
            status_code=200 if ok else 503,
            headers=self.headers if ok else {**self.headers, "Retry-After": str(_RETRY_FAILED_S)},
        )

    def _card(self) -> dict[str, Any]:
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "nightshift"}

    @api.get("/v1/models", responses=responses(openapi.ModelList, 401))
    async def models(self, request: Request) -> JSONResponse:
        await self._auth(request)
        return JSONResponse({"object": "list", "data": [self._card()]}, headers=self.headers)

    @api.get("/v1/models/{model_id}", responses=responses(openapi.ModelCard, 401, 404))
    async def model(self, model_id: str, request: Request) -> JSONResponse:
        await self._auth(request)
        self._model(model_id)
        return JSONResponse(self._card(), headers=self.headers)

    @api.post(
        "/v1/completions",
        responses=body_responses(openapi.Completion, *_GENERATION_ERRORS, stream=openapi.CompletionChunk),
    )
    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        t0 = time.perf_counter()
        who = await self._auth(request, "completions")
        self._model(body.model)
        if isinstance(body.prompt, list) and body.prompt and all(isinstance(x, int) for x in body.prompt):
            vocab = self.tok.get_vocab_size(with_added_tokens=True)
            if any(not 0 <= x < vocab for x in body.prompt):  # type: ignore[operator]
                raise errors.APIError(400, f"prompt token ids must be in [0, {vocab})", param="prompt")
            prompts_ids, texts = (
                [list(body.prompt)],
                [self.tok.decode(body.prompt, skip_special_tokens=False)],
            )  # type: ignore[arg-type]
        else:
            texts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)  # type: ignore[arg-type]
            if not texts:
                raise errors.APIError(400, "prompt must not be an empty list", param="prompt")
            if len(texts) > self.cfg.max_prompts:
                raise errors.APIError(
                    400,
                    f"prompt is a list of {len(texts)} prompts; at most {self.cfg.max_prompts} are allowed "
                    "per request (serve.max_prompts); split it over several requests",
                    param="prompt",
                )
            prompts_ids = [encode_prompt(self.tok, t) for t in texts]
        # End-of-text ends a completion; so does the chat end marker, which a chat-tuned model
        # writes when its answer is done (it is not text a completion should contain).
        stop_ids = tuple(i for i in (self.tok.token_to_id(EOT), self.tok.token_to_id(END)) if i is not None)
        # Every prompt is checked against the context; the batch shares the first one's params
        # (they differ only in the default max_tokens, which depends on the prompt length).
        checked = [
            self._params(
                body, len(p), default_max=16, stops=body.stops(), stop_ids=stop_ids, lp=body.logprobs
            )
            for p in prompts_ids
        ]
        params = checked[0]
        q, ids = self._submit(prompts_ids, params, body.n)
        rid = new_id("cmpl")
        n_tokens = [len(p) for p in prompts_ids]
        total = len(prompts_ids) * body.n
        if body.stream:
            return self._stream_completions(q, ids, rid, texts, n_tokens, total, body, who)
        choices = await self._collect(q, ids, total, body.n)
        await self._record("completions", rid, texts, choices, body.n, n_tokens, body, who)
        return self._json(
            "completions",
            completion_body(rid, self.name, choices, sum(n_tokens), body.logprobs is not None),
            t0,
        )

    @api.post(
        "/v1/chat/completions",
        responses=body_responses(
            openapi.ChatCompletion, *_GENERATION_ERRORS, stream=openapi.ChatCompletionChunk
        ),
    )
    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        t0 = time.perf_counter()
        who = await self._auth(request, "completions")
        self._model(body.model)
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in body.messages
        ]
        chat = encode_chat(self.tok, messages)
        lp = (body.top_logprobs or 0) if body.logprobs else None
        params = self._params(
            body,
            len(chat.ids),
            default_max=self.block_size,
            stops=body.stops() + chat.stop,
            stop_ids=chat.stop_ids,
            lp=lp,
        )
        q, ids = self._submit([chat.ids], params, body.n)
        rid = new_id("chatcmpl")
        if body.stream:
            return self._stream_chat(q, ids, rid, chat.text, len(chat.ids), body, who)
        choices = await self._collect(q, ids, body.n, body.n)
        await self._record("chat", rid, [chat.text], choices, body.n, [len(chat.ids)], body, who)
        return self._json("chat", chat_body(rid, self.name, choices, len(chat.ids), body.logprobs), t0)

    @api.post("/v1/feedback", responses=body_responses(openapi.FeedbackAck, 401, 403, 404, 429, 503))
    async def feedback(self, body: FeedbackRequest, request: Request) -> JSONResponse:
        """A rating or comparison by the request's key (its name is the labeller; ``user`` is only data).

        A client key may label only completions it received; one label per key and target (a
        completion, or a pair in either order): a repeat replaces the earlier one.
        """
        who = await self._auth(request, "feedback")
        if self.recorder is None:
            raise errors.APIError(
                503, "this deployment has no catalog to store feedback in", code="no_catalog"
            )
        try:
            stored = await asyncio.to_thread(self.recorder.add_feedback, body, who)
        except LookupError as e:
            raise errors.APIError(404, str(e), param="completion_id", code="completion_not_found") from e
        except NotYours as e:
            self.metrics.requests.inc(tags={"route": "feedback", "status": "403"})
            raise errors.APIError(403, str(e), param="completion_id", code="not_your_completion") from e
        self.metrics.requests.inc(tags={"route": "feedback", "status": "200"})
        return JSONResponse(
            {
                "id": stored.id,
                "object": "feedback",
                "kind": body.kind,
                "created": int(time.time()),
                "labeller": stored.labeller,
                "replaced": stored.replaced,
            },
            headers=self.headers,
        )


def build_app(args: dict[str, Any]) -> serve.Application:
    """The Serve application for ``args`` (see :class:`ServeArgs`), validated before any replica starts."""
    a = ServeArgs(**args)
    return NightshiftServer.options(**deployment_options(a.serve)).bind(a.model_dump(mode="json"))
