"""Oversized bodies and slow clients against a live endpoint (see :mod:`tests.serving.abuse_kit`).

Shared by ``tests/serving/test_abuse.py`` (one of each, small) and ``bench/abuse.py`` (many).
"""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

from tests.serving.abuse_kit import Reply, Target, completion_body, request_bytes, send_raw


def _auth(target: Target) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {target.key}"), ("Content-Type", "application/json")]


def _chunked(data: bytes, size: int = 4096) -> bytes:
    parts = [
        f"{len(data[i : i + size]):x}\r\n".encode() + data[i : i + size] + b"\r\n"
        for i in range(0, len(data), size)
    ]
    return b"".join(parts) + b"0\r\n\r\n"


def oversized_bodies(target: Target, limit: int) -> Iterator[tuple[Reply, tuple[int, ...]]]:
    """Bodies over ``limit`` (serve.max_body_bytes) or built to be expensive; each reply comes with
    the statuses it may have. All of them must carry the OpenAI error body."""
    path = target.prefix + "/v1/completions"
    auth = _auth(target)
    big = completion_body(target, prompt="x" * (limit + 1))

    def post(name: str, body: bytes | None, headers=auth, **kw) -> Reply:
        return send_raw(target, name, request_bytes("POST", path, headers, body, **kw))

    # Headers only: the server must answer from the declared length, without waiting for a body.
    yield post("Content-Length over the limit, no body sent", None, content_length=limit + 1), (413,)
    yield post("body over the limit, with its Content-Length", big), (413,)
    chunked = [*auth, ("Transfer-Encoding", "chunked")]
    yield (
        send_raw(target, "chunked body over the limit", request_bytes("POST", path, chunked) + _chunked(big)),
        (413,),
    )
    yield post("Content-Length 10, longer body", big[:200], content_length=10), (400,)
    depth = (limit - 100) // 2
    yield post(f"JSON arrays nested {depth} deep", b"[" * depth + b"]" * depth), (400,)
    depth = (limit - 100) // 6
    yield post(f"JSON objects nested {depth} deep", b'{"a":' * depth + b"1" + b"}" * depth), (400,)
    yield post("n = 10**30", completion_body(target, n=10**30)), (400,)
    yield post("max_tokens = 10**30", completion_body(target, max_tokens=10**30)), (400,)
    yield (
        post(
            "max_tokens as a 5000-digit number",
            b'{"model": "x", "prompt": "a", "max_tokens": 1' + b"0" * 5000 + b"}",
        ),
        (400,),
    )
    yield post("max_tokens = 1e999999", b'{"model": "x", "prompt": "a", "max_tokens": 1e999999}'), (400,)
    stops = ["s"] * ((limit - 200) // 6)
    yield post(f"stop list of {len(stops)}", completion_body(target, stop=stops)), (400,)
    prompts = ["a"] * ((limit - 200) // 6)
    yield post(f"prompt list of {len(prompts)}", completion_body(target, prompt=prompts)), (400,)
    ids = [1] * ((limit - 200) // 3)
    yield post(f"prompt of {len(ids)} token ids", completion_body(target, prompt=ids)), (400,)
    msgs = [{"role": "user", "content": "a"}] * ((limit - 200) // 40)
    chat = json.dumps({"model": target.model, "messages": msgs, "max_tokens": 1}).encode()
    chat_req = request_bytes("POST", target.prefix + "/v1/chat/completions", auth, chat)
    yield send_raw(target, f"chat with {len(msgs)} messages", chat_req), (400,)


def healthy(target: Target) -> bool:
    """The replica answers /health 200 and a normal completion 200."""
    h = httpx.get(target.url + "/health", timeout=30)
    r = httpx.post(
        target.url + "/v1/completions",
        content=completion_body(target),
        headers=dict(_auth(target)),
        timeout=60,
    )
    return h.status_code == 200 and r.status_code == 200


# --- slow clients ---------------------------------------------------------------------------------


class Others:
    """What the normal clients got meanwhile: statuses (or error names) and their counts.

    429 is the server shedding load by design (serve.max_waiting), not a failure; anything else
    but 200 is.
    """

    def __init__(self) -> None:
        self.statuses: Counter = Counter()

    @property
    def served(self) -> int:
        return self.statuses[200]

    @property
    def failed(self) -> int:
        return sum(n for s, n in self.statuses.items() if s not in (200, 429))


@dataclass
class SlowResult:
    """What a slow client saw: the status it got (None: none), after how long, and whether the
    server closed the connection within the observation window; and what the others got."""

    status: int | None
    answered_after_s: float | None
    closed_after_s: float | None
    others: Others


def _others(target: Target, others: Others) -> None:
    """One normal completion, as another client would ask for it."""
    try:
        r = httpx.post(
            target.url + "/v1/completions",
            content=completion_body(target),
            headers=dict(_auth(target)),
            timeout=60,
        )
        others.statuses[r.status_code] += 1
    except httpx.HTTPError as e:
        others.statuses[type(e).__name__] += 1


def slow_body(
    target: Target, *, declared: int = 400, interval_s: float = 0.25, window_s: float = 20
) -> SlowResult:
    """Slow loris on the body: declare ``declared`` bytes, then send one byte per ``interval_s``,
    while a normal client keeps asking for completions; watch for an answer and a close."""
    stats = Others()
    t0 = time.monotonic()
    status = answered = closed = None
    with socket.create_connection((target.host, target.port)) as sock:
        sock.sendall(
            request_bytes(
                "POST", target.prefix + "/v1/completions", _auth(target), None, content_length=declared
            )
        )
        sock.setblocking(False)
        sent = 0
        while time.monotonic() - t0 < window_s and closed is None:
            if sent < declared:
                try:
                    sock.send(b" ")
                    sent += 1
                except (BlockingIOError, ConnectionError):
                    pass
            try:
                data = sock.recv(65536)
                if not data:
                    closed = time.monotonic() - t0
                elif status is None and data.startswith(b"HTTP/1.1 "):
                    status, answered = int(data.split()[1]), time.monotonic() - t0
            except BlockingIOError:
                pass
            except ConnectionError:
                closed = time.monotonic() - t0
            _others(target, stats)
            time.sleep(interval_s)
    return SlowResult(status, answered, closed, stats)


def slow_headers(
    target: Target, *, connections: int = 20, interval_s: float = 0.5, window_s: float = 10
) -> SlowResult:
    """Slow loris on the headers: ``connections`` sockets that each send one header line per
    ``interval_s`` and never finish, while a normal client keeps asking for completions.

    The result's status is the one every connection got (None unless all got the same), answered
    and closed after the last of them was."""
    stats = Others()
    t0 = time.monotonic()
    socks = []
    for _ in range(connections):
        s = socket.create_connection((target.host, target.port))
        s.sendall(f"POST {target.prefix}/v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode())
        s.setblocking(False)
        socks.append(s)
    closed_at: dict[int, float] = {}
    answers: dict[int, tuple[int | None, float]] = {}
    try:
        while time.monotonic() - t0 < window_s and len(closed_at) < connections:
            for i, s in enumerate(socks):
                if i in closed_at:
                    continue
                try:
                    s.send(b"X-Slow: 1\r\n")
                except BlockingIOError:
                    pass
                except ConnectionError:
                    closed_at[i] = time.monotonic() - t0
                    continue
                try:
                    while data := s.recv(65536):
                        if i not in answers:
                            head = data.split(b"\r\n", 1)[0].split()
                            code = int(head[1]) if len(head) > 1 and head[1].isdigit() else None
                            answers[i] = (code, time.monotonic() - t0)
                    closed_at[i] = time.monotonic() - t0  # b"": the server closed it
                except BlockingIOError:
                    pass
                except ConnectionError:
                    closed_at[i] = time.monotonic() - t0
            _others(target, stats)
            time.sleep(interval_s)
    finally:
        for s in socks:
            s.close()
    last = max(closed_at.values()) if len(closed_at) == connections else None
    codes = {code for code, _ in answers.values()}
    status = codes.pop() if len(answers) == connections and len(codes) == 1 else None
    answered = max(t for _, t in answers.values()) if len(answers) == connections else None
    return SlowResult(status, answered, last, stats)


@dataclass
class StalledResult:
    """A streaming client that stopped reading: when the engine let go of its sequences, how the
    others fared meanwhile, and what the client found once it read again."""

    engine_idle_after_s: float | None
    others: Others
    stream_complete: bool  # the stream ended with [DONE] when the client finally read
    closed: bool | None  # the server closed the connection within watch_close_s (None: not watched)


def stalled_stream(
    target: Target, *, max_tokens: int = 48, stall_s: float = 3, watch_close_s: float = 0
) -> StalledResult:
    """A streaming client that reads nothing for ``stall_s`` after sending its request (with a tiny
    receive window, so the server's writes stall), while a normal client keeps asking; then it
    reads, and waits up to ``watch_close_s`` for the server to close the connection."""
    stats = Others()
    body = completion_body(target, prompt="to be", max_tokens=max_tokens, stream=True, logprobs=5, n=2)
    t0 = time.monotonic()
    idle_after = None
    with socket.create_connection((target.host, target.port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(request_bytes("POST", target.prefix + "/v1/completions", _auth(target), body))
        while time.monotonic() - t0 < stall_s or idle_after is None:
            h = httpx.get(target.url + "/health", timeout=30).json()
            if idle_after is None and h["running"] == 0 and h["waiting"] == 0:
                idle_after = time.monotonic() - t0
            _others(target, stats)
            if time.monotonic() - t0 > stall_s + 60:
                break  # the engine never let go: reported as idle_after None
            time.sleep(0.25)
        sock.settimeout(10)
        data, closed = b"", None
        try:
            while b"data: [DONE]" not in data and (chunk := sock.recv(65536)):
                data += chunk
            if watch_close_s > 0:
                sock.settimeout(watch_close_s)
                while sock.recv(65536):
                    pass
                closed = True
        except TimeoutError:
            closed = False if watch_close_s > 0 else None
        except ConnectionError:
            closed = True
    return StalledResult(idle_after, stats, b"data: [DONE]" in data, closed)
