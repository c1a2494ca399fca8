"""What one request may cost before a route sees it: body size, body time, and the proxy's knobs.

:class:`RequestLimits` is ASGI middleware in front of every route of a replica:

- a body over ``serve.max_body_bytes`` is refused with 413: a declared ``Content-Length`` at once,
  a chunked body (or one whose length is not declared) as soon as the bytes read pass the limit;
- a body that has not wholly arrived ``serve.body_timeout_s`` after the request started is refused
  with 408, so a client that sends its body byte by byte (slow loris) cannot hold a request slot;
- the headers through which Ray Serve's proxy lets a caller lift its request timeout or stop it from
  cancelling on disconnect (``x-request-timeout-seconds``, ``x-request-disconnect-disabled``) are
  refused with 400: they are meant for a trusted load balancer, and from an API client they would
  undo the bounds above.

Limits raised while FastAPI reads the body are Starlette ``HTTPException`` subclasses, because
FastAPI turns any other exception from the body reader into a generic 400.
"""

from __future__ import annotations

import asyncio

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.errors import error_response

# Ray Serve's proxy reads these from the request (ray/serve/_private/http_util.py).
PROXY_OVERRIDE_HEADERS = (b"x-request-timeout-seconds", b"x-request-disconnect-disabled")


class LimitError(HTTPException):
    """A request over one of the limits; ``code`` is the OpenAI-style error code.

    The answer closes the connection: the rest of the body may still be on its way, and read as
    the next request it would be garbage (and a slow sender would keep the connection alive).
    """

    def __init__(self, status: int, message: str, code: str):
        super().__init__(status_code=status, detail=message, headers={"Connection": "close"})
        self.code = code


class LimitSettings:
    """The limits :class:`RequestLimits` enforces; the replica sets them from config once it has one."""

    def __init__(self, max_body_bytes: int = 1_000_000, body_timeout_s: float = 30.0):
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s

    def too_large(self) -> LimitError:
        return LimitError(
            413,
            f"request body is larger than {self.max_body_bytes} bytes (serve.max_body_bytes); "
            "send fewer or shorter prompts",
            "body_too_large",
        )

    def too_slow(self) -> LimitError:
        return LimitError(
            408,
            f"the request body did not arrive within {self.body_timeout_s:g} s (serve.body_timeout_s); "
            "send the whole body at once",
            "body_timeout",
        )


class RequestLimits:
    """ASGI middleware enforcing :class:`LimitSettings` on every HTTP request."""

    def __init__(self, app: ASGIApp, settings: LimitSettings):
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        s = self.settings
        headers = dict(scope.get("headers") or [])
        for name in PROXY_OVERRIDE_HEADERS:
            if name in headers:
                msg = f"the header {name.decode()} is not accepted from API clients; remove it"
                await error_response(400, msg, name.decode(), "header_not_allowed")(scope, receive, send)
                return
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > s.max_body_bytes:
            err = s.too_large()
            await error_response(err.status_code, err.detail, None, err.code, err.headers)(
                scope, receive, send
            )
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + s.body_timeout_s
        seen = 0
        body_done = False

        async def limited_receive() -> Message:
            nonlocal seen, body_done
            if body_done:
                # Past the body, receive() only waits for a disconnect (a stream listens for one
                # for as long as it runs): no deadline applies.
                return await receive()
            try:
                msg = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise s.too_slow() from None
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > s.max_body_bytes:
                    raise s.too_large()
                body_done = not msg.get("more_body", False)
            else:
                body_done = True
            return msg

        await self.app(scope, limited_receive, send)
