"""The HTTP side of ``bench/serve.py``: streaming clients at a fixed concurrency, the bounded load
run, and readings of the replica's figures (its ``/health``)."""

from __future__ import annotations

import asyncio
import json
import random
import time


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def bench_http(base: str, ps: list[str], clients: int, per_client: int, max_tokens: int) -> dict[str, float]:
    """``clients`` concurrent streaming clients, each sending ``per_client`` requests in turn.

    The load generator is one asyncio event loop over httpx (as serving benchmarks use aiohttp):
    on a 2-core machine the clients share the CPUs with the server, and 16 threads of a heavier
    client would measure the client more than the server. The tests drive the same API with the
    official ``openai`` client.
    """
    import httpx

    async def run() -> dict[str, float]:
        ttfts: list[float] = []
        tokens = 0
        tokens_all = 0

        async def one(c: httpx.AsyncClient, p: str) -> None:
            nonlocal tokens, tokens_all
            body = {
                "model": "nightshift-gpt",
                "prompt": p,
                "max_tokens": max_tokens,
                "temperature": 1.0,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            t = time.perf_counter()
            first = None
            async with c.stream("POST", "/v1/completions", json=body) as r:
                r.raise_for_status()
                async for line in r.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    chunk = json.loads(line[6:])
                    if first is None and chunk["choices"] and chunk["choices"][0]["text"]:
                        first = time.perf_counter() - t
                    if chunk.get("usage"):
                        tokens += chunk["usage"]["completion_tokens"]
                        tokens_all += chunk["usage"]["completion_tokens"]
            ttfts.append(first if first is not None else time.perf_counter() - t)

        async def client(c: httpx.AsyncClient, k: int) -> None:
            for j in range(per_client):
                await one(c, ps[(k * per_client + j) % len(ps)])

        limits = httpx.Limits(max_connections=clients)
        t_all = time.perf_counter()
        async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as c:
            await asyncio.gather(*(one(c, ps[k]) for k in range(clients)))  # warm-up
            ttfts.clear()
            tokens = 0
            t0 = time.perf_counter()
            await asyncio.gather(*(client(c, k) for k in range(clients)))
            wall = time.perf_counter() - t0
        return {
            "clients": clients,
            "requests": clients * per_client,
            "tokens_per_s": tokens / wall,
            "ttft_p50_ms": 1e3 * pct(ttfts, 0.5),
            "ttft_p99_ms": 1e3 * pct(ttfts, 0.99),
            "tokens_all": tokens_all,
            "seconds_all": time.perf_counter() - t_all,
        }

    return asyncio.run(run())


def replica_figures(base: str) -> dict[str, float]:
    """The replica's figures now, from its ``/health`` (the bench runs one replica; a deployment's
    every replica is on Ray's metrics port)."""
    import httpx

    return httpx.get(base + "/health", timeout=10).json()["figures"]


def replica_rss(base: str) -> float:
    """The replica's resident memory, its engine process's included."""
    f = replica_figures(base)
    return f["process_resident_memory_bytes"] + f.get("engine_process_resident_memory_bytes", 0.0)


def load_run(base: str, ps: list[str], total: int, concurrency: int) -> dict[str, object]:
    import httpx

    async def main() -> dict[str, object]:
        codes: dict[int, int] = {}
        errors: list[str] = []
        sem = asyncio.Semaphore(concurrency)
        rng = random.Random(7)
        async with httpx.AsyncClient(
            base_url=base, timeout=300, limits=httpx.Limits(max_connections=concurrency)
        ) as c:

            async def one(i: int) -> None:
                kind = i % 4
                p = ps[rng.randrange(len(ps))]
                if kind in (0, 1):
                    body = {"model": "nightshift-gpt", "prompt": p, "max_tokens": 16, "stream": kind == 1}
                    path = "/v1/completions"
                else:
                    body = {
                        "model": "nightshift-gpt",
                        "messages": [{"role": "user", "content": p}],
                        "max_tokens": 16,
                        "stream": kind == 3,
                    }
                    path = "/v1/chat/completions"
                async with sem:
                    try:
                        if body["stream"]:
                            async with c.stream("POST", path, json=body) as r:
                                text = "".join([x async for x in r.aiter_text()])
                                ok = text.rstrip().endswith("data: [DONE]") or r.status_code != 200
                                code = r.status_code if ok else 599
                        else:
                            r = await c.post(path, json=body)
                            code = r.status_code
                    except httpx.HTTPError as e:
                        code = 598
                        errors.append(repr(e))
                codes[code] = codes.get(code, 0) + 1

            t0 = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(total)))
            return {"codes": codes, "seconds": time.perf_counter() - t0, "errors": errors[:5]}

    return asyncio.run(main())
