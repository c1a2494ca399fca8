"""Soak: N nights back to back on a local stack, with a steady client load on the served model.

A throwaway stack (``nightshift up`` on free ports, state in a temp ``NIGHTSHIFT_HOME``, a Ray head
of all the machine's CPUs) runs ``pretrain/nightly`` N times through its Prefect worker, as the cron
would, each night with a new seed so that it trains a new model. The nights have the demo's
topology: two Ray Train workers, RLHF on (DPO), and the champion served by one replica that reserves
``serve.replica_cpus`` 0.5. After each night the ``maintenance/gc`` deployment applies the retention
rules (``--keep-nights``, ``--keep-versions``; ``gc.min_age_s`` 0 so the rules act at once). From
the end of the first night a client calls the served model with the official ``openai`` client
at ``--rate`` requests per second, one at a time.

Per night it prints the night's state and duration; the peak RSS of each service during the night
(its whole process tree: the worker's includes the flow run, the Ray head's the Train workers and
the Serve replica) and its RSS once the night and gc are over; the stack's disk use after gc: the
files gc manages, and apart from them the records (catalog, Prefect and MLflow databases), which
grow with every night and every served completion by design; and the client's requests, errors and
p99 latency during the night. Goal: flat settled memory and files across the nights (after gc), and
0 client errors.

``python bench/soak.py`` (10 tiny nights, about 15 min on 2 cores);
``python bench/soak.py --preset small --nights 3`` (the demo's preset on the Shakespeare texts,
about 30 min); ``--json out.json`` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SERVICES = ("prefect-server", "prefect-worker", "mlflow", "ray-head", "dashboard")
# Records grow with use by design (every served completion and every night's metadata is kept; Prefect
# and MLflow history go after gc.prefect_days / gc.keep_history_nights): reported apart from the files
# gc manages (artifacts, checkpoints, caches, MLflow's models and run files, Ray sessions, logs).
RECORDS = ("catalog", "prefect database", "mlflow database")
TINY_NIGHT = {
    "train.num_workers": 2,
    "train.max_steps": 20,
    "serve.replica_cpus": 0.5,
    "rlhf.enabled": True,
    "rlhf.algorithm": "dpo",
    "eval.prompt_format": "chat",
    "rlhf.sft.steps": 20,
    "rlhf.sft.batch_size": 8,
    "rlhf.sft.warmup_steps": 2,
    "rlhf.reward.steps": 20,
    "rlhf.reward.batch_size": 8,
    "rlhf.reward.warmup_steps": 2,
    "rlhf.dpo.steps": 10,
    "rlhf.dpo.batch_size": 8,
    "rlhf.dpo.warmup_steps": 1,
}


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (0 when it is gone)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


class Sampler:
    """Peak RSS of each service's process tree, sampled twice a second."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def now(self) -> dict[str, int]:
        from nightshift.services import owned_pid

        out = {}
        for name in SERVICES:
            pid = owned_pid(self.home, name)
            out[name] = tree_rss(pid) if pid else 0
        return out

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for name, rss in self.now().items():
                self.peak[name] = max(self.peak.get(name, 0), rss)

    def take_peak(self) -> dict[str, int]:
        peak, self.peak = self.peak, {}
        return peak

    def stop(self) -> None:
        self._stop.set()


