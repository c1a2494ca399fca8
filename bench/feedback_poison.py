"""One key trying to poison the feedback loop, against a live server: the figures of issue 18.

Deploys the tiny test model on a local Ray with Serve, recording to a catalog (a temporary SQLite,
or with ``--postgres`` a throwaway PostgreSQL 15 on loopback, Debian's binaries), creates named keys
(a client ``alice`` whose completions three labellers judge, and a client ``mallory``), then:

1. mallory posts ``--ratings`` ratings and ``--preferences`` preferences on completions she did not
   receive, then the same numbers on her own; after each, the next preference snapshot is built
   (``build_preference_set``, as the reward stage does) and the pairs that changed are counted,
   against the bound: one per (key, completion or pair) mallory labelled;
2. on a second deployment with the default per-key limits (``serve.feedback_per_minute`` 120 with
   a 10 s burst), how many of 100 feedback posts at once get 429, and their ``Retry-After``;
3. 20 completion requests at once, one of them with a 256-character ``user``: failed neighbours;
4. every store (the catalog database, the bench's directory, Ray's session logs) scanned for the
   API keys (:mod:`nightshift.leaks`).

Run: ``python bench/feedback_poison.py [--postgres] [--ratings 500] [--preferences 200]``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import random
import shutil
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

from catalog.keys import create_key  # noqa: E402
from tests.conftest import PG_BIN, free_port  # noqa: E402
from tests.serving.conftest import make_model_artifact, wait_http  # noqa: E402

MODEL = "nightshift-gpt"
_PORT: list[int] = []  # the Serve proxy's, once started


def postgres(root: Path) -> tuple[str, subprocess.Popen]:
    """A throwaway PostgreSQL 15 on a free loopback port (trust auth); its URL and process."""
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if os.geteuid() == 0:  # the server runs as postgres, which must own its directory
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", free_port()
    subprocess.run([*as_pg, str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                    "--no-sync", "-E", "UTF8", "--locale=C"], check=True, capture_output=True)  # fmt: skip
    proc = subprocess.Popen(
        [*as_pg, str(PG_BIN / "postgres"), "-D", str(data), "-c", "listen_addresses=127.0.0.1",
         "-c", f"port={port}", "-c", "unix_socket_directories=", "-c", "fsync=off"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    import psycopg

    for _ in range(100):
        try:
            with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True) as c:
                c.execute("CREATE DATABASE bench")
            return f"postgresql+psycopg://postgres@127.0.0.1:{port}/bench", proc
        except psycopg.OperationalError:
            time.sleep(0.2)
    raise RuntimeError("postgres did not start")


def deploy(root: Path, catalog_url: str, name: str, limited: bool) -> tuple[str, object]:
    """The tiny model as Serve app ``name``; ``limited``: the default per-key rate limits, else none."""
    import ray
    from ray import serve

    from catalog.db import migrate
    from core.serve_config import ServeConfig
    from serving.app import build_app
    from serving.options import http_options

    if not ray.is_initialized():
        _PORT.append(free_port())
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        serve.start(http_options=http_options(ServeConfig(port=_PORT[0])))
    port = _PORT[0]
    ref = make_model_artifact(root / "artifacts")
    migrate(catalog_url)
    limits = {} if limited else {"completions_per_minute": 0, "feedback_per_minute": 0}
    args = {
        "model": str(ref.path),
        "catalog_url": catalog_url,
        "serve": {"api_key_file": str(root / "no-keys"), "torch_threads": 1, "replica_cpus": 0.1,
                  "max_batch": 8, **limits},
    }  # fmt: skip
    serve.run(build_app(args), name=name, route_prefix=f"/{name}")
    url = f"http://127.0.0.1:{port}/{name}"
    wait_http(url + "/health")
    return url, ref


def complete(url: str, key: str, prompt: str, n: int = 2, user: str | None = None) -> httpx.Response:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 4, "n": n, "temperature": 1.0}
    if user is not None:
        body["user"] = user
    return httpx.post(
        url + "/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120
    )


def ids_of(r: httpx.Response) -> list[str]:
    if r.status_code != 200:
        raise RuntimeError(f"completion refused: HTTP {r.status_code} {r.text[:300]}")
    return [c["completion_id"] for c in r.json()["choices"]]


def snapshot(catalog_url: str, ref) -> set[tuple]:
    from gpt.model_io import load_model
    from training.rlhf.preferences import build_preference_set

    model, tok, _ = load_model(ref)
    pset = build_preference_set(tok, model.cfg.block_size, catalog_url=catalog_url)
    return {(str(p.prompt), p.chosen, p.rejected) for p in pset.pairs}


def attack(
    url: str, key: str, completions: list[str], pairs: list[tuple[str, str]], n_r: int, n_p: int
) -> Counter:
    rng = random.Random(0)
    h = {"Authorization": f"Bearer {key}"}
    bodies = [{"completion_id": rng.choice(completions), "rating": rng.randint(-1, 5), "user": f"u{i}"}
              for i in range(n_r)]  # fmt: skip
    bodies += [{"completion_id": a, "other_completion_id": b, "preferred": rng.choice("ab"), "user": f"p{i}"}
               for i, (a, b) in enumerate(rng.choice(pairs) for _ in range(n_p))]  # fmt: skip
    with httpx.Client(timeout=60) as client, cf.ThreadPoolExecutor(8) as pool:
        codes = pool.map(lambda b: client.post(url + "/v1/feedback", json=b, headers=h).status_code, bodies)
        return Counter(codes)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--postgres", action="store_true", help="catalog on a throwaway PostgreSQL (else SQLite)")
    p.add_argument("--ratings", type=int, default=500)
    p.add_argument("--preferences", type=int, default=200)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="nightshift-poison-"))
    pg = None
    try:
        if args.postgres:
            pg_root = Path(tempfile.mkdtemp(prefix="nightshift-poison-pg-"))
            catalog_url, pg = postgres(pg_root)
        else:
            catalog_url = f"sqlite:///{root / 'catalog.db'}"
        # Rate limits off here, so the attack's every post reaches the feedback rules (part 2 has them).
        url, ref = deploy(root, catalog_url, "poison", limited=False)
        keys = {name: create_key(catalog_url, name, role)[0] for name, role in
                (("alice", "client"), ("mallory", "client"), ("l1", "labeller"), ("l2", "labeller"),
                 ("l3", "labeller"))}  # fmt: skip
        # alice's completions, judged alike by three labellers: the snapshot before the attack.
        theirs = [ids_of(complete(url, keys["alice"], f"Prompt {i}:")) for i in range(12)]
        for who in ("l1", "l2", "l3"):
            for a, b in theirs:
                body = {"completion_id": a, "other_completion_id": b, "preferred": "a"}
                httpx.post(url + "/v1/feedback", json=body, headers={"Authorization": f"Bearer {keys[who]}"})
        mine = [ids_of(complete(url, keys["mallory"], f"Mine {i}:")) for i in range(10)]
        s0 = snapshot(catalog_url, ref)
        print(f"catalog: {'PostgreSQL' if args.postgres else 'SQLite'}; snapshot before: {len(s0)} pairs")

        codes = attack(url, keys["mallory"], [c for pr in theirs for c in pr], [tuple(pr) for pr in theirs],
                       args.ratings, args.preferences)  # fmt: skip
        s1 = snapshot(catalog_url, ref)
        print(
            f"1a. {args.ratings} ratings + {args.preferences} preferences on completions mallory did not "
            f"receive: statuses {dict(codes)}; snapshot pairs changed: {len(s0 ^ s1)} (bound 0)"
        )
        codes = attack(url, keys["mallory"], [c for pr in mine for c in pr], [tuple(pr) for pr in mine],
                       args.ratings, args.preferences)  # fmt: skip
        s2 = snapshot(catalog_url, ref)
        bound = 2 * len(mine) + len(mine)  # one label per own completion (rated) and per own pair
        print(
            f"1b. the same on her own completions: statuses {dict(codes)}; snapshot pairs changed: "
            f"{len(s1 ^ s2)} (bound: {bound}, one per (key, completion or pair) she labelled)"
        )

        # 2. the default per-key limits of a replica against one key's burst.
        limited, _ = deploy(root, catalog_url, "limited", limited=True)
        (own,) = ids_of(complete(limited, keys["mallory"], "Limited:", n=1))
        h = {"Authorization": f"Bearer {keys['mallory']}"}
        with httpx.Client(timeout=60) as client:
            bodies = [{"completion_id": own, "rating": i % 5} for i in range(100)]
            answers = [client.post(limited + "/v1/feedback", json=b, headers=h) for b in bodies]
        burst = Counter(r.status_code for r in answers)
        waits = sorted({r.headers.get("Retry-After") for r in answers if r.status_code == 429})
        print(f"2. 100 feedback posts at once, default limits (120/min, 10 s burst): {dict(burst)}; "
              f"Retry-After values {waits}")  # fmt: skip

        # 3. a 256-character user among 20 concurrent requests.
        with cf.ThreadPoolExecutor(21) as pool:
            futs = [pool.submit(complete, url, keys["alice"], f"Neighbour {i}:", 1) for i in range(20)]
            odd = pool.submit(complete, url, keys["alice"], "Long user:", 1, "u" * 256)
            failed = sum(f.result().status_code != 200 for f in futs)
        print(f"3. 256-character user: HTTP {odd.result().status_code}; failed neighbours: {failed} of 20")

        # 4. the keys in any store.
        from nightshift import leaks

        hits = leaks.scan(root, {f"key {k}": v for k, v in keys.items()}, databases={"catalog": catalog_url})
        import ray

        session = Path(ray._private.worker.global_worker.node.get_session_dir_path())
        hits += leaks.scan_files(session, {f"key {k}": v for k, v in keys.items()})
        print(f"4. secrets scan (catalog, {root}, Ray session {session.name}): {len(hits)} hits {hits or ''}")
    finally:
        from ray import serve

        serve.shutdown()
        if pg is not None:
            pg.terminate()
            pg.wait(timeout=30)
            shutil.rmtree(pg_root, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
