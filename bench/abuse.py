"""Abuse of the served API at scale: the figures of docs/reliability.md ("Abuse").

Deploys the tiny test model (2 layers, 32 dims, context 64) on a local Ray with Serve and a Bearer
key, then runs, against the live endpoint:

1. Schemathesis against its ``/openapi.json`` (``--examples`` per operation and mode, every phase,
   the checks of ``tests/serving/abuse_fuzz.py``), every request recorded in a HAR file;
2. ``--auth-rounds`` x every bad credential on every protected route, the valid key's spellings,
   and the path and method tricks without a key;
3. ``--oversized-rounds`` x every oversized or expensive body;
4. ``--slow`` slow-body clients, ``--slow`` slow-header connections and ``--slow`` streams that
   nobody reads, each while a normal client keeps asking for completions;

and prints requests tried, the status histogram, 5xx seen, schema violations, replica restarts and
the replica's memory before and after. ``--stack`` adds the full-stack loopback check: ``nightshift
up`` on free ports, a Serve app on its Ray, then every listening socket of every process of the stack
must be 127.0.0.1/::1 (psutil).

Run: ``python bench/abuse.py [--examples 500] [--auth-rounds 5] [--oversized-rounds 20] [--slow 20]
[--stack]``. Needs the dev extra (schemathesis, psutil).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

# Set before Ray is imported: a local Ray otherwise listens on every interface (infra/local/ray-head.sh).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from serving.auth import digest  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.serving.abuse_fuzz import run_schemathesis  # noqa: E402
from tests.serving.abuse_kit import Target, auth_attempts, path_tricks, valid_key_variants  # noqa: E402
from tests.serving.abuse_load import (  # noqa: E402
    healthy,
    oversized_bodies,
    slow_body,
    slow_headers,
    stalled_stream,
)
from tests.serving.conftest import KEY, make_model_artifact, wait_http  # noqa: E402

LIMIT = 20_000


def replica_state(target: Target) -> dict[str, float]:
    """The replica's identity (process start time) and memory, from its ``/health`` figures."""
    f = httpx.get(target.url + "/health", timeout=30).json()["figures"]
    rss_mb = f["process_resident_memory_bytes"] / 2**20
    return {"start_time": f["process_start_time_seconds"], "rss_mb": rss_mb}


def bad(status: int | None) -> bool:
    return status is None or 200 <= status < 300 or status >= 500


def deploy(args: argparse.Namespace, root: Path) -> Target:
    import ray
    from ray import serve

    from catalog.db import migrate
    from core.serve_config import ServeConfig, proxy_env
    from serving.app import build_app
    from serving.options import http_options

    proxy = ServeConfig(
        port=free_port(),
        request_timeout_s=args.request_timeout,
        keep_alive_timeout_s=args.keep_alive,
        header_timeout_s=args.header_timeout,
    )
    # Ray's processes (the proxy among them) take the header timeout from the environment at start.
    os.environ.update(proxy_env(proxy.header_timeout_s))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options=http_options(proxy))
    ref = make_model_artifact(root / "artifacts")
    catalog_url = f"sqlite:///{root}/catalog.db"
    migrate(catalog_url)
    cfg = {
        "api_key_hashes": [digest(KEY)],
        "api_key_file": str(root / "no-keys"),
        "completions_per_minute": 0,  # the load phases send one key's bursts on purpose
        "max_batch": 4,
        "max_waiting": 8,
        "max_body_bytes": LIMIT,
        "body_timeout_s": args.body_timeout,
        "torch_threads": 1,
        "replica_cpus": 0.1,
    }
    serve.run(
        build_app({"model": str(ref.path), "catalog_url": catalog_url, "serve": cfg}),
        name="abuse",
        route_prefix="/abuse",
    )
    url = f"http://127.0.0.1:{proxy.port}/abuse"
    wait_http(url + "/health")
    print(
        f"deployed at {url}: max_body_bytes {LIMIT}, body_timeout_s {args.body_timeout}, "
        f"proxy request_timeout_s {args.request_timeout}, keep_alive_timeout_s {args.keep_alive}, "
        f"header_timeout_s {args.header_timeout}"
    )
    return Target(url, KEY)


