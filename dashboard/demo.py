"""Seed a catalog and an MLflow store with many synthetic nights, to see the dashboard at scale.

``python -m dashboard.demo --root /tmp/ns-demo --nights 60`` writes ``/tmp/ns-demo/catalog.db``,
``/tmp/ns-demo/mlflow.db`` and ``/tmp/ns-demo/dashboard.yaml`` and prints the environment for
``streamlit run dashboard/app.py``. A real night takes minutes; sixty of them, with RLHF,
evaluation, promotions, a rollback-worthy failure and served traffic, take seconds here. The
data follows the platform's conventions (content-addressed artifacts shared across nights,
lineage edges, registry aliases, deployments, completions and feedback), but the numbers are
made up: this is for looking at the dashboard (``bench/screenshots.py``), never for tests of it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from catalog.db import migrate, session_scope
from catalog.models import Artifact, Completion, Deployment, Feedback, LineageEdge, Run

# MLflow is imported inside the functions that use it, not here: it takes a second or more to
# import, and not every user of this module needs it.

REGISTERED = "nightshift-gpt"
EXPERIMENT = "nightshift-demo"
STAGES = ("ingest", "tokenize", "pretrain", "sft", "reward", "dpo", "evaluate")
FAIL_AT = {13: "pretrain", -3: "dpo"}  # night index (negative: from the end) -> stage that broke
PROMPTS = (
    "Write a line about the sea in the style of Shakespeare.",
    "What is the capital of France? Answer in one word.",
    "Summarise the plot of Hamlet in two sentences.",
    "Give me a short, kind reply to a friend who failed an exam.",
)
ANSWERS = (
    "The sea doth roar with all the fury of a king unthroned, and yet at dusk it sighs like a lover.",
    "O restless deep, thou mirror of the moon, what secrets keep thy salt and silver waves?",
    "Paris.",
    "The capital of France is Paris, a city on the Seine.",
    "Prince Hamlet seeks to avenge his father's murder by his uncle Claudius. "
    "His hesitation and feigned madness end in tragedy for nearly everyone at court.",
    "Hamlet is a play. There is a ghost and then many people die.",
    "I'm sorry, that's rough. One exam doesn't define you; let's study together for the retake.",
    "Exams are hard. You will do better next time probably.",
)


@dataclass
class Seeded:
    """Where the demo lives and how to point the dashboard at it."""

    root: Path
    catalog_url: str
    mlflow_uri: str
    config_path: Path

    def env(self) -> dict[str, str]:
        return {
            "NIGHTSHIFT_CONFIG": str(self.config_path),
            "NIGHTSHIFT_REGISTERED_MODEL": REGISTERED,
        }


def _sha(*parts: Any) -> str:
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()


class _Writer:
    """Rows for one catalog session plus the MLflow runs behind them."""

    def __init__(self, s: Any, client: Any, experiment_id: str, root: Path) -> None:
        self.s, self.client, self.exp, self.root = s, client, experiment_id, root
        self.artifacts: dict[tuple[str, str], Artifact] = {}

    def artifact(self, kind: str, key: Any, size: int, **meta: Any) -> Artifact:
        sha = _sha(kind, key)
        found = self.artifacts.get((kind, sha))
        if found is None:
            uri = (self.root / "artifacts" / kind / sha[:16]).as_uri()
            found = Artifact(kind=kind, sha256=sha, uri=uri, size_bytes=size, meta=meta)
            self.s.add(found)
            self.s.flush()
            self.artifacts[(kind, sha)] = found
        return found

    def run(self, stage: str, start: datetime, minutes: float, parent: Run | None, **kw: Any) -> Run:
        from mlflow.entities import Metric

        tags = {"nightshift.stage" if parent else "nightshift.pipeline": stage}
        if parent is not None:
            tags["mlflow.parentRunId"] = parent.mlflow_run_id or ""
        mr = self.client.create_run(
            self.exp, start_time=int(start.timestamp() * 1000), run_name=stage, tags=tags
        )
        run = Run(
            stage=stage,
            parent_id=parent.id if parent else None,
            mlflow_run_id=mr.info.run_id,
            prefect_flow_run_id=kw.get("flow_run"),
            status=kw.get("status", "completed"),
            error=kw.get("error"),
            started_at=start,
            ended_at=start + timedelta(minutes=minutes),
        )
        self.s.add(run)
        self.s.flush()
        metrics = kw.get("metrics", {})
        history = kw.get("history", {})
        ts = int(start.timestamp() * 1000)
        items = [Metric(k, float(v), ts, 0) for k, v in metrics.items()]
        items += [Metric(k, float(v), ts + step, step) for k, vals in history.items() for step, v in vals]
        for i in range(0, len(items), 900):
            self.client.log_batch(mr.info.run_id, metrics=items[i : i + 900])
        status = "FAILED" if run.status == "failed" else "FINISHED"
        self.client.set_terminated(mr.info.run_id, status, end_time=int(run.ended_at.timestamp() * 1000))
        return run

    def edge(self, run: Run, art: Artifact, direction: str) -> None:
        self.s.add(
            LineageEdge(run_id=run.id, artifact_id=art.id, direction=direction, created_at=run.started_at)
        )


def _curve(rng: random.Random, start: float, end: float, steps: int = 25) -> list[tuple[int, float]]:
    return [
        (s * 40, end + (start - end) * math.exp(-4 * s / steps) + rng.gauss(0, 0.03))
        for s in range(steps + 1)
    ]


def seed(root: Path, nights: int = 60, seed_value: int = 7) -> Seeded:
    """Write ``nights`` synthetic nights under ``root`` (which must not hold a demo already)."""
    from mlflow import MlflowClient

    root.mkdir(parents=True, exist_ok=True)
    catalog_url = f"sqlite:///{root / 'catalog.db'}"
    mlflow_uri = f"sqlite:///{root / 'mlflow.db'}"
    migrate(catalog_url)
    client = MlflowClient(mlflow_uri)
    exp = client.create_experiment(EXPERIMENT, tags={"mlflow.experimentKind": "custom_model_development"})
    client.create_registered_model(REGISTERED)
    rng = random.Random(seed_value)
    first = datetime.now(UTC).replace(hour=2, minute=0, second=0, microsecond=0) - timedelta(days=nights - 1)
    champion: tuple[Artifact, str] | None = None
    deployments: list[Deployment] = []
    challenger_model: Artifact | None = None
    with session_scope(catalog_url) as s:
        w = _Writer(s, client, exp, root)
        for i in range(nights):
            start = first + timedelta(days=i)
            week = i // 7
            quality = 1.0 - 0.6 * i / nights  # later nights train better models
            flow_run = str(uuid.uuid4())
            fail = FAIL_AT.get(i) or FAIL_AT.get(i - nights)
            pipe = w.run("pretrain", start, 0, None, flow_run=flow_run)
            t = start
            sources = [
                w.artifact("source", "shakespeare.txt", 5_458_199, source="data/shakespeare.txt"),
                w.artifact(
                    "source", f"gutenberg-w{week}", 48_000_000, source=f"gutenberg-w{week:02d}.tar.gz"
                ),
                w.artifact("source", "wiki", 12_500_000, source="wiki-sample.jsonl"),
            ]
            corpus = w.artifact("corpus", week, 61_000_000)
            tokenizer = w.artifact("tokenizer", week, 2_100_000)
            tokens = w.artifact("tokens", week, 98_000_000)
            pre = w.artifact("model", ("pre", i), 497_000_000)
            sft = w.artifact("model", ("sft", i), 497_000_000)
            prefs = w.artifact("preferences", i, 800_000 + 2_000 * i, pairs=400 + 12 * i)
            rm = w.artifact("reward_model", i, 497_000_000)
            dpo = w.artifact("model", ("dpo", i), 497_000_000)
            report = w.artifact("eval_report", i, 180_000)
            plan = [
                (
                    "ingest",
                    6,
                    sources,
                    [corpus],
                    {"documents_in": 120_000 + 900 * week, "documents_kept": 98_000},
                ),
                ("tokenize", 4, [corpus], [tokenizer, tokens], {"tokens.train": 2.1e7 + 1e5 * week}),
                ("pretrain", 95, [tokens, tokenizer], [pre], {"val_loss": 3.1 * quality + 1.4, "mfu": 0.41}),
                ("sft", 12, [pre], [sft, prefs], {"val_loss": 2.9 * quality + 1.2}),
                ("reward", 9, [sft, prefs], [rm], {"accuracy": 0.62 + 0.2 * (1 - quality)}),
                ("dpo", 14, [sft, prefs], [dpo], {"reward_margin": 0.4 + (1 - quality), "kl": 0.08}),
                ("evaluate", 7, [dpo] + ([champion[0]] if champion else []), [report], {"win_rate": 0.5}),
            ]
            for stage, minutes, reads, writes, metrics in plan:
                broke = stage == fail
                history = {}
                if stage == "pretrain":
                    history = {"train_loss": _curve(rng, 6.2, metrics["val_loss"])}
                    metrics = {**metrics, "val_ppl": math.exp(metrics["val_loss"]), "tokens_per_s": 41_000}
                run = w.run(
                    stage,
                    t,
                    minutes,
                    pipe,
                    status="failed" if broke else "completed",
                    error="RayTaskError: the worker died (out of memory) at step 1200" if broke else None,
                    metrics={} if broke else metrics,
                    history={} if broke else history,
                )
                t += timedelta(minutes=minutes)
                for art in reads:
                    w.edge(run, art, "read")
                if broke:
                    break
                for art in writes:
                    w.edge(run, art, "wrote")
            pipe.ended_at = t
            if fail:
                pipe.status, pipe.error = "failed", f"stage {fail} failed; see its run"
                continue
            gate = "passed" if (i % 9 != 4) else "failed"  # every ninth candidate regresses
            win = rng.uniform(0.52, 0.64) if gate == "passed" else rng.uniform(0.38, 0.48)
            mv = client.create_model_version(
                REGISTERED,
                source=f"runs:/{pipe.mlflow_run_id}/model",
                run_id=pipe.mlflow_run_id,
                tags={
                    "nightshift.artifact_sha256": dpo.sha256,
                    "nightshift.gate": gate,
                    "nightshift.gate_summary": f"win rate {win:.2f} vs champion (needs ≥ 0.50)",
                    "nightshift.eval_metrics": json.dumps({"win_rate": round(win, 3), "kl": 0.08}),
                },
                description=f"Night {start:%Y-%m-%d}: gate **{gate}**.",
            )
            client.set_registered_model_alias(REGISTERED, "challenger", mv.version)
            challenger_model = dpo
            if gate == "passed":
                champion = (dpo, mv.version)
                client.set_registered_model_alias(REGISTERED, "champion", mv.version)
                for d in deployments:
                    if d.status == "active":
                        d.status, d.retired_at = "retired", t
                d = Deployment(
                    model_artifact_id=dpo.id,
                    registry_name=REGISTERED,
                    registry_version=mv.version,
                    alias="champion",
                    endpoint="http://127.0.0.1:8000/v1",
                    status="active",
                    created_by="nightshift-deploy",
                    created_at=t,
                )
                s.add(d)
                s.flush()
                deployments.append(d)
        _traffic(s, rng, deployments[-4:], challenger_model, datetime.now(UTC))
    config_path = root / "dashboard.yaml"
    tracking = {"mlflow_uri": mlflow_uri, "catalog_url": catalog_url, "experiment": EXPERIMENT}
    config_path.write_text(yaml.safe_dump({"tracking": tracking}))
    return Seeded(root=root, catalog_url=catalog_url, mlflow_uri=mlflow_uri, config_path=config_path)


def _traffic(
    s: Any, rng: random.Random, deployments: list[Deployment], challenger: Artifact | None, now: datetime
) -> None:
    """Completions served by the last deployments, some shadow answers of the challenger, feedback."""
    made: list[Completion] = []
    for d in deployments:
        for j in range(25):
            k = rng.randrange(len(PROMPTS))
            c = Completion(
                id=f"chatcmpl-demo{d.id:03d}{j:04d}",
                deployment_id=d.id,
                model_artifact_id=d.model_artifact_id,
                endpoint="chat",
                prompt=PROMPTS[k],
                response=ANSWERS[2 * k + rng.randrange(2)],
                prompt_tokens=14,
                completion_tokens=24,
                user="demo-client",
                created_at=now - timedelta(hours=rng.uniform(1, 30)),
            )
            s.add(c)
            made.append(c)
    if challenger is not None:
        for k, prompt in enumerate(PROMPTS):
            s.add(
                Completion(
                    id=f"chatcmpl-shadow{k:04d}",
                    model_artifact_id=challenger.id,
                    endpoint="chat",
                    prompt=prompt,
                    response=ANSWERS[2 * k + 1],
                    prompt_tokens=14,
                    completion_tokens=20,
                    created_at=now - timedelta(minutes=5 + k),
                )
            )
    s.flush()
    for c in made[::4]:
        s.add(
            Feedback(
                kind="rating",
                completion_id=c.id,
                rating=rng.choice((1, 1, 1, -1)),
                source="api",
                labeller="demo-client",
                created_at=c.created_at,
            )
        )
    for a, b in zip(made[1::7], made[2::7], strict=False):
        if a.prompt != b.prompt or a.response == b.response:
            continue
        s.add(
            Feedback(
                kind="preference",
                completion_id=a.id,
                other_completion_id=b.id,
                preferred="a",
                unsafe=rng.random() < 0.1,
                source="dashboard",
                labeller="ana",
                created_at=a.created_at,
            )
        )


def main(argv: list[str] | None = None) -> None:
    """CLI: seed a demo and print how to open the dashboard on it."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, required=True, help="an empty directory for the demo's state")
    p.add_argument("--nights", type=int, default=60, help="how many nights to invent (default 60)")
    args = p.parse_args(argv)
    demo = seed(args.root, args.nights)
    env = " ".join(f"{k}={v}" for k, v in demo.env().items())
    print(f"{env} streamlit run dashboard/app.py --server.address 127.0.0.1")


if __name__ == "__main__":
    main()
