"""Night after night on the stack the nightly deploys to: the champion is served between nights.

One stack (Prefect server and worker, MLflow, a Ray head of 2 CPUs like the demo machine, the
dashboard) runs the nightly deployment with the demo's topology at a tiny size: two Ray Train
workers, RLHF on, and the champion on Ray Serve with the demo's ``serve.replica_cpus`` (0.5) between
nights, which used to leave the workers' placement group unplaceable for ever. In order:

1. three nights, the second started by the deployment's own schedule through the worker, while a
   client calls the served model the whole time;
2. a night stuck in pretraining: ``nightshift status`` flags it, its watchdog ends it ``Crashed``
   with the reason and Ray gets its CPUs back;
3. a night cancelled during pretraining ends ``Cancelled`` (never ``Crashed``) and frees Ray too.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.config import Config, load_config
from nightshift import stack
from nightshift.services import free_port_overrides
from tests.flows.conftest import write_corpus

pytestmark = [pytest.mark.stack, pytest.mark.slow]

FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
NIGHT_TIMEOUT_S = 420


@pytest.fixture(scope="module")
def env_cfg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Config, dict[str, str], Path]]:
    home = tmp_path_factory.mktemp("nights_home")
    overrides: dict[str, object] = {**free_port_overrides()}
    overrides.update(
        {"stack.ray_num_cpus": 2, "stack.ray_object_store_bytes": 150_000_000, "stack.set_profile": False}
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NIGHTSHIFT_HOME", str(home))
        mp.setenv("PREFECT_HOME", str(tmp_path_factory.mktemp("nights_prefect_home")))
        # The server's scheduler looks for due schedules every 60 s by default; a test waits less.
        mp.setenv("PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS", "2")
        mp.setenv("PREFECT_WORKER_QUERY_SECONDS", "2")
        cfg = load_config("tiny", overrides)
        try:
            stack.up(cfg, deploy=True)
            env = {**os.environ, **stack.stack_env(cfg)}
            src = write_corpus(home / "src", n_docs=30)
            yield cfg, env, src
        finally:
            stack.down(cfg)


def _params(cfg: Config, src: Path, seed: int, **extra: Any) -> dict[str, Any]:
    """The nightly's parameters: tiny sizes, the demo's topology."""
    return {
        "preset": "tiny",
        "overrides": {
            "data.sources": [str(src)],
            "serve.port": cfg.serve.port,
            "seed": seed,  # a new model each night, so each night trains on Ray Train
            "train.num_workers": 2,
            "train.max_steps": 10,
            "train.val_every": 5,
            "train.checkpoint_every": 5,
            "serve.replica_cpus": 0.5,  # the demo's share (the tiny preset's 0.1 always fitted)
            "rlhf.enabled": True,
            "rlhf.algorithm": "dpo",
            "eval.prompt_format": "chat",
            "rlhf.sft.steps": 10,
            "rlhf.sft.batch_size": 8,
            "rlhf.sft.warmup_steps": 2,
            "rlhf.reward.steps": 10,
            "rlhf.reward.batch_size": 8,
            "rlhf.reward.warmup_steps": 2,
            "rlhf.dpo.steps": 6,
            "rlhf.dpo.batch_size": 8,
            "rlhf.dpo.warmup_steps": 1,
            **extra,
        },
    }


def _prefect(
    env: dict[str, str], *args: str, timeout: float = NIGHT_TIMEOUT_S
) -> subprocess.CompletedProcess:
    prefect = str(Path(sys.executable).with_name("prefect"))
    return subprocess.run([prefect, *args], env=env, capture_output=True, text=True, timeout=timeout)


def _start(env: dict[str, str], params: dict[str, Any]) -> str:
    """``prefect deployment run pretrain/nightly`` as a user types it; returns the flow run id."""
    done = _prefect(env, "deployment", "run", "pretrain/nightly", "--params", json.dumps(params), timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout.split("/runs/flow-run/")[1].split()[0]


def _client_call(env: dict[str, str], fn: str, *args: Any) -> Any:
    """One call of the Prefect client against the stack's server (its own event loop)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def call() -> Any:
        with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
            async with get_client() as c:
                return await getattr(c, fn)(*args)

    return asyncio.run(call())


