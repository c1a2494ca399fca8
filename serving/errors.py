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

log = logging.getLogger(__name__)

_FASTAPI_BODY_ERROR = "There was an error parsing the body"

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class APIError(Exception):
    """An error to return as an OpenAI-style body with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers


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


# A 429 or 503 without a more precise wait of its own still tells the client when to come back.
DEFAULT_RETRY_AFTER_S = 1


def error_response(
    status: int, message: str, param: str | None = None, code: str | None = None, headers=None
):
    if status in (429, 503) and "Retry-After" not in (headers or {}):
        headers = {**(headers or {}), "Retry-After": str(DEFAULT_RETRY_AFTER_S)}
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
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else exc.headers
        return error_response(exc.status, exc.message, exc.param, exc.code, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {"loc": (), "msg": "invalid request"}
        param = _loc(tuple(first.get("loc", ())))
        if first.get("type") == "json_invalid":
            return error_response(400, "the request body is not valid JSON", None, "invalid_json")
        if param is None and first.get("type") in ("missing", "model_attributes_type", "dict_type"):
            return error_response(
                400,
                "the request body must be a JSON object (Content-Type: application/json)",
                None,
                "invalid_json",
            )
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
        code = getattr(exc, "code", None)
        msg = str(exc.detail)
        if exc.status_code == 404:
            msg = f"no route {request.method} {request.url.path}; see GET /v1/models and the API docs"
        elif exc.status_code == 405:
            msg = f"method {request.method} is not allowed on {request.url.path}"
        elif exc.status_code == 400 and msg == _FASTAPI_BODY_ERROR:
            # FastAPI's answer when the body reader fails: bytes that are not UTF-8, or JSON nested
            # deeper than the parser's recursion limit.
            msg, code = "the request body could not be read as JSON: send a UTF-8 JSON object", "invalid_json"
        # A 405 keeps its Allow header (RFC 9110, 15.5.6).
        return error_response(exc.status_code, msg, None, code, exc.headers)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            500, "internal server error; the server logged the details", None, "internal_error"
        )
