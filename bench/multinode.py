"""Pretraining and serving on a simulated multi-node Ray cluster, losing a worker node in each.

Several raylets on loopback (``ray.cluster_utils.Cluster``) stand in for machines: a head with no
CPUs (it holds the GCS, the Serve controller and the HTTP proxy) and ``--nodes`` worker nodes of
one CPU each, so every 1-CPU worker must land on its own node. Then, in one run:

a. distributed pretraining through the production path (``training.pretrain.pretrain`` with
   ``train.num_workers=2``, Ray Train DDP over gloo), the two workers on two different nodes;
   once the first checkpoint is written, the node of rank 1 is killed (all its processes,
   SIGKILL). Ray Train restarts the worker group on the spare node from that checkpoint
   (``train.max_failures``) and the run ends at the same weights as an undisturbed
   single-process run of the same steps;
b. the trained model served by ``serving.app.build_app`` with two replicas, which Ray Serve
   spreads over two nodes; clients keep sending completions while the node of one replica is
   killed; Serve replaces the replica on a surviving node, and the script counts what the
   clients saw (requests tried, answered 200, failed) before, during and after the loss.

``python bench/multinode.py [--nodes 3] [--steps 16] [--requests-after 20] [--json out.json]``
(about 2-3 minutes on 2 cores). ``tests/cluster/test_multinode.py`` runs it and asserts on the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TEXT = (
    "shall i compare thee to a summers day thou art more lovely and more temperate rough winds do "
    "shake the darling buds of may and summers lease hath all too short a date "
) * 80


def make_inputs(root: Path) -> tuple[Any, Any]:
    """A real tokenizer and a ``tokens`` artifact of its encoding of ``TEXT`` (train/val)."""
    from catalog.artifacts import publish
    from gpt.tokenizer import train_tokenizer

    tok = train_tokenizer([TEXT], vocab_size=300)
    ids = np.asarray(tok.encode(TEXT).ids, dtype=np.uint16)
    split = int(len(ids) * 0.9)
    with publish("tokens", root=root) as st:
        splits = {}
        for name, part in (("train", ids[:split]), ("val", ids[split:])):
            part.tofile(st.path / f"{name}-00000.bin")
            splits[name] = {
                "tokens": int(len(part)),
                "documents": 1,
                "shards": [{"file": f"{name}-00000.bin", "tokens": int(len(part))}],
            }
        meta = {
            "format": "nightshift.tokens/1",
            "dtype": "uint16",
            "vocab_size": tok.get_vocab_size(),
            "eot_id": tok.get_vocab_size() - 1,
            "eot": "<|endoftext|>",
            "splits": splits,
            "tokens": int(len(ids)),
        }
        (st.path / "meta.json").write_text(json.dumps(meta))
    return tok, st.ref


def train_config(address: str, steps: int, workers: int) -> Any:
    from core.config import Config, RayConfig
    from core.model_config import ModelConfig
    from core.train_config import TrainConfig

    return Config(
        seed=11,
        model=ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=300, dropout=0.0),
        train=TrainConfig(
            max_steps=steps,
            batch_size=8,
            lr=3e-3,
            min_lr=3e-4,
            warmup_steps=2,
            val_every=steps,
            val_batches=2,
            log_every=1,
            checkpoint_every=4,
            keep_checkpoints=3,
            progress_bar=False,
            peak_flops=1e11,
            num_workers=workers,
            cpus_per_worker=1,
            max_failures=2,
        ),
        ray=RayConfig(address=address),
    )


def _paced(seconds: float) -> Any:
    import lightning as L

    class Paced(L.Callback):
        def on_train_batch_end(self, *args: Any) -> None:
            time.sleep(seconds)

    return Paced()


def actor_nodes(class_part: str) -> dict[str, str]:
    """Alive actors whose class name contains ``class_part``: actor id -> node id (GCS view)."""
    import ray

    out = {}
    for aid, info in ray._private.state.actors().items():  # the GCS table; no dashboard needed
        if class_part in info.get("ActorClassName", "") and info.get("State") == "ALIVE":
            out[aid] = info["Address"]["NodeID"]
    return out


def node_by_id(cluster: Any, node_id: str) -> Any:
    for node in cluster.worker_nodes:
        if node.node_id == node_id:
            return node
    raise LookupError(f"no worker node {node_id}")


def wait_for(pred: Any, timeout: float, what: str, every: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def train_phase(cluster: Any, address: str, tokens: Any, work: Path, steps: int) -> dict[str, Any]:
    """Pretrain on 2 workers on 2 nodes; kill rank 1's node after the first checkpoint."""
    import torch

    from training.pretrain import pretrain

    killed: dict[str, Any] = {}
    seen: dict[str, str] = {}  # every Ray Train worker actor seen during the run -> its node
    done = threading.Event()

    def watcher() -> None:
        while not done.is_set():
            seen.update(actor_nodes("RayTrainWorker"))
            time.sleep(0.5)

    def killer() -> None:
        ckpts = work / "ray2" / "checkpoints"
        wait_for(lambda: list(ckpts.glob("step-*/manifest.json")), 600, "the first checkpoint")
        nodes = actor_nodes("RayTrainWorker")
        killed["worker_nodes_before"] = sorted(set(nodes.values()))
        victim = node_by_id(cluster, sorted(nodes.values())[-1])
        killed["node"] = victim.node_id
        killed["at_checkpoints"] = sorted(p.parent.name for p in ckpts.glob("step-*/manifest.json"))
        cluster.remove_node(victim, allow_graceful=False)
        killed["t"] = time.monotonic()

    threads = [threading.Thread(target=f, daemon=True) for f in (killer, watcher)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    res = pretrain(train_config(address, steps, 2), tokens, workdir=work / "ray2", callbacks=[_paced(0.25)])
    wall = time.monotonic() - t0
    done.set()
    for t in threads:
        t.join(timeout=5)
    # The undisturbed reference: the same global batch and seed in one process.
    ref = pretrain(train_config("local", steps, 1), tokens, workdir=work / "one")
    diff = max(
        float((a - b).abs().max())
        for a, b in zip(res.model.state_dict().values(), ref.model.state_dict().values(), strict=True)
    )
    return {
        "steps": int(res.metrics["steps"]),
        "final_checkpoint": res.checkpoint_dir.name,
        "worker_nodes": len(killed.get("worker_nodes_before", [])),
        "killed_node": killed.get("node"),
        "killed_after": killed.get("at_checkpoints"),
        # 2 workers at start + 2 in the restarted group: the loss really forced a restart.
        "worker_actors_seen": len(seen),
        "nodes_used_by_workers": len(set(seen.values())),
        "history_steps": [r["step"] for r in res.history],
        "max_abs_weight_diff_vs_single_process": diff,
        "val_loss": float(res.metrics["val_loss"]),
        "ref_val_loss": float(ref.metrics["val_loss"]),
        "wall_s": round(wall, 1),
        "model": res.model.to(torch.float32),
    }


def serve_phase(cluster: Any, model: Any, tok: Any, work: Path, requests_after: int) -> dict[str, Any]:
    """Two replicas on two nodes; kill one replica's node under client load."""
    import httpx
    from ray import serve

    from catalog.db import migrate
    from gpt.model_io import save_model
    from nightshift.services import free_ports
    from serving.app import build_app

    ref = save_model(model, tok, root=work / "artifacts")
    catalog_url = f"sqlite:///{work}/catalog.db"
    migrate(catalog_url)
    port = free_ports(1)[0]
    # One proxy, on the head: every "node" shares this host's loopback, so proxies on each would clash.
    serve.start(http_options={"host": "127.0.0.1", "port": port, "location": "HeadOnly"})
    args = {
        "model": str(ref.path),
        "catalog_url": catalog_url,
        "serve": {"auth": "none", "min_replicas": 2, "max_replicas": 2, "replica_cpus": 0.5,
                  "torch_threads": 1, "max_batch": 4},
    }  # fmt: skip
    serve.run(build_app(args), name="multinode", route_prefix="/mn")
    url = f"http://127.0.0.1:{port}/mn"
    body = {"model": "nightshift-gpt", "prompt": "shall i compare", "max_tokens": 8, "temperature": 0}
    wait_for(lambda: len(set(actor_nodes("ServeReplica").values())) == 2, 120, "two replicas on two nodes")
    placed = actor_nodes("ServeReplica")

    def healthy() -> bool:
        try:
            return httpx.get(url + "/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, 120, "the route on the proxy")  # the proxy learns routes asynchronously
    stats = {p: {"tried": 0, "ok": 0, "failed": 0} for p in ("before", "during", "after")}
    phase = {"now": "before"}
    stop = threading.Event()
    errors: list[str] = []  # "phase: what"

    def client() -> None:
        with httpx.Client(timeout=60) as c:
            while not stop.is_set():
                p = phase["now"]
                stats[p]["tried"] += 1
                try:
                    r = c.post(url + "/v1/completions", json=body)
                    ok = r.status_code == 200
                    if not ok:
                        errors.append(f"{p}: {r.status_code} {r.text[:120]}")
                except httpx.HTTPError as e:
                    ok = False
                    errors.append(f"{p}: {type(e).__name__}")
                stats[p]["ok" if ok else "failed"] += 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(2)]
    for th in threads:
        th.start()
    wait_for(lambda: stats["before"]["ok"] >= 10, 120, "10 answers before the loss")
    victim_id = sorted(placed.values())[0]
    phase["now"] = "during"
    t_kill = time.monotonic()
    cluster.remove_node(node_by_id(cluster, victim_id), allow_graceful=False)
    # Recovered: two live replicas again, none on the dead node.
    wait_for(
        lambda: (now := actor_nodes("ServeReplica")) and len(now) == 2 and victim_id not in now.values(),
        180,
        "Serve to replace the lost replica",
    )
    recovery_s = time.monotonic() - t_kill
    phase["now"] = "after"
    wait_for(lambda: stats["after"]["tried"] >= requests_after, 180, f"{requests_after} requests after")
    stop.set()
    for th in threads:
        th.join(timeout=70)
    health = httpx.get(url + "/health", timeout=10).status_code
    serve.delete("multinode")
    serve.shutdown()
    return {
        "replica_nodes_before": len(set(placed.values())),
        "replica_recovery_s": round(recovery_s, 1),
        "requests": stats,
        "errors": errors[:20],
        "health_after": health,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=3, help="worker nodes of 1 CPU each (>= 3: 2 + a spare)")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--requests-after", type=int, default=20)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    a = ap.parse_args()
    if a.nodes < 3:
        ap.error("--nodes: need at least 3 (two workers and a spare to restart on)")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray
    from ray.cluster_utils import Cluster

    from core.config import RayConfig
    from core.ray_setup import init_ray
    from nightshift.services import free_ports

    work = Path(tempfile.mkdtemp(prefix="nightshift-multinode-"))
    t0 = time.monotonic()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "gcs_server_port": free_ports(1)[0], "include_dashboard": False},
    )
    try:
        for _ in range(a.nodes):
            cluster.add_node(num_cpus=1, include_dashboard=False)
        init_ray(RayConfig(address=cluster.address))
        alive = [n for n in ray.nodes() if n["Alive"]]
        tok, tokens = make_inputs(work / "artifacts")
        train = train_phase(cluster, cluster.address, tokens, work, a.steps)
        model = train.pop("model")
        cluster.add_node(num_cpus=1, include_dashboard=False)  # the "autoscaler" replaces the lost node
        serve_res = serve_phase(cluster, model, tok, work, a.requests_after)
        wall = round(time.monotonic() - t0, 1)
        out = {"nodes": len(alive), "train": train, "serve": serve_res, "wall_s": wall}
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps(out, indent=2))
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
