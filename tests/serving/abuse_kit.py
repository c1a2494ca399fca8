"""Attacks on a live Nightshift endpoint, shared by ``tests/serving/test_abuse*.py`` and ``bench/abuse.py``.

Requests go out as raw bytes over a socket, so that what a hostile client sends (header name case,
duplicate headers, ``..`` in a path, a Content-Length that lies, a body that never ends) reaches the
server exactly as written; an HTTP client library would normalise or refuse most of it.

Every attack returns :class:`Reply` objects; the callers decide what is acceptable (never a 2xx
without a valid key, never a 5xx, 413/400 for bodies over the limit, ...).
"""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from serving.auth import digest

MODEL = "nightshift-gpt"


@dataclass(frozen=True)
class Target:
    """A deployed app: ``url`` is ``http://127.0.0.1:<port>/<route prefix>`` (no trailing slash)."""

    url: str
    key: str
    model: str = MODEL

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 80

    @property
    def prefix(self) -> str:
        return urlsplit(self.url).path.rstrip("/")


@dataclass
class Reply:
    """One answer read off the socket; ``status`` is None when the server closed without answering."""

    name: str
    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    seconds: float = 0.0
    closed: bool = False  # the server closed the connection after this answer

    def json(self) -> dict:
        return json.loads(self.body)

    @property
    def error_code(self) -> str | None:
        try:
            return self.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            return None