def fuzz(target: Target, args: argparse.Namespace, root: Path) -> dict:
    t0 = time.monotonic()
    res = run_schemathesis(target, args.examples, root, har=True)
    out = {
        "cases_generated": res.generated,
        "requests": res.requests,
        "statuses": dict(sorted(res.statuses.items())),
        "5xx": sum(n for s, n in res.statuses.items() if s >= 500),
        "failures": res.failures,
        "exit_code": res.returncode,
        "seconds": round(time.monotonic() - t0, 1),
    }
    if res.returncode != 0:
        print(res.output[-8000:])
    return out


def auth(target: Target, rounds: int) -> dict:
    statuses: Counter = Counter()
    let_in = []
    n = 0
    for _ in range(rounds):
        for r in [*auth_attempts(target), *path_tricks(target)]:
            n += 1
            statuses[r.status] += 1
            if bad(r.status):
                let_in.append((r.name, r.status))
    valid = [r.status for r in valid_key_variants(target)]
    return {"requests": n, "statuses": dict(statuses), "2xx_or_5xx": let_in, "valid_key_spellings": valid}


def oversized(target: Target, rounds: int) -> dict:
    statuses: Counter = Counter()
    unexpected = []
    n = 0
    for _ in range(rounds):
        for r, allowed in oversized_bodies(target, LIMIT):
            n += 1
            statuses[r.status] += 1
            if r.status not in allowed:
                unexpected.append((r.name, r.status))
    return {
        "requests": n,
        "statuses": dict(statuses),
        "unexpected": unexpected,
        "healthy_after": healthy(target),
    }


def slow(target: Target, k: int, args: argparse.Namespace) -> dict:
    with cf.ThreadPoolExecutor(k) as pool:
        bodies = list(pool.map(lambda _: slow_body(target, window_s=args.body_timeout + 15), range(k)))
    headers = slow_headers(target, connections=k, window_s=args.header_window)
    with cf.ThreadPoolExecutor(k) as pool:
        streams = list(
            pool.map(
                lambda _: stalled_stream(
                    target, stall_s=args.request_timeout + 5, watch_close_s=args.keep_alive + 5
                ),
                range(k),
            )
        )
    answered = [b.answered_after_s for b in bodies if b.answered_after_s is not None]
    closed = [b.closed_after_s for b in bodies if b.closed_after_s is not None]
    idle = [s.engine_idle_after_s for s in streams if s.engine_idle_after_s is not None]

    def others(results) -> dict:
        total: Counter = Counter()
        for r in results:
            total.update(r.others.statuses)
        return dict(total)

    return {
        "slow_body": {
            "clients": k,
            "statuses": dict(Counter(b.status for b in bodies)),
            "answered_after_s_max": round(max(answered), 1) if answered else None,
            "closed_after_s_max": round(max(closed), 1) if len(closed) == k else None,
            "others_meanwhile": others(bodies),
        },
        "slow_headers": {
            "connections": k,
            "window_s": args.header_window,
            "status": headers.status,
            "answered_after_s_max": round(headers.answered_after_s, 1) if headers.answered_after_s else None,
            "all_closed_by_server_after_s": round(headers.closed_after_s, 1)
            if headers.closed_after_s
            else None,
            "others_meanwhile": others([headers]),
        },
        "stalled_streams": {
            "clients": k,
            "stalled_s": args.request_timeout + 5,
            "engine_idle_after_s_max": round(max(idle), 1) if len(idle) == k else None,
            "complete_when_read": sum(s.stream_complete for s in streams),
            "closed_after_read": sum(bool(s.closed) for s in streams),
            "others_meanwhile": others(streams),
        },
    }


LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")