def _wait_final(env: dict[str, str], flow_run_id: str, timeout: float = NIGHT_TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = _client_call(env, "read_flow_run", flow_run_id)
        if run.state and run.state.type.value in FINAL:
            return run
        time.sleep(2)
    pytest.fail(f"flow run {flow_run_id} not finished after {timeout:.0f} s")


def _states(env: dict[str, str], flow_run_id: str) -> list[str]:
    return [s.name for s in _client_call(env, "read_flow_run_states", flow_run_id)]


def _stage_window(cfg: Config, flow_run_id: str, stage: str) -> tuple[datetime, datetime | None] | None:
    from catalog.db import session_scope
    from catalog.models import Run

    with session_scope(cfg.tracking.catalog_url) as s:
        row = (
            s.query(Run)
            # A stage, not the pipeline run (the nightly's pipeline is called "pretrain" too).
            .filter(Run.prefect_flow_run_id == flow_run_id, Run.stage == stage, Run.parent_id.is_not(None))
            .order_by(Run.started_at.desc())
            .first()
        )
        return (row.started_at, row.ended_at) if row else None


def _wait_stage_running(
    cfg: Config, flow_run_id: str, stage: str, ray: RayWatch, timeout: float = 300
) -> None:
    """Until ``stage`` of the night is running and its Ray Train workers hold their CPUs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        window = _stage_window(cfg, flow_run_id, stage)
        if window and window[1] is None and ray.free() <= 0.5 + 1e-6:
            return
        time.sleep(0.5)
    pytest.fail(f"{stage} of {flow_run_id} was not training after {timeout:.0f} s (free CPU {ray.free()})")


# Prints the stack's free CPUs twice a second, as a separate Ray job: this test process keeps the
# session's own local Ray (other modules share it) and cannot join a second one.
WATCH = """
import json, sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="WARNING")
while True:
    print(json.dumps(ray.available_resources().get("CPU", 0.0)), flush=True)
    time.sleep(0.5)
"""


class RayWatch:
    """The stack's free Ray CPUs, as last reported by a watcher process."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WATCH, env["RAY_ADDRESS"]],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.value: float | None = None
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 60
        while self.value is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert self.value is not None, "the Ray watcher reported nothing within 60 s"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.value = float(line)

    def free(self) -> float:
        time.sleep(0.6)  # a fresh reading
        return float(self.value or 0.0)

    def wait_free(self, cpus: float, timeout: float = 30) -> float:
        deadline = time.monotonic() + timeout
        while self.free() < cpus - 1e-6 and time.monotonic() < deadline:
            pass
        return self.free()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def ray_watch(env_cfg: tuple[Config, dict[str, str], Path]) -> Iterator[RayWatch]:
    watch = RayWatch(env_cfg[1])
    yield watch
    watch.close()


class Load:
    """A client calling the served model with the official openai client, one request at a time."""

    def __init__(self, env: dict[str, str]) -> None:
        import openai

        self.client = openai.OpenAI(
            base_url=env["OPENAI_BASE_URL"], api_key=env["OPENAI_API_KEY"], max_retries=0, timeout=60
        )
        self.results: list[tuple[datetime, str]] = []  # (when, "ok" or the error)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.client.completions.create(model="nightshift-gpt", prompt="the", max_tokens=4, seed=1)
                outcome = "ok"
            except Exception as e:  # a 5xx, a refused connection, a timeout: all count against us
                outcome = f"{type(e).__name__}: {e}"[:300]
            self.results.append((datetime.now(UTC), outcome))
            self._stop.wait(0.5)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=90)


def _pretrain_params(cfg: Config, env: dict[str, str], flow_run_id: str) -> dict[str, str]:
    """The MLflow params of the night's pretrain stage (found through the catalog's stage run)."""
    from mlflow import MlflowClient

    from catalog.db import session_scope
    from catalog.models import Run

    with session_scope(cfg.tracking.catalog_url) as s:
        stage = (
            s.query(Run)
            .filter(
                Run.prefect_flow_run_id == flow_run_id, Run.stage == "pretrain", Run.parent_id.is_not(None)
            )
            .one()
        )
        mlflow_id = stage.mlflow_run_id
    return MlflowClient(env["MLFLOW_TRACKING_URI"]).get_run(mlflow_id).data.params


def _pretrain_reads(cfg: Config, flow_run_id: str, kind: str) -> set[str]:
    """The sha256s of the ``kind`` artifacts the night's pretrain stage read (catalog lineage)."""
    from catalog.db import session_scope
    from catalog.models import Artifact, LineageEdge, Run

    with session_scope(cfg.tracking.catalog_url) as s:
        rows = (
            s.query(Artifact.sha256)
            .join(LineageEdge, LineageEdge.artifact_id == Artifact.id)
            .join(Run, Run.id == LineageEdge.run_id)
            .filter(
                Run.prefect_flow_run_id == flow_run_id,
                Run.stage == "pretrain",
                LineageEdge.direction == "read",
                Artifact.kind == kind,
            )
            .all()
        )
    return {sha for (sha,) in rows}


