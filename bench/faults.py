"""Faults during nightly runs on a real local stack: SIGKILL a part, see the night through, lose nothing.

A throwaway stack (``nightshift up`` on free ports, state in a temp ``NIGHTSHIFT_HOME``) runs
``pretrain/nightly`` (preset ``tiny`` on a generated corpus) through its Prefect worker, as a
user starts it. Each scenario injects one fault at a random point (seeded: ``--seed``):

- ``train-worker``: SIGKILL one Ray Train worker process of the pretrain stage (``train.num_workers
  2`` on the stack's Ray head) after its first checkpoint; Ray Train restarts the group from it;
- ``prefect-worker``: SIGKILL the Prefect worker at a random time; ``nightshift up`` starts a new
  one 5 s later (what a supervisor does);
- ``mlflow``: SIGKILL the MLflow server (its whole process group) at a random time; ``nightshift
  up`` restarts it 10 s later; MLflow's client retries and Prefect's task retries carry the run;
- ``serve-replica``: SIGKILL the Serve replica that serves the night's model while two clients
  call it; every answered completion must be in the catalog;
- ``concurrent``: two nightly flows started at the same moment on the same corpus (bypassing the
  deployment's concurrency limit of 1), racing on the same content-addressed artifacts, the
  catalog, MLflow, the registry and the Serve app.

A run that ends FAILED or CRASHED is started again once ("fails cleanly and resumes": content-
addressed stages and pretraining checkpoints are reused). At the end every artifact under the
artifact root and every artifact the catalog records is re-hashed (``open_artifact``), and
catalog runs, registry versions and completions are counted. Figures print as JSON.

``python bench/faults.py [--scenarios all] [--seed 0] [--json out.json]`` (about 15 min on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SCENARIOS = ("train-worker", "prefect-worker", "mlflow", "serve-replica", "concurrent")
WORDS = (
    "the night is long and the stars burn low over the quiet river while the watchman counts "
    "his hours and dreams of morning bread and distant ships"
).split()


def write_corpus(root: Path, n_docs: int = 30, seed: int = 0) -> Path:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 16))) + "." for _ in range(12)]
        (root / f"doc{i:03d}.txt").write_text("\n".join(lines) + "\n")
    return root


def _outcome(ok: bool, out: str) -> str:
    """completed, gate-failed (ran to the end; the gates rejected the candidate), or failed."""
    if ok:
        return "completed"
    return "gate-failed" if "finished in state 'GateFailed'" in out else "failed"


class Bench:
    def __init__(self, home: Path, seed: int):
        from core.config import load_config

        self.home, self.rng = home, random.Random(seed)
        from nightshift.services import free_port_overrides

        over: dict[str, Any] = {**free_port_overrides()}
        over.update({"stack.ray_num_cpus": 4, "stack.ray_object_store_bytes": 200_000_000,
                     "stack.set_profile": False})  # fmt: skip
        self.cfg = load_config("tiny", over)
        self.corpus = write_corpus(home.parent / "corpus")
        self.env: dict[str, str] = {}

    # --- stack -------------------------------------------------------------------------------
    def up(self, deploy: bool = False) -> float:
        from nightshift import stack

        t0 = time.monotonic()
        stack.up(self.cfg, deploy=deploy)
        self.env = {**os.environ, **stack.stack_env(self.cfg)}
        return time.monotonic() - t0

    def service_pid(self, name: str) -> int:
        from nightshift.services import owned_pid

        pid = owned_pid(self.home, name)
        if pid is None:
            raise RuntimeError(f"{name} is not running")
        return pid

    # --- runs --------------------------------------------------------------------------------
    def params(self, **extra: Any) -> dict[str, Any]:
        over = {"data.sources": [str(self.corpus)], "ray.num_cpus": 1, "serve.port": self.cfg.serve.port,
                "train.max_steps": 300, "train.checkpoint_every": 25, "train.val_every": 100}  # fmt: skip
        over.update(extra)
        return {"preset": "tiny", "overrides": over}

    def start_deployment_run(self, params: dict[str, Any]) -> subprocess.Popen[str]:
        cmd = [str(Path(sys.executable).with_name("prefect")), "deployment", "run", "pretrain/nightly",
               "--params", json.dumps(params), "--watch"]  # fmt: skip
        return subprocess.Popen(
            cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def start_direct_flow(self, params: dict[str, Any]) -> subprocess.Popen[str]:
        code = (
            "import json,sys; from flows.pretrain import pretrain; "
            "p=json.loads(sys.argv[1]); pretrain(preset=p['preset'], overrides=p['overrides'])"
        )
        return subprocess.Popen([sys.executable, "-c", code, json.dumps(params)], env=self.env, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip

    @staticmethod
    def finish(proc: subprocess.Popen[str], timeout: float = 900) -> tuple[bool, str]:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            return False, f"(no end after {timeout:.0f} s; watcher killed)\n" + out[-2400:]
        return proc.returncode == 0, out[-2500:]

    def run_with_resume(self, proc: subprocess.Popen[str], params: dict[str, Any]) -> dict[str, Any]:
        ok, out = self.finish(proc)
        res: dict[str, Any] = {"first_attempt": _outcome(ok, out)}
        ok = ok or res["first_attempt"] == "gate-failed"
        if not ok:
            res["first_attempt_tail"] = out[-600:]
            self.up()  # whatever died is started again, as a supervisor would
            ok, out = self.finish(self.start_deployment_run(params))
            res["resumed"] = _outcome(ok, out)
            # A night that ran to its end and whose candidate the gates rejected ended cleanly too.
            ok = ok or res["resumed"] == "gate-failed"
            if not ok:
                res["resumed_tail"] = out[-1500:]
        res["completed"] = ok
        return res

    # --- scenarios ---------------------------------------------------------------------------
    def baseline(self) -> dict[str, Any]:
        t0 = time.monotonic()
        res = self.run_with_resume(self.start_deployment_run(self.params()), self.params())
        self.duration = time.monotonic() - t0
        return {**res, "wall_s": round(self.duration, 1)}

    def train_worker(self) -> dict[str, Any]:
        import psutil

        params = self.params(**{"train.num_workers": 2, "train.cpus_per_worker": 1, "seed": 1})
        t0 = time.time()
        proc = self.start_deployment_run(params)
        fault: dict[str, Any] = {}

        def inject() -> None:
            while proc.poll() is None:
                fresh = [
                    p for p in self.home.rglob("checkpoints/step-*/manifest.json") if p.stat().st_mtime > t0
                ]
                workers = [p for p in psutil.process_iter(["cmdline"])
                           if "RayTrainWorker" in " ".join(p.info["cmdline"] or [])]  # fmt: skip
                if fresh and workers:
                    time.sleep(self.rng.uniform(0, 1.0))
                    victim = self.rng.choice(workers)
                    fault.update(pid=victim.pid, after_checkpoints=len(fresh), t=round(time.time() - t0, 1))
                    os.kill(victim.pid, signal.SIGKILL)
                    return
                time.sleep(0.2)

        th = threading.Thread(target=inject, daemon=True)
        th.start()
        res = self.run_with_resume(proc, params)
        th.join(timeout=5)
        return {**res, "fault": fault or "not injected (the run ended first)"}

    def kill_service(self, name: str, restart_after: float, group: bool) -> dict[str, Any]:
        params = self.params(seed=self.rng.randint(2, 10_000))
        at = self.rng.uniform(0.1, 0.7) * self.duration
        proc = self.start_deployment_run(params)
        fault: dict[str, Any] = {"service": name, "at_s": round(at, 1)}

        def inject() -> None:
            time.sleep(at)
            if proc.poll() is not None:
                fault["note"] = "the run ended before the fault"
                return
            pid = self.service_pid(name)
            os.killpg(pid, signal.SIGKILL) if group else os.kill(pid, signal.SIGKILL)
            fault["pid"] = pid
            time.sleep(restart_after)
            fault["restart_s"] = round(self.up(), 1)

        th = threading.Thread(target=inject, daemon=True)
        th.start()
        res = self.run_with_resume(proc, params)
        th.join(timeout=120)
        return {**res, "fault": fault}

    def serve_replica(self) -> dict[str, Any]:
        import httpx
        import psutil

        from catalog.db import session_scope
        from catalog.models import Completion

        url = self.env["OPENAI_BASE_URL"]
        headers = {"Authorization": f"Bearer {self.env.get('OPENAI_API_KEY', '')}"}
        body = {"model": "nightshift-gpt", "prompt": "the night", "max_tokens": 8}
        ids: list[str] = []
        codes: dict[str, dict[str, int]] = {"before": {}, "after": {}}  # phase -> status -> count
        phase = ["before"]
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(timeout=60) as c:
                while not stop.is_set():
                    try:
                        r = c.post(f"{url}/completions", json=body, headers=headers)
                        key = str(r.status_code)
                        if r.status_code == 200:
                            ids.append(r.json()["id"])
                    except httpx.HTTPError as e:
                        key = type(e).__name__
                    seen = codes[phase[0]]
                    seen[key] = seen.get(key, 0) + 1

        threads = [threading.Thread(target=client, daemon=True) for _ in range(2)]
        for th in threads:
            th.start()
        time.sleep(self.rng.uniform(2, 6))
        replicas = [p for p in psutil.process_iter(["cmdline"])
                    if "ServeReplica" in " ".join(p.info["cmdline"] or [])]  # fmt: skip
        victim = self.rng.choice(replicas)
        os.kill(victim.pid, signal.SIGKILL)
        phase[0] = "after"
        time.sleep(25)  # Serve notices, starts a new replica, and traffic flows again
        stop.set()
        for th in threads:
            th.join(timeout=70)
        with session_scope(self.cfg.tracking.catalog_url) as s:
            stored = {c for (c,) in s.query(Completion.id).filter(Completion.id.in_(ids))}
        lost = [i for i in ids if i not in stored]
        return {"replicas": len(replicas), "responses": codes, "answered": len(ids),
                "records_lost": len(lost)}  # fmt: skip

    def concurrent(self) -> dict[str, Any]:
        params = self.params(seed=4242)
        procs = [self.start_direct_flow(params) for _ in range(2)]
        outs = [self.finish(p) for p in procs]
        return {"runs": 2, "completed": sum(ok for ok, _ in outs),
                "tails": [out[-800:] for ok, out in outs if not ok]}  # fmt: skip

    # --- integrity ---------------------------------------------------------------------------
    def integrity(self) -> dict[str, Any]:
        from catalog.artifacts import INDEX, ArtifactError, open_artifact
        from catalog.db import session_scope
        from catalog.models import Artifact, Run

        root = Path(self.cfg.tracking.artifact_root)
        checked, bad, half = 0, [], 0
        for index in root.glob(f"*/*/{INDEX}"):
            checked += 1
            try:
                open_artifact(index.parent, verify=True)
            except ArtifactError as e:
                bad.append(str(e)[:200])
        # A directory in a kind folder without its index would be a half-written artifact.
        for d in root.glob("*/*"):
            if d.is_dir() and not d.name.startswith(".") and not (d / INDEX).exists():
                half += 1
        rows, row_bad = 0, []
        with session_scope(self.cfg.tracking.catalog_url) as s:
            for a in s.query(Artifact):
                if not a.uri.startswith("file:"):
                    continue
                rows += 1
                try:
                    open_artifact(Path(a.uri.removeprefix("file://")), verify=True)
                except ArtifactError as e:
                    row_bad.append(str(e)[:200])
            runs: dict[str, int] = {}
            for (status,) in s.query(Run.status):
                runs[status] = runs.get(status, 0) + 1
        return {"artifacts_checked": checked, "artifacts_bad": bad, "half_written_dirs": half,
                "catalog_artifacts_checked": rows, "catalog_artifacts_bad": row_bad,
                "catalog_runs": runs}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenarios", default="all", help=f"comma list of {', '.join(SCENARIOS)} (or 'all')")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    chosen = SCENARIOS if a.scenarios == "all" else tuple(a.scenarios.split(","))
    if unknown := set(chosen) - set(SCENARIOS):
        ap.error(f"--scenarios: unknown {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    tmp = Path(tempfile.mkdtemp(prefix="nsf-"))
    home = tmp / "home"
    os.environ["NIGHTSHIFT_HOME"] = str(home)
    os.environ["PREFECT_HOME"] = str(tmp / "prefect")
    bench = Bench(home, a.seed)
    out: dict[str, Any] = {"seed": a.seed}
    t0 = time.monotonic()
    try:
        out["stack_up_s"] = round(bench.up(deploy=True), 1)
        out["baseline"] = bench.baseline()
        for name in chosen:
            print(f"[faults] {name} ...", file=sys.stderr, flush=True)
            if name == "train-worker":
                out[name] = bench.train_worker()
            elif name == "prefect-worker":
                out[name] = bench.kill_service("prefect-worker", restart_after=5, group=False)
            elif name == "mlflow":
                out[name] = bench.kill_service("mlflow", restart_after=10, group=True)
            elif name == "serve-replica":
                out[name] = bench.serve_replica()
            else:
                out[name] = bench.concurrent()
            print(json.dumps(out[name]), file=sys.stderr, flush=True)
        out["integrity"] = bench.integrity()
    finally:
        from nightshift import stack

        stack.down(bench.cfg)
        out["wall_s"] = round(time.monotonic() - t0, 1)
        print(json.dumps(out, indent=2))
        if a.json:
            a.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
