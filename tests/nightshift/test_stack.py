"""The local stack against real processes: Prefect server + worker, MLflow, Ray head.

Every service gets a free port and all state lives in tmp dirs (``NIGHTSHIFT_HOME``, ``PREFECT_HOME``),
so these tests never touch a stack or a Prefect profile a developer runs on the default ports.
One stack is brought up per module and shared by the tests, in order.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.config import Config, load_config
from nightshift import stack
from nightshift.services import (
    free_port_overrides,
    free_ports,
    process_start_time,
    read_state,
    state_path,
    stop,
)

pytestmark = [pytest.mark.stack, pytest.mark.slow]

SERVICES = ["prefect-server", "mlflow", "ray-head", "prefect-worker", "dashboard"]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Config]:
    home = tmp_path_factory.mktemp("nightshift_home")
    prefect_home = tmp_path_factory.mktemp("prefect_home")
    overrides: dict[str, object] = {**free_port_overrides()}
    overrides.update({"stack.ray_num_cpus": 1, "stack.ray_object_store_bytes": 100_000_000})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NIGHTSHIFT_HOME", str(home))
        # The profile `up` activates goes to this tmp PREFECT_HOME, never the developer's ~/.prefect.
        mp.setenv("PREFECT_HOME", str(prefect_home))
        config = load_config("tiny", overrides)
        yield config
        stack.down(config)


@pytest.fixture(scope="module")
def started(cfg: Config) -> dict[str, object]:
    t0 = time.monotonic()
    services = stack.up(cfg, deploy=True)
    return {"services": services, "seconds": time.monotonic() - t0}


def test_up_brings_every_service_up_healthy(cfg: Config, started: dict[str, object]) -> None:
    services = started["services"]
    assert [s.name for s in services] == SERVICES
    for s in services:
        assert s.running and s.healthy, f"{s.name}: {s.detail}"
        assert s.pid is not None and process_start_time(s.pid) is not None
        assert s.log.is_file()
    env_file = Path(os.environ["NIGHTSHIFT_HOME"]) / "env"
    assert f"export PREFECT_API_URL=http://127.0.0.1:{cfg.stack.prefect_port}/api" in env_file.read_text()


def test_second_up_keeps_the_same_processes(cfg: Config, started: dict[str, object]) -> None:
    before = {s.name: s.pid for s in started["services"]}
    t0 = time.monotonic()
    again = stack.up(cfg, deploy=False)
    assert {s.name: s.pid for s in again} == before
    assert time.monotonic() - t0 < 15


def test_status_reports_urls(cfg: Config, started: dict[str, object]) -> None:
    by_name = {s.name: s for s in stack.status(cfg)}
    assert all(s.healthy for s in by_name.values())
    assert by_name["prefect-server"].url == f"http://127.0.0.1:{cfg.stack.prefect_port}"
    assert by_name["mlflow"].url == f"http://127.0.0.1:{cfg.stack.mlflow_port}"
    assert by_name["ray-head"].url == f"http://127.0.0.1:{cfg.stack.ray_dashboard_port}"
    env = stack.stack_env(cfg)
    assert env["RAY_ADDRESS"] == f"127.0.0.1:{cfg.stack.ray_port}"
    assert env["MLFLOW_TRACKING_URI"] == by_name["mlflow"].url


def test_deployments_exist_on_our_server(cfg: Config, started: dict[str, object]) -> None:
    # A fresh interpreter, so the Prefect client reads PREFECT_API_URL rather than settings cached here.
    code = """
import asyncio, json
from prefect.client.orchestration import get_client
async def main():
    async with get_client() as c:
        out = {}
        names = ["pretrain/nightly", "ingest/adhoc", "deploy/promote", "deploy/rollback"]
        for name in names + ["deploy/redeploy"]:
            d = await c.read_deployment_by_name(name)
            limit = d.global_concurrency_limit.limit if d.global_concurrency_limit else d.concurrency_limit
            out[name] = {
                "crons": [s.schedule.cron for s in d.schedules],
                "tz": [s.schedule.timezone for s in d.schedules],
                "limit": limit, "pool": d.work_pool_name, "params": d.parameters, "pull": d.pull_steps,
            }
        print(json.dumps(out))