def check_stack() -> dict:
    """``nightshift up`` (no deployments) on free ports in a temporary home, a Serve app on its Ray,
    then every listening socket of every process of the stack, and of this driver, must be loopback."""
    import psutil

    from core.config import load_config
    from nightshift import stack
    from nightshift.services import free_port_overrides, read_state

    home = Path(tempfile.mkdtemp(prefix="nightshift-abuse-stack-"))
    os.environ["NIGHTSHIFT_HOME"] = str(home)
    overrides: dict = {**free_port_overrides()}
    overrides.update(
        {"stack.ray_num_cpus": 2, "stack.ray_object_store_bytes": 100_000_000, "stack.set_profile": False}
    )
    cfg = load_config("tiny", overrides)
    env = stack.stack_env(cfg)
    # Before Ray is imported: it reads RAY_AUTH_MODE (the stack's head wants its token) as it loads.
    os.environ.update({k: v for k, v in env.items() if k.startswith("RAY_")})
    import ray
    from ray import serve

    from serving.app import build_app
    from serving.options import http_options

    t0 = time.monotonic()
    sockets: list[dict] = []
    try:
        stack.up(cfg, deploy=False)
        ray.init(address=env["RAY_ADDRESS"], log_to_driver=False)
        serve.start(http_options=http_options(cfg.serve))
        ref = make_model_artifact(home / "artifacts")
        serve.run(
            build_app({"model": str(ref.path), "serve": {"auth": "none", "replica_cpus": 0.1}}), name="probe"
        )
        wait_http(f"http://{cfg.serve.host}:{cfg.serve.port}/health")
        roots = {name: st["pid"] for name in stack.ORDER if (st := read_state(home, name))}
        me = psutil.Process()
        for name, pid in [*roots.items(), ("driver (this script)", me.pid)]:
            root = psutil.Process(pid)
            # The services are this script's children too (it launched them): the driver is itself only.
            for proc in [root, *(root.children(recursive=True) if root != me else [])]:
                try:
                    conns = proc.net_connections("inet")
                    pname = proc.name()
                except psutil.Error:
                    continue
                for c in conns:
                    if c.status == psutil.CONN_LISTEN:
                        sockets.append(
                            {"service": name, "process": pname, "ip": c.laddr.ip, "port": c.laddr.port}
                        )
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            stack.down(cfg)
    outside = [s for s in sockets if s["ip"] not in LOOPBACK]
    by_service = Counter(s["service"] for s in sockets)
    print(f"\n== stack sockets ({time.monotonic() - t0:.0f} s): {len(sockets)} listening, {dict(by_service)}")
    for s in outside:
        print(f"NOT LOOPBACK: {s}")
    return {
        "listening": len(sockets),
        "by_service": dict(by_service),
        "not_loopback": outside,
        "all": sockets,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--examples", type=int, default=500, help="Schemathesis examples per operation")
    ap.add_argument("--auth-rounds", type=int, default=5)
    ap.add_argument("--oversized-rounds", type=int, default=20)
    ap.add_argument("--slow", type=int, default=20, help="clients of each slow kind")
    ap.add_argument("--body-timeout", type=float, default=5.0, help="serve.body_timeout_s")
    ap.add_argument("--request-timeout", type=float, default=20.0, help="serve.request_timeout_s")
    ap.add_argument("--keep-alive", type=int, default=5, help="serve.keep_alive_timeout_s")
    ap.add_argument("--header-timeout", type=float, default=5.0, help="serve.header_timeout_s")
    ap.add_argument("--header-window", type=float, default=20.0, help="how long slow headers are kept up")
    ap.add_argument("--stack", action="store_true", help="also check the whole stack's sockets")
    ap.add_argument("--stack-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args()
    if args.stack_only:  # in a process of its own: it joins the stack's Ray, not a local one
        figures = check_stack()
        if args.json:
            args.json.write_text(json.dumps(figures, indent=1))
        return
    root = Path(tempfile.mkdtemp(prefix="nightshift-bench-abuse-"))
    target = deploy(args, root)
    before = replica_state(target)
    figures: dict = {"replica_before": before}
    for name, step in (
        ("schemathesis", lambda: fuzz(target, args, root)),
        ("auth_and_paths", lambda: auth(target, args.auth_rounds)),
        ("oversized", lambda: oversized(target, args.oversized_rounds)),
        ("slow_clients", lambda: slow(target, args.slow, args)),
    ):
        t0 = time.monotonic()
        figures[name] = step()
        print(f"\n== {name} ({time.monotonic() - t0:.0f} s)\n{json.dumps(figures[name], indent=1)}")
    after = replica_state(target)
    figures["replica_after"] = after
    figures["replica_restarts"] = int(after["start_time"] != before["start_time"])
    figures["healthy_at_end"] = healthy(target)
    print(
        f"\nreplica RSS {before['rss_mb']:.0f} MB before, {after['rss_mb']:.0f} MB after; "
        f"restarts {figures['replica_restarts']}; healthy at the end: {figures['healthy_at_end']}"
    )
    import ray

    ray.shutdown()
    if args.stack:
        out = root / "stack.json"
        subprocess.run([sys.executable, __file__, "--stack-only", "--json", str(out)], check=True)
        figures["stack_sockets"] = json.loads(out.read_text())
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=str))
    print(json.dumps(figures, default=str))


if __name__ == "__main__":
    main()