def request_bytes(
    method: str,
    path: str,
    headers: list[tuple[str, str]] = (),  # type: ignore[assignment]
    body: bytes | None = None,
    *,
    content_length: int | None = None,
) -> bytes:
    """An HTTP/1.1 request as bytes; ``content_length`` overrides the true length (to lie)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body is not None or content_length is not None:
        lines.append(f"Content-Length: {len(body or b'') if content_length is None else content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def read_reply(sock: socket.socket, name: str, t0: float, timeout: float, head: bool = False) -> Reply:
    sock.settimeout(timeout)
    buf = b""
    try:
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                return Reply(name, None, seconds=time.monotonic() - t0, closed=True)
            buf += chunk
        top, rest = buf.split(b"\r\n\r\n", 1)
        status_line, *header_lines = top.decode("latin-1").split("\r\n")
        headers = {}
        for ln in header_lines:
            k, _, v = ln.partition(":")
            headers[k.strip().lower()] = v.strip()
        status = int(status_line.split()[1])
        if head:
            body = b""
        elif "content-length" in headers:
            need = int(headers["content-length"])
            while len(rest) < need:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                rest += chunk
            body = rest[:need]
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while not rest.endswith(b"0\r\n\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                rest += chunk
            body = _dechunk(rest)
        else:
            body = rest
        closed = headers.get("connection", "").lower() == "close"
        return Reply(name, status, headers, body, time.monotonic() - t0, closed)
    except (TimeoutError, ConnectionError) as e:
        return Reply(name, None, body=repr(e).encode(), seconds=time.monotonic() - t0, closed=True)


def _dechunk(data: bytes) -> bytes:
    out, pos = b"", 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            return out
        size = int(data[pos:end].split(b";")[0] or b"0", 16)
        if size == 0:
            return out
        out += data[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2


def send_raw(target: Target, name: str, data: bytes, *, timeout: float = 60) -> Reply:
    """Send ``data`` on a fresh connection and read one reply (headers only for a HEAD request)."""
    t0 = time.monotonic()
    with socket.create_connection((target.host, target.port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except ConnectionError:
            pass  # the server may answer (413) and close before it has read everything
        return read_reply(sock, name, t0, timeout, head=data.startswith(b"HEAD "))


def completion_body(target: Target, **extra) -> bytes:
    return json.dumps({"model": target.model, "prompt": "to be or", "max_tokens": 4, **extra}).encode()


# --- auth bypass ----------------------------------------------------------------------------------

PROTECTED = (
    ("GET", "/v1/models"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/feedback"),
)


def _body_for(target: Target, path: str) -> bytes | None:
    if path.endswith("/completions") and "chat" not in path:
        return completion_body(target)
    if path.endswith("/chat/completions"):
        return json.dumps(
            {"model": target.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        ).encode()
    if path.endswith("/feedback"):
        return json.dumps({"completion_id": "cmpl-x", "rating": 1}).encode()
    return None


def bad_credentials(key: str) -> Iterator[tuple[str, list[tuple[str, str]], str]]:
    """(name, headers, query) of requests that must all be refused: none carries the valid key
    where the server takes it (``Authorization: Bearer <key>``)."""
    flipped = [
        key[:i] + ("A" if key[i] != "A" else "B") + key[i + 1 :] for i in (0, len(key) // 2, len(key) - 1)
    ]
    basic = base64.b64encode(f"{key}:".encode()).decode()
    yield "no header", [], ""
    yield "Basic scheme", [("Authorization", f"Basic {basic}")], ""
    yield "key without scheme", [("Authorization", key)], ""
    yield "empty Bearer token", [("Authorization", "Bearer ")], ""
    yield "Bearer without token", [("Authorization", "Bearer")], ""
    yield "empty header", [("Authorization", "")], ""
    for i, k in enumerate(flipped):
        yield f"key off by one char ({i})", [("Authorization", f"Bearer {k}")], ""
    yield "key truncated", [("Authorization", f"Bearer {key[:-1]}")], ""
    yield "key with a suffix", [("Authorization", f"Bearer {key}x")], ""
    yield "sha256 of the key", [("Authorization", f"Bearer {digest(key)}")], ""
    yield "key upper-cased", [("Authorization", f"Bearer {key.upper()}")], ""
    for name in ("AUTHORIZATION", "authorization", "aUtHoRiZaTiOn"):
        yield f"header {name} with a wrong key", [(name, f"Bearer {flipped[0]}")], ""
    yield "scheme BEARER, wrong key", [("Authorization", f"BEARER {flipped[1]}")], ""
    yield (
        "wrong key first, right key second",
        [("Authorization", "Bearer wrong"), ("Authorization", f"Bearer {key}")],
        "",
    )
    yield "X-Api-Key header", [("X-Api-Key", key)], ""
    yield "api-key header", [("api-key", key)], ""
    yield "Proxy-Authorization header", [("Proxy-Authorization", f"Bearer {key}")], ""
    yield "Cookie", [("Cookie", f"api_key={key}")], ""
    for q in ("api_key", "key", "access_token", "authorization"):
        yield f"?{q}= in the query", [], f"?{q}={key}"
    yield "very long token", [("Authorization", "Bearer " + "k" * 8000)], ""


def auth_attempts(target: Target) -> Iterator[Reply]:
    """Every bad credential on every protected route; none may get a 2xx or a 5xx."""
    for method, route in PROTECTED:
        body = _body_for(target, route)
        for name, headers, query in bad_credentials(target.key):
            hdrs = [*headers, ("Content-Type", "application/json")] if body else headers
            data = request_bytes(method, target.prefix + route + query, hdrs, body)
            yield send_raw(target, f"{method} {route}: {name}", data)


def valid_key_variants(target: Target) -> Iterator[Reply]:
    """The valid key under spellings HTTP says are the same (header name case, scheme case): 200."""
    for name, scheme in (
        ("Authorization", "Bearer"),
        ("authorization", "bearer"),
        ("AUTHORIZATION", "BEARER"),
    ):
        data = request_bytes("GET", target.prefix + "/v1/models", [(name, f"{scheme} {target.key}")])
        yield send_raw(target, f"GET /v1/models: {name}: {scheme} <key>", data)


PATH_TRICKS = (
    "//v1/models",
    "/v1//models",
    "/v1/../v1/models",
    "/v1/./models",
    "/./v1/models",
    "/V1/models",
    "/v1/MODELS",
    "/v1/models/",
    "/v1/models%2F",
    "/%76%31/models",
    "/v1/models?",
    "/v1/models#x",
    "/v1/models;x",
    "/v1/models%00",
    "/v1/%2e%2e/v1/models",
    "/v1/models/..",
    "/health/../v1/models",
    "/metrics/../v1/models",
)


def path_tricks(target: Target) -> Iterator[Reply]:
    """Unusual spellings of a protected path and methods other than the route's, all without a key."""
    for path in PATH_TRICKS:
        for method in ("GET", "HEAD", "OPTIONS", "POST"):
            data = request_bytes(method, target.prefix + path, [], b"{}" if method == "POST" else None)
            yield send_raw(target, f"{method} {path}", data, timeout=20)
