"""OpenAI-style errors: every failure leaves as ``{"error": {"message", "type", "param", "code"}}``.

Client mistakes are 4xx with a message that names the parameter and the fix; only our own bugs
are 500, and those are logged with a traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class APIError(Exception):
    """An error to return as an OpenAI-style body with ``status``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }


def error_response(
    status: int, message: str, param: str | None = None, code: str | None = None, headers=None
):
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


def _loc(loc: tuple[Any, ...]) -> str | None:
    parts = [p for p in loc if p != "body"]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif not str(p).startswith(("function-", "tagged-union")) and p not in (
            "str",
            "list[str]",
            "list[int]",
        ):
            out += ("." if out else "") + str(p)
    return out or None


def install(app: FastAPI) -> None:
    """Register the handlers that turn every exception into an OpenAI-style body."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error_response(exc.status, exc.message, exc.param, exc.code, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {"loc": (), "msg": "invalid request"}
        param = _loc(tuple(first.get("loc", ())))
        if first.get("type") == "json_invalid":
            return error_response(400, "the request body is not valid JSON", None, "invalid_json")
        msgs = []
        for e in errs[:5]:
            where = _loc(tuple(e.get("loc", ())))
            msg = str(e.get("msg", "")).removeprefix("Value error, ")
            if e.get("type") == "extra_forbidden":
                msg = "unrecognized request argument; remove it"
            elif e.get("type") == "missing":
                msg = "required but missing"
            msgs.append(f"{where}: {msg}" if where else msg)
        return error_response(400, "; ".join(msgs), param, "invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        msg = {
            404: f"no route {request.method} {request.url.path}; see GET /v1/models and the API docs",
            405: f"method {request.method} is not allowed on {request.url.path}",
        }.get(exc.status_code, str(exc.detail))
        return error_response(exc.status_code, msg)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            500, "internal server error; the server logged the details", None, "internal_error"
        )


class BodyLimitSetting:
    """The limit :class:`BodyLimit` enforces; the replica sets it from config once it has one."""

    def __init__(self, limit: int = 1_000_000):
        self.limit = limit


class BodyLimit:
    """ASGI middleware: refuse request bodies over the limit with 413, before reading them all.

    A declared Content-Length is checked up front; a chunked body is counted as it arrives.
    """

    def __init__(self, app: ASGIApp, setting: BodyLimitSetting):
        self.app, self.setting = app, setting

    @property
    def limit(self) -> int:
        return self.setting.limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        seen = 0
        too_big = False

        async def counting_receive() -> Message:
            nonlocal seen, too_big
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    too_big = True
                    raise _TooBig
            return msg

        try:
            await self.app(scope, counting_receive, send)
        except _TooBig:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        resp = error_response(413, f"request body is larger than {self.limit} bytes", None, "body_too_large")
        await resp({"type": "http"}, _empty_receive, send)


class _TooBig(Exception):
    pass


async def _empty_receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}
