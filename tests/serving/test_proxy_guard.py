"""The header timeout that serving/proxy_guard.py gives uvicorn, on a real uvicorn server of its own.

The server runs in a subprocess the way Serve's proxy runs it: the callback named by
``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` is called, then uvicorn serves. (test_abuse.py checks the
same on the live Serve proxy.)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from core.serve_config import DEFAULT_HEADER_TIMEOUT_S, proxy_env
from serving.proxy_guard import install
from tests.conftest import REPO_ROOT, _stop_group, free_port
from tests.serving.abuse_kit import read_reply, request_bytes

TIMEOUT_S = 1.0
SERVER = """
import importlib, os, sys
import uvicorn

module, _, name = os.environ["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"].rpartition(".")
assert getattr(importlib.import_module(module), name)() == []

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})

port, http = int(sys.argv[1]), sys.argv[2]
uvicorn.run(app, host="127.0.0.1", port=port, timeout_keep_alive=30, log_level="warning", http=http)
"""


@pytest.fixture(params=["httptools", "h11"])
def server(request: pytest.FixtureRequest) -> Iterator[int]:
    port = free_port()
    env = {**os.environ, **proxy_env(TIMEOUT_S), "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(port), request.param], env=env, start_new_session=True
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.1)
    time.sleep(TIMEOUT_S + 0.2)  # the probe connection above is closed by now
    yield port
    _stop_group(proc)


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bytes, float | None]:
    """What the server sent, and when it closed the connection (None: still open after ``seconds``)."""
    sock.settimeout(0.1)
    got, t0 = b"", time.monotonic()
    while time.monotonic() - t0 < seconds:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionError:
            return got, time.monotonic() - t0
        if not chunk:
            return got, time.monotonic() - t0
        got += chunk
    return got, None


def test_unfinished_headers_get_408_and_the_connection_closed(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        got, closed = _closed_within(sock, TIMEOUT_S + 3)
    assert closed is not None and got.startswith(b"HTTP/1.1 408 "), got
    assert b'"code": "header_timeout"' in got


def test_a_connection_that_sends_nothing_is_closed(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server)) as sock:
        got, closed = _closed_within(sock, TIMEOUT_S + 3)
    assert closed is not None and got.startswith(b"HTTP/1.1 408 "), got


def test_a_slow_body_is_left_to_the_application(server: int) -> None:
    # Headers complete: the request is under way and the header deadline no longer applies.
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(request_bytes("POST", "/", [], content_length=4))
        got, closed = _closed_within(sock, TIMEOUT_S + 1)
        assert closed is None and got == b""
        sock.sendall(b"abcd")
        assert read_reply(sock, "slow body", time.monotonic(), 5).status == 200


def test_idle_keep_alive_is_not_cut_but_a_slow_second_request_is(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server)) as sock:
        for _ in range(2):
            sock.sendall(request_bytes("GET", "/"))
            assert read_reply(sock, "keep-alive", time.monotonic(), 5).status == 200
            time.sleep(TIMEOUT_S + 0.5)  # idle: only the keep-alive timeout (30 s) applies
        sock.sendall(b"GET / HTTP/1.1\r\n")  # the next request starts, and stalls
        got, closed = _closed_within(sock, TIMEOUT_S + 3)
    assert closed is not None and got.startswith(b"HTTP/1.1 408 "), got


def test_a_bad_timeout_falls_back_to_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from serving import proxy_guard

    protocol = type("Protocol", (H11Protocol,), {})  # patched instead of uvicorn's own class
    monkeypatch.setattr(proxy_guard, "_protocol_classes", lambda: [protocol])
    monkeypatch.setenv("NIGHTSHIFT_SERVE_HEADER_TIMEOUT_S", "ten")
    assert install() == []
    assert protocol._nightshift_header_timeout == DEFAULT_HEADER_TIMEOUT_S
