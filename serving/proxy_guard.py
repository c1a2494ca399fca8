"""A request-header timeout for Ray Serve's HTTP proxy (slow-header clients).

Serve's proxy runs uvicorn, which bounds idle keep-alive connections but starts no timer while a
request's headers arrive: a client that opens a connection and sends its headers a byte at a time,
or never finishes them, holds that connection (and a file descriptor) for as long as it likes.
Ray exposes no setting for this, but it calls one user function in each proxy process before the
proxy starts serving, named by ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``. :func:`install` is that
function: it gives uvicorn's HTTP protocols a header deadline, the way ``client_header_timeout`` does
in nginx, and returns no middleware.

The rule: a connection must have a whole request head (request line and headers) within
``NIGHTSHIFT_SERVE_HEADER_TIMEOUT_S`` seconds (``serve.header_timeout_s``) of opening, and, on a
kept-alive connection, of the first byte of each later request. Otherwise it gets ``408`` with an
OpenAI-style error body and is closed. Bodies are bounded separately, in the replica
(``serve.body_timeout_s``); idle kept-alive connections by ``serve.keep_alive_timeout_s``.

The variables must be in the environment of Ray's processes when Ray starts (the proxy inherits it
from its raylet): ``core.serve_config.proxy_env`` gives them, ``init_ray`` and
``infra/local/ray-head.sh`` set them, and the rendered cluster manifests carry them. This module runs
inside Ray's proxy actor, so it imports little: the standard library, uvicorn and the constants.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

from core.serve_config import DEFAULT_HEADER_TIMEOUT_S, HEADER_TIMEOUT_ENV

# uvicorn is imported inside the functions that use it, not here: it takes a second or more to
# import, and not every user of this module needs it.

log = logging.getLogger(__name__)

_TIMER = "_nightshift_header_timer"


def install() -> list[Any]:
    """Ray Serve's proxy callback: add the header deadline to uvicorn; no middlewares."""
    raw = os.environ.get(HEADER_TIMEOUT_ENV, "")
    try:
        timeout = float(raw) if raw else DEFAULT_HEADER_TIMEOUT_S
    except ValueError:
        log.error(
            "%s=%r is not a number of seconds; using %g", HEADER_TIMEOUT_ENV, raw, DEFAULT_HEADER_TIMEOUT_S
        )
        timeout = DEFAULT_HEADER_TIMEOUT_S
    if timeout > 0:
        for cls in _protocol_classes():
            _add_deadline(cls, timeout)
        log.info("HTTP proxy: request headers must arrive within %g s", timeout)
    return []


def _protocol_classes() -> list[type]:
    classes: list[type] = []
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        classes.append(HttpToolsProtocol)
    except ImportError:  # httptools missing: uvicorn uses h11
        pass
    from uvicorn.protocols.http.h11_impl import H11Protocol

    classes.append(H11Protocol)
    return classes


def _408(timeout: float) -> bytes:
    body = json.dumps(
        {
            "error": {
                "message": f"the request headers did not arrive within {timeout:g} s; send them at once",
                "type": "invalid_request_error",
                "param": None,
                "code": "header_timeout",
            }
        }
    ).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


def _in_request(proto: Any) -> bool:
    """The connection's current request has its head (uvicorn made its cycle) and is unanswered."""
    cycle = getattr(proto, "cycle", None)
    return cycle is not None and not cycle.response_complete


def _disarm(proto: Any) -> None:
    timer: asyncio.TimerHandle | None = getattr(proto, _TIMER, None)
    if timer is not None:
        timer.cancel()
        setattr(proto, _TIMER, None)


def _add_deadline(cls: type, timeout: float) -> None:
    """Wrap ``cls``'s connection callbacks with the header deadline (once; later calls reset the time)."""
    if getattr(cls, "_nightshift_header_timeout", None) is not None:
        cls._nightshift_header_timeout = timeout  # type: ignore[attr-defined]
        return
    cls._nightshift_header_timeout = timeout  # type: ignore[attr-defined]
    made, received, complete, lost = (
        cls.connection_made,  # type: ignore[attr-defined]
        cls.data_received,  # type: ignore[attr-defined]
        cls.on_response_complete,  # type: ignore[attr-defined]
        cls.connection_lost,  # type: ignore[attr-defined]
    )

    def expire(proto: Any) -> None:
        setattr(proto, _TIMER, None)
        transport = getattr(proto, "transport", None)
        if transport is None or transport.is_closing() or _in_request(proto):
            return
        transport.write(_408(cls._nightshift_header_timeout))  # type: ignore[attr-defined]
        transport.close()

    def arm(proto: Any) -> None:
        _disarm(proto)
        setattr(proto, _TIMER, proto.loop.call_later(cls._nightshift_header_timeout, expire, proto))  # type: ignore[attr-defined]

    def connection_made(self: Any, transport: Any, *args: Any, **kwargs: Any) -> None:
        made(self, transport, *args, **kwargs)
        arm(self)

    def data_received(self: Any, data: bytes) -> None:
        # The first byte of a new request on a kept-alive connection starts its deadline.
        if getattr(self, _TIMER, None) is None and not _in_request(self):
            arm(self)
        received(self, data)

    def on_response_complete(self: Any) -> None:
        _disarm(self)  # idle from here: the keep-alive timeout applies until the next byte
        complete(self)

    def connection_lost(self: Any, exc: Exception | None) -> None:
        _disarm(self)
        lost(self, exc)

    cls.connection_made = connection_made  # type: ignore[attr-defined]
    cls.data_received = data_received  # type: ignore[attr-defined]
    cls.on_response_complete = on_response_complete  # type: ignore[attr-defined]
    cls.connection_lost = connection_lost  # type: ignore[attr-defined]