class Client:
    """Calls the served model at a steady rate; records each call's latency or error, by time."""

    def __init__(self, env: dict[str, str], rate: float) -> None:
        import openai

        self.client = openai.OpenAI(
            base_url=env["OPENAI_BASE_URL"], api_key=env["OPENAI_API_KEY"], max_retries=0, timeout=120
        )
        self.period = 1.0 / rate
        self.calls: list[tuple[float, float | None, str]] = []  # (when, seconds or None, error)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        prompts = ["ROMEO:", "the", "To be, or not", "My lord,"]
        i = 0
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                self.client.completions.create(
                    model="nightshift-gpt", prompt=prompts[i % len(prompts)], max_tokens=16, seed=i
                )
                self.calls.append((time.time(), time.monotonic() - t0, ""))
            except Exception as e:  # every failure counts: 5xx, refused, timed out
                self.calls.append((time.time(), None, f"{type(e).__name__}: {e}"[:200]))
            i += 1
            self._stop.wait(max(0.0, self.period - (time.monotonic() - t0)))

    def window(self, start: float, end: float) -> dict[str, Any]:
        calls = [c for c in self.calls if start <= c[0] <= end]
        ok = sorted(c[1] for c in calls if c[1] is not None)
        errors = [c[2] for c in calls if c[1] is None]
        p99 = ok[min(len(ok) - 1, int(0.99 * len(ok)))] if ok else None
        return {
            "requests": len(calls),
            "errors": len(errors),
            "p50_s": statistics.median(ok) if ok else None,
            "p99_s": p99,
            "first_errors": errors[:3],
        }

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=150)