asyncio.run(main())
"""
    env = {**os.environ, **stack.stack_env(cfg)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    nightly, adhoc = found["pretrain/nightly"], found["ingest/adhoc"]
    assert nightly["crons"] == ["0 2 * * *"] and nightly["tz"] == ["UTC"]
    assert nightly["limit"] == 1
    assert nightly["params"] == {"preset": "small"}
    assert nightly["pool"] == adhoc["pool"] == cfg.stack.work_pool
    # Resolved at run time from the worker's environment, so no checkout path is baked in.
    assert "{{ $NIGHTSHIFT_REPO }}" in json.dumps(nightly["pull"])
    assert adhoc["crons"] == []


def test_the_profile_points_prefect_at_our_server(cfg: Config, started: dict[str, object]) -> None:
    profiles = (Path(os.environ["PREFECT_HOME"]) / "profiles.toml").read_text()
    assert 'active = "nightshift"' in profiles
    assert f"http://127.0.0.1:{cfg.stack.prefect_port}/api" in profiles


def test_nightly_deployment_runs_to_completed(
    cfg: Config, started: dict[str, object], tmp_path: Path
) -> None:
    """`prefect deployment run pretrain/nightly --watch`, as a user types it, through our worker."""
    from mlflow.tracking import MlflowClient

    from catalog.db import session_scope
    from catalog.models import Artifact, Deployment, Run
    from tests.flows.conftest import write_corpus

    src = write_corpus(tmp_path / "src", n_docs=30)
    params = {
        "preset": "tiny",
        "overrides": {"data.sources": [str(src)], "ray.num_cpus": 1, "serve.port": cfg.serve.port},
    }
    env = {**os.environ, **stack.stack_env(cfg)}
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("prefect")),
            "deployment",
            "run",
            "pretrain/nightly",
            "--params",
            json.dumps(params),
            "--watch",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Completed" in done.stdout

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("nightshift")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("nightshift.prefect_flow_run_id"))
    children = {r.data.tags["nightshift.stage"] for r in runs if r.data.tags.get("mlflow.parentRunId")}
    assert {"ingest", "tokenize", "pretrain"} <= children
    with session_scope(cfg.tracking.catalog_url) as s:
        assert {"source", "corpus", "tokenizer", "tokens", "model"} <= {a.kind for a in s.query(Artifact)}
        run = s.query(Run).filter_by(mlflow_run_id=parent.info.run_id).one()
        assert run.status == "completed"
        assert run.prefect_flow_run_id == parent.data.tags["nightshift.prefect_flow_run_id"]
        model_sha = s.query(Artifact).filter_by(kind="model").one().sha256
        deployment = s.query(Deployment).filter_by(status="active").one()
        assert deployment.endpoint == f"http://127.0.0.1:{cfg.serve.port}"
    assert "deploy" in children
    # The deploy stage left the model on the stack's Ray Serve: the official client, configured only
    # by the env file of `nightshift up` (OPENAI_BASE_URL, OPENAI_API_KEY), gets an answer from it.
    import openai

    client = openai.OpenAI(base_url=env["OPENAI_BASE_URL"], api_key=env["OPENAI_API_KEY"], max_retries=0)
    raw = client.completions.with_raw_response.create(model="nightshift-gpt", prompt="the", max_tokens=5)
    assert raw.headers["x-nightshift-model"] == f"model:{model_sha}"
    assert raw.parse().usage.completion_tokens >= 1


def _samples(text: str, name: str, **want: str) -> list[tuple[dict[str, str], float]]:
    """The samples of metric ``name`` in Prometheus text whose labels include ``want``."""
    import re

    out = []
    for m in re.finditer(rf"^{name}{{([^}}]*)}} (\S+)$", text, flags=re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if all(labels.get(k) == v for k, v in want.items()):
            out.append((labels, float(m.group(2))))
    return out


def test_two_replicas_are_two_series_on_rays_metrics_port(cfg: Config, started: dict[str, object]) -> None:
    """Serving metrics go through ray.serve.metrics: one scrape of Ray's metrics port (not of the API,
    which reaches one replica) has each replica as its own series, and every request counted once."""
    import concurrent.futures as cf
    from operator import attrgetter

    import httpx

    from catalog.db import session_scope
    from catalog.models import Artifact

    with session_scope(cfg.tracking.catalog_url) as s:
        model = s.query(Artifact).filter_by(kind="model").order_by(Artifact.id.desc()).first().uri
    ports = [f"stack.{k}" for k in type(cfg.stack).model_fields if k.endswith("_port")] + ["serve.port"]
    overrides = [t for k in ports for t in (f"--{k}", str(attrgetter(k)(cfg)))]
    twin = ["--serve.app_name", "twin", "--serve.route_prefix", "/twin", "--serve.engine_process", "false"]
    twin += ["--serve.min_replicas", "2", "--serve.max_replicas", "2", "--serve.replica_cpus", "0.2"]
    env = {**os.environ, **stack.stack_env(cfg)}
    done = subprocess.run(
        [str(Path(sys.executable).with_name("nightshift")), "serve", "--model", model, *overrides, *twin],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    base = f"http://127.0.0.1:{cfg.serve.port}/twin/v1/completions"
    body = {"model": "nightshift-gpt", "prompt": "the", "max_tokens": 3}
    h = {"Authorization": f"Bearer {env['OPENAI_API_KEY']}"}
    with cf.ThreadPoolExecutor(4) as pool:
        codes = list(
            pool.map(lambda _: httpx.post(base, json=body, headers=h, timeout=60).status_code, range(12))
        )
    assert codes == [200] * 12
    # Ray reports every few seconds; one scrape of its port must come to sum 12 over the 2 replicas.
    url = f"http://127.0.0.1:{cfg.stack.ray_metrics_port}/metrics"
    deadline = time.monotonic() + 90
    while True:
        text = httpx.get(url, timeout=10).text
        counts = _samples(text, "ray_nightshift_requests_total", application="twin", route="completions")
        memory = _samples(text, "ray_nightshift_process_resident_memory_bytes", application="twin")
        if sum(v for _, v in counts) >= 12 and len(memory) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert sum(v for _, v in counts) == 12, counts
    replicas = {labels["replica"] for labels, _ in memory}
    assert len(replicas) == 2 and all(v > 1e7 for _, v in memory), memory
    assert {labels["replica"] for labels, _ in counts} <= replicas
    assert all(labels["status"] == "200" and labels["deployment"] for labels, _ in counts)


def test_port_held_by_a_foreign_socket_is_a_clear_error(cfg: Config, tmp_path: Path) -> None:
    (port,) = free_ports(1)
    foreign = socket.socket()
    foreign.bind(("127.0.0.1", port))
    foreign.listen()
    other = cfg.model_copy(deep=True)
    other.stack.mlflow_port = port
    saved = os.environ["NIGHTSHIFT_HOME"]
    os.environ["NIGHTSHIFT_HOME"] = str(tmp_path / "other")  # a second stack with nothing running
    try:
        with pytest.raises(stack.StackError, match=rf"port {port} .*--stack\.mlflow_port"):
            stack.up(other, deploy=False)
        # The check runs before anything is launched, so nothing was left half-started.
        assert not any(s.running for s in stack.status(other))
    finally:
        os.environ["NIGHTSHIFT_HOME"] = saved
        foreign.close()


def test_stale_pid_file_is_restarted(cfg: Config, started: dict[str, object]) -> None:
    home = Path(os.environ["NIGHTSHIFT_HOME"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    stop(home, "mlflow")  # so the next `up` must start mlflow again, from a stale pid file
    state_path(home, "mlflow").write_text(json.dumps({"pid": dead.pid, "start_time": "1"}))
    services = {s.name: s for s in stack.up(cfg, deploy=False)}
    assert services["mlflow"].healthy and services["mlflow"].pid != dead.pid
    assert read_state(home, "mlflow")["pid"] == services["mlflow"].pid


def test_down_stops_exactly_our_processes(cfg: Config, started: dict[str, object]) -> None:
    home = Path(os.environ["NIGHTSHIFT_HOME"])
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        ours = [s.pid for s in stack.status(cfg) if s.pid]
        assert len(ours) == len(SERVICES)
        after = stack.down(cfg)
        assert not any(s.running for s in after)
        for pid in ours:
            assert process_start_time(pid) is None
            with pytest.raises(ProcessLookupError):
                os.killpg(pid, 0)  # the whole group (Ray's GCS, raylet, workers) is gone
        assert bystander.poll() is None, "down must not touch processes it did not start"
        assert not list((home / "stack").glob("*.json"))
        assert 'active = "nightshift"' not in (Path(os.environ["PREFECT_HOME"]) / "profiles.toml").read_text()
        # A recorded pid that now belongs to another process (start time differs) is never signalled.
        state_path(home, "mlflow").write_text(json.dumps({"pid": bystander.pid, "start_time": "1"}))
        assert stack.down(cfg) == after
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
