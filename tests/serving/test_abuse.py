"""Abuse of the live API: fuzzing against its own OpenAPI spec, auth bypass, oversized bodies, slow clients.

One deployment of a tiny model serves the whole module. ``NIGHTSHIFT_FUZZ_EXAMPLES`` (default 25)
sets the Schemathesis examples per operation; ``bench/abuse.py`` runs all of this at scale and prints
the figures quoted in docs/reliability.md.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import httpx
import psutil
import pytest

from serving.auth import digest
from tests.conftest import SESSION_HEADER_TIMEOUT_S
from tests.serving.abuse_fuzz import run_schemathesis
from tests.serving.abuse_kit import (
    Target,
    auth_attempts,
    completion_body,
    path_tricks,
    read_reply,
    request_bytes,
    send_raw,
    valid_key_variants,
)
from tests.serving.abuse_load import healthy, oversized_bodies, slow_body, slow_headers, stalled_stream
from tests.serving.conftest import KEY, make_model_artifact, wait_http

LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")

pytestmark = pytest.mark.slow

LIMIT = 20_000  # serve.max_body_bytes of the deployment under test
BODY_TIMEOUT_S = 2.0
FUZZ_EXAMPLES = int(os.environ.get("NIGHTSHIFT_FUZZ_EXAMPLES", "25"))


def abuse_serve_config(root) -> dict:
    """The deployment under attack: small limits, so that going over them is cheap."""
    return {
        "api_key_hashes": [digest(KEY)],
        "api_key_file": str(root / "no-keys"),
        # The load tests send one key's bursts on purpose; per-key limits: test_feedback_keys.py.
        "completions_per_minute": 0,
        "max_batch": 4,
        "max_waiting": 8,
        "max_body_bytes": LIMIT,
        "body_timeout_s": BODY_TIMEOUT_S,
        "torch_threads": 1,
        "replica_cpus": 0.1,
    }


@pytest.fixture(scope="module")
def target(serve_port, tmp_path_factory) -> Iterator[Target]:
    from ray import serve

    from catalog.db import migrate
    from serving.app import build_app

    root = tmp_path_factory.mktemp("abuse")
    ref = make_model_artifact(root / "artifacts")
    catalog_url = f"sqlite:///{root}/catalog.db"
    migrate(catalog_url)
    args = {"model": str(ref.path), "catalog_url": catalog_url, "serve": abuse_serve_config(root)}
    serve.run(build_app(args), name="abuse", route_prefix="/abuse")
    url = f"http://127.0.0.1:{serve_port}/abuse"
    wait_http(url + "/health")
    yield Target(url, KEY)
    serve.delete("abuse")


def test_fuzzing_the_openapi_spec_finds_no_5xx_and_no_schema_violation(target: Target, tmp_path) -> None:
    res = run_schemathesis(target, FUZZ_EXAMPLES, tmp_path)
    assert res.returncode == 0 and res.failures == 0, res.output[-6000:]
    assert res.generated > 6 * FUZZ_EXAMPLES  # every operation was exercised


def test_the_spec_declares_auth_and_error_bodies(target: Target) -> None:
    spec = httpx.get(target.url + "/openapi.json").json()
    assert spec["components"]["securitySchemes"]["apiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key (ns-...).",
    }
    for path, item in spec["paths"].items():
        for method, op in item.items():
            assert "422" not in op["responses"], f"{method} {path}"
            assert ("security" in op) == path.startswith("/v1/"), f"{method} {path}"
            if path.startswith("/v1/"):
                err = op["responses"]["401"]["content"]["application/json"]["schema"]
                assert err == {"$ref": "#/components/schemas/ErrorResponse"}
    schemas = spec["components"]["schemas"]
    assert schemas["CompletionRequest"]["properties"]["model"]["enum"] == [target.model]


def test_bad_credentials_never_get_in(target: Target) -> None:
    replies = list(auth_attempts(target))
    assert len(replies) > 100
    for r in replies:
        assert r.status == 401 and r.json()["error"]["code"] == "invalid_api_key", (r.name, r.status, r.body)
        assert r.headers.get("www-authenticate") == "Bearer", r.name
    # The key itself is accepted however HTTP allows the header to be spelled.
    assert [r.status for r in valid_key_variants(target)] == [200, 200, 200]


def test_path_and_method_tricks_without_a_key_get_no_data(target: Target) -> None:
    for r in path_tricks(target):
        assert r.status is not None and not 200 <= r.status < 300 and r.status < 500, (
            r.name,
            r.status,
            r.body,
        )


def test_the_proxys_timeout_and_disconnect_overrides_are_refused(target: Target) -> None:
    auth = [("Authorization", f"Bearer {target.key}"), ("Content-Type", "application/json")]
    for header, value in (("x-request-timeout-seconds", "0"), ("x-request-disconnect-disabled", "?1")):
        data = request_bytes("POST", target.prefix + "/v1/completions", [*auth, (header, value)], b"{}")
        r = send_raw(target, header, data)
        assert r.status == 400 and r.json()["error"] == {
            "message": f"the header {header} is not accepted from API clients; remove it",
            "type": "invalid_request_error",
            "param": header,
            "code": "header_not_allowed",
        }


def test_inputs_that_used_to_crash_the_replica_are_400s(target: Target) -> None:
    h = {"Authorization": f"Bearer {target.key}", "Content-Type": "application/json"}

    def post(body: bytes) -> httpx.Response:
        return httpx.post(target.url + "/v1/completions", content=body, headers=h, timeout=60)

    cases = {
        "seed": completion_body(target, seed=2**70),  # torch's seed overflowed: 500
        "n": completion_body(target, n=5),  # n above the engine's batch of 4: 500
        "prompt": b'{"model": "nightshift-gpt", "prompt": "a\\ud800b", "max_tokens": 2}',  # tokenizer: 500
    }
    for param, body in cases.items():
        r = post(body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (param, r.text)
    r = post(completion_body(target, prompt="a\x00b"))  # NUL: PostgreSQL cannot store it
    assert r.status_code == 400 and "NUL" in r.json()["error"]["message"]
    r = post(completion_body(target, prompt=[True, False]))  # not token ids, whatever Python thinks
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("prompt")
    r = post(completion_body(target, prompt=["a"] * 40))  # over serve.max_prompts: 429 before
    assert r.status_code == 400 and "serve.max_prompts" in r.json()["error"]["message"]
    r = post(completion_body(target, temperature=1e-300))  # logits / 1e-300 were NaN
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")
    r = httpx.request("OPTIONS", target.url + "/v1/models", headers=h)
    assert r.status_code == 405 and r.headers["allow"] == "GET"


def test_oversized_and_expensive_bodies_are_refused_and_the_replica_stays_healthy(target: Target) -> None:
    for r, allowed in oversized_bodies(target, LIMIT):
        assert r.status in allowed, (r.name, r.status, r.body[:200])
        if r.name != "Content-Length 10, longer body":  # the proxy's HTTP parser answers that one
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}, r.name
        if r.status == 413:
            assert r.closed, f"{r.name}: a 413 closes the connection"
    assert healthy(target)


def test_a_slow_body_gets_408_and_its_connection_closed_while_others_are_served(target: Target) -> None:
    res = slow_body(target, window_s=BODY_TIMEOUT_S + 8)
    assert res.status == 408 and res.closed_after_s is not None
    assert res.others.served > 0 and res.others.failed == 0, res.others.statuses


def test_slow_headers_get_408_and_are_closed_while_others_are_served(target: Target) -> None:
    # The session's Ray runs the proxy with a header timeout of SESSION_HEADER_TIMEOUT_S.
    res = slow_headers(target, connections=20, window_s=SESSION_HEADER_TIMEOUT_S + 8)
    assert res.status == 408 and res.closed_after_s is not None, res
    assert res.others.served > 0 and res.others.failed == 0, res.others.statuses


def test_an_idle_keep_alive_connection_outlives_the_header_timeout(target: Target) -> None:
    # Only a request under way has a header deadline; between requests the keep-alive timeout rules.
    request = request_bytes("GET", target.prefix + "/v1/models", [("Authorization", f"Bearer {target.key}")])
    with socket.create_connection((target.host, target.port), timeout=10) as sock:
        for i in range(3):
            if i:
                time.sleep(SESSION_HEADER_TIMEOUT_S + 1.5)
            sock.sendall(request)
            reply = read_reply(sock, f"request {i} on one connection", time.monotonic(), 10)
            assert reply.status == 200 and not reply.closed, reply


def test_a_stream_nobody_reads_leaves_the_batch_and_others_are_served(target: Target) -> None:
    res = stalled_stream(target, stall_s=2)
    assert res.engine_idle_after_s is not None
    assert res.others.served > 0 and res.others.failed == 0, res.others.statuses
    assert res.stream_complete  # nothing was lost: reading again gets the whole stream
    assert healthy(target)


def test_the_serve_proxy_listens_on_loopback_only(target: Target) -> None:
    listening = [c for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN]
    ours = [c for c in listening if c.laddr.port == target.port]
    assert ours and all(c.laddr.ip in LOOPBACK for c in ours), ours


def test_every_process_of_the_local_ray_listens_on_loopback_only(target: Target) -> None:
    # GCS, raylet, workers, the Serve controller and proxy, and the replicas with their
    # inter-deployment gRPC servers (which Ray binds to every interface unless told otherwise).
    sockets = []
    for proc in psutil.Process().children(recursive=True):
        try:
            sockets += [(proc.name(), c.laddr) for c in proc.net_connections("inet") if c.status == "LISTEN"]
        except psutil.Error:
            continue
    assert any("ServeReplica" in name for name, _ in sockets), sockets
    assert sockets and all(addr.ip in LOOPBACK for _, addr in sockets), sockets