class Soak:
    def __init__(self, args: argparse.Namespace, home: Path) -> None:
        from core.config import load_config
        from nightshift.services import free_port_overrides

        self.args, self.home = args, home
        over: dict[str, Any] = {**free_port_overrides()}
        over.update({"stack.set_profile": False, "stack.ray_object_store_bytes": 300_000_000})
        self.cfg = load_config(args.preset, over)
        self.stack_overrides = over
        self.env: dict[str, str] = {}

    def up(self) -> None:
        from nightshift import stack

        stack.up(self.cfg, deploy=True)
        self.env = {**os.environ, **stack.stack_env(self.cfg)}

    def down(self) -> None:
        from nightshift import stack

        stack.down(self.cfg)

    def night_overrides(self, night: int) -> dict[str, Any]:
        over: dict[str, Any] = {"seed": 1000 + night, "serve.port": self.cfg.serve.port}
        if self.args.preset == "tiny":
            from tests.flows.conftest import write_corpus

            src = write_corpus(self.home / "corpus", n_docs=60)
            over.update({"data.sources": [str(src)], **TINY_NIGHT})
        return over

    def gc_overrides(self) -> dict[str, Any]:
        return {
            "gc.keep_nights": self.args.keep_nights,
            "gc.keep_versions": self.args.keep_versions,
            "gc.min_age_s": 0,
            "gc.keep_history_nights": self.args.keep_history_nights,
            "serve.registered_model": self.cfg.serve.registered_model,
        }

    def deployment_run(self, name: str, params: dict[str, Any]) -> tuple[str, float]:
        prefect = str(Path(sys.executable).with_name("prefect"))
        t0 = time.monotonic()
        done = subprocess.run(
            [prefect, "deployment", "run", name, "--params", json.dumps(params), "--watch"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=self.args.night_timeout,
        )
        out = done.stdout + done.stderr
        state = "Completed" if done.returncode == 0 else "?"
        for line in reversed(out.splitlines()):  # "Flow run finished ... in state 'GateFailed'."
            if "finished" in line and line.count("'") >= 2:
                state = line.split("'")[-2]
                break
        return state, time.monotonic() - t0


def fmt_mb(n: int | None) -> str:
    return "-" if not n else f"{n / 1e6:,.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nights", type=int, default=10)
    ap.add_argument("--preset", default="tiny", choices=["tiny", "small"])
    ap.add_argument("--rate", type=float, default=2.0, help="client requests per second (one at a time)")
    ap.add_argument("--keep-nights", type=int, default=2, help="gc.keep_nights")
    ap.add_argument("--keep-versions", type=int, default=2, help="gc.keep_versions")
    ap.add_argument("--keep-history-nights", type=int, default=3, help="gc.keep_history_nights")
    ap.add_argument("--night-timeout", type=float, default=3600)
    ap.add_argument("--home", help="NIGHTSHIFT_HOME for the throwaway stack (default: a temp dir)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()

    home = Path(args.home or tempfile.mkdtemp(prefix="nightshift-soak-")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["NIGHTSHIFT_HOME"] = str(home)
    os.environ["PREFECT_HOME"] = str(home / "prefect-client")
    soak = Soak(args, home)
    print(f"soak: {args.nights} {args.preset} nights, stack home {home}", flush=True)
    soak.up()
    if args.preset == "small":
        from nightshift.cli import fetch_demo_data

        fetch_demo_data(home)
    from nightshift.upkeep import disk_usage

    sampler = Sampler(home)
    client = Client(soak.env, args.rate)
    rows: list[dict[str, Any]] = []
    header = (
        f"{'night':>5} {'state':<11} {'took s':>7} {'files MB':>8} {'rec. MB':>7} {'req':>5} {'err':>4} "
        f"{'p99 s':>6}  " + " ".join(f"{s[:14]:>14}" for s in SERVICES)
    )
    print(
        "files: what gc manages, after gc; rec.: catalog, Prefect and MLflow databases; "
        "RSS columns: peak during the night / settled after it and gc, MB"
    )
    print(header, flush=True)
    try:
        for night in range(1, args.nights + 1):
            sampler.take_peak()
            t_start = time.time()
            params = {"preset": args.preset, "overrides": soak.night_overrides(night)}
            state, took = soak.deployment_run("pretrain/nightly", params)
            t_end = time.time()
            if night == 1:
                client.start()  # the first champion now serves
            peak = sampler.take_peak()
            gc_state, gc_took = soak.deployment_run(
                "maintenance/gc", {"preset": args.preset, "overrides": soak.gc_overrides()}
            )
            time.sleep(3)
            settled = sampler.now()
            disk = disk_usage(soak.cfg)
            managed = sum(v for k, v in disk.items() if k not in RECORDS)
            records = sum(v for k, v in disk.items() if k in RECORDS)
            load = client.window(t_start, t_end) if night > 1 else {"requests": 0, "errors": 0, "p99_s": None}
            row = {
                "night": night,
                "state": state,
                "seconds": round(took, 1),
                "gc_state": gc_state,
                "gc_seconds": round(gc_took, 1),
                "disk_bytes": managed,
                "records_bytes": records,
                "disk": disk,
                "peak_rss": peak,
                "settled_rss": settled,
                **load,
            }
            rows.append(row)
            p99 = f"{load['p99_s']:.2f}" if load.get("p99_s") is not None else "-"
            print(
                f"{night:>5} {state[:11]:<11} {took:>7.0f} {fmt_mb(managed):>8} {fmt_mb(records):>7} "
                f"{load['requests']:>5} {load['errors']:>4} {p99:>6}  "
                + " ".join(f"{fmt_mb(peak.get(s)) + '/' + fmt_mb(settled.get(s)):>14}" for s in SERVICES),
                flush=True,
            )
    finally:
        client.stop()
        sampler.stop()
        if not args.home:
            soak.down()
    summary: dict[str, Any] = {"nights": rows, "client_all": client.window(0, time.time())}
    if len(rows) >= 3:
        first, last = rows[1], rows[-1]  # night 1 has no champion served and no gc history yet
        summary["disk_ratio_last_vs_second"] = last["disk_bytes"] / max(1, first["disk_bytes"])
        summary["settled_rss_ratio_last_vs_second"] = {
            s: last["settled_rss"].get(s, 0) / max(1, first["settled_rss"].get(s, 0)) for s in SERVICES
        }
        print(
            f"\nfiles after gc, last night vs night 2: {summary['disk_ratio_last_vs_second']:.2f}x "
            f"({fmt_mb(first['disk_bytes'])} -> {fmt_mb(last['disk_bytes'])} MB)"
        )
        print(
            "settled RSS, last night vs night 2: "
            + ", ".join(f"{s} {r:.2f}x" for s, r in summary["settled_rss_ratio_last_vs_second"].items())
        )
    errors = sum(r["errors"] for r in rows)
    print(f"client: {sum(r['requests'] for r in rows)} requests during nights 2-{len(rows)}, {errors} errors")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