def _dashboard_overview(cfg: Config, env: dict[str, str], tmp: Path) -> Any:
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    config = tmp / "dashboard.yaml"
    tracking = {"mlflow_uri": env["MLFLOW_TRACKING_URI"], "catalog_url": cfg.tracking.catalog_url}
    config.write_text(yaml.safe_dump({"tracking": tracking}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NIGHTSHIFT_CONFIG", str(config))
        mp.setenv("NIGHTSHIFT_SERVE_URL", env["OPENAI_BASE_URL"])
        st.cache_data.clear()
        app = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
        at = AppTest.from_file(str(app), default_timeout=90).run()
        at.switch_page("views/overview.py").run()
        assert not at.exception, [e.value for e in at.exception]
        return at.dataframe[0].value


def test_three_nights_with_the_champion_served(
    env_cfg: tuple[Config, dict[str, str], Path], ray_watch: RayWatch, tmp_path: Path
) -> None:
    cfg, env, src = env_cfg
    # Night 1 by hand: nothing serves yet; it ends with the first champion on Ray Serve.
    first = _start(env, _params(cfg, src, seed=1))
    run = _wait_final(env, first)
    assert run.state.name == "Completed", run.state.message
    nights = [first]
    with Load(env) as load:
        # Night 2 from the deployment's own schedule: moved to fire in a few seconds, with this
        # test's parameters (a schedule's own parameter overrides), and started by the worker.
        deployment = _client_call(env, "read_deployment_by_name", "pretrain/nightly")
        (schedule,) = deployment.schedules
        from prefect.client.schemas.schedules import IntervalSchedule

        soon = IntervalSchedule(
            interval=timedelta(days=1), anchor_date=datetime.now(UTC) + timedelta(seconds=8)
        )
        _client_call(
            env,
            "update_deployment_schedule",
            deployment.id,
            schedule.id,
            None,
            soon,
            None,
            _params(cfg, src, seed=2),
        )
        deadline = time.monotonic() + 120
        scheduled = None
        while scheduled is None and time.monotonic() < deadline:
            runs = _client_call(env, "read_flow_runs")
            # This deployment's: the stack's other schedules (maintenance/gc at 12:00 UTC) may fire too.
            started = [
                r
                for r in runs
                if r.auto_scheduled and r.start_time is not None and r.deployment_id == deployment.id
            ]
            scheduled = started[0] if started else None
            time.sleep(2)
        assert scheduled is not None, "the schedule started no night within 120 s"
        assert scheduled.deployment_id == deployment.id and scheduled.work_pool_name == cfg.stack.work_pool
        nights.append(str(scheduled.id))
        _wait_final(env, nights[-1])
        # Night 3 by hand again.
        nights.append(_start(env, _params(cfg, src, seed=3)))
        _wait_final(env, nights[-1])
        time.sleep(2)  # a request or two after the last rollout
    for i, night in enumerate(nights):
        run = _client_call(env, "read_flow_run", night)
        assert run.state.name in ("Completed", "GateFailed"), f"{night}: {run.state.name} {run.state.message}"
        if run.state.name == "GateFailed":
            assert "gate failed" in run.state.message and "keeps serving" in run.state.message
        # Two Ray Train workers, sized to the CPUs free: all of them on the first night, then what the
        # served champion's replica leaves, 2 - 0.5 = 2 x 0.75.
        placed = _pretrain_params(cfg, env, night)
        assert placed["placement.num_workers"] == "2" and placed["placement.mode"] == "fit"
        assert float(placed["placement.cpus_per_worker"]) == pytest.approx(1.0 if i == 0 else 0.75)
        if i:
            assert "0.5 CPU by the Serve replica" in placed["placement.note"]
        # train.init: champion (the default): the first night starts from scratch, later ones from
        # the champion, named in the stage's params.
        assert (placed["parent_model"] == "scratch") == (i == 0), placed["parent_model"]
        if i:  # and the lineage: the stage read the parent model
            assert placed["parent_model"] in _pretrain_reads(cfg, night, "model")
    errors = [outcome for _, outcome in load.results if outcome != "ok"]
    assert not errors, errors[:5]
    for night in nights[1:]:  # answered while each later night was training
        start, end = _stage_window(cfg, night, "pretrain")
        during = [t for t, outcome in load.results if start <= t <= (end or t)]
        assert during, f"no request completed during the pretraining of {night}"
    # The night's log, as `nightshift demo` prints it: the stages' progress lines reach Prefect's
    # log, pretraining's from the Ray Train workers included.
    from nightshift.nights import follow

    lines: list[str] = []
    assert follow(env["PREFECT_API_URL"], nights[0], out=lines.append, poll_s=0.1) == "Completed"
    text = "\n".join(lines)
    assert "pretrain: step 10/10 (100%)" in text, text[-3000:]  # train.max_steps of _params
    assert "tokens_per_s" in text and "sft: step" in text, text[-3000:]
    assert lines[-1].startswith("--- flow run ") and lines[-1].endswith("Completed")
    runs = _dashboard_overview(cfg, env, tmp_path)
    assert list(runs["pipeline"]).count("pretrain") == 3
    assert all(link for link in runs["Prefect"])


def _status(cfg: Config, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    args = [f"--{k}={v}" for k, v in free_port_keys(cfg).items()]
    nightshift = str(Path(sys.executable).with_name("nightshift"))
    return subprocess.run(
        [nightshift, "status", "--preset", "tiny", *args, *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def free_port_keys(cfg: Config) -> dict[str, Any]:
    """The port overrides the stack was started with (``nightshift status`` must name the same stack)."""
    s = cfg.stack
    keys = (
        "prefect_port", "mlflow_port", "ray_port", "ray_dashboard_port", "ray_client_port",
        "dashboard_port", "ray_dashboard_agent_port",
    )  # fmt: skip
    return {**{f"stack.{k}": getattr(s, k) for k in keys}, "stack.ray_num_cpus": s.ray_num_cpus}


def test_a_stuck_night_is_flagged_then_ended_crashed(
    env_cfg: tuple[Config, dict[str, str], Path], ray_watch: RayWatch
) -> None:
    cfg, env, src = env_cfg
    # Long enough that the status check below runs before the night's own watchdog ends it, even on
    # a slow CI machine where the Ray Train workers take a while to come up (25 s was too short there).
    limit = 60
    params = _params(cfg, src, seed=4, **{"train.max_steps": 2000, "night.stage_limits": {"pretrain": limit}})
    night = _start(env, params)
    _wait_stage_running(cfg, night, "pretrain", ray_watch)
    # `nightshift status` with a tighter limit than the night's own sees it stuck already.
    time.sleep(3)
    shown = _status(cfg, env, "--night.stage_limit_s", "2")
    assert shown.returncode == 1, shown.stdout + shown.stderr
    line = next(x for x in shown.stdout.splitlines() if "STUCK" in x)
    assert "Running" in line and "in pretrain for" in line and "over its limit of 2s" in line
    assert "disk use:" in shown.stdout and "artifacts/model" in shown.stdout
    run = _wait_final(env, night, timeout=limit + 120)
    assert run.state.name == "Crashed"
    assert "stage 'pretrain' ran" in run.state.message and "night.stage_limits.pretrain" in run.state.message
    assert ray_watch.wait_free(1.5) == pytest.approx(1.5), "the stuck night's workers were released"
    from catalog.db import session_scope
    from catalog.models import Run

    with session_scope(cfg.tracking.catalog_url) as s:
        runs = s.query(Run).filter(Run.prefect_flow_run_id == night).all()
        pipeline = next(r for r in runs if r.parent_id is None)
        stages = {r.stage: r for r in runs if r.parent_id is not None}
        for row in (pipeline, stages["pretrain"]):
            assert row.status == "failed" and "night stuck" in (row.error or "")
        assert stages["ingest"].status == stages["tokenize"].status == "completed"
    after = _status(cfg, env)
    assert any("Crashed" in x and "night stuck" in x for x in after.stdout.splitlines()), after.stdout


def test_a_cancelled_night_ends_cancelled_and_frees_ray(
    env_cfg: tuple[Config, dict[str, str], Path], ray_watch: RayWatch
) -> None:
    cfg, env, src = env_cfg
    # It starts at all: the crashed night before it gave back the deployment's one concurrency slot.
    night = _start(env, _params(cfg, src, seed=5, **{"train.max_steps": 2000}))
    _wait_stage_running(cfg, night, "pretrain", ray_watch)
    done = _prefect(env, "flow-run", "cancel", night, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    run = _wait_final(env, night, timeout=180)
    assert run.state.name == "Cancelled", f"{run.state.name}: {run.state.message}"
    assert "Crashed" not in _states(env, night)
    assert ray_watch.wait_free(1.5) == pytest.approx(1.5), "the cancelled night's workers were released"
