"""The cluster deployment files: rendered from the config, valid for the tools that read them, committed.

No cluster and no network: the launcher YAML goes through the JSON schema inside the installed
``ray`` and Ray's own config validation, the RayService's Serve config through Ray Serve's schema
and a real build of the application, the Prefect template through the Prefect server's work-pool
validation, the RayJob's command through real shells.
"""

from __future__ import annotations

import ast
import copy
import inspect
import json
import shlex
import subprocess
from subprocess import list2cmdline

import jsonschema
import pytest
import yaml

from core.config import load_config
from nightshift.cli import main
from nightshift.manifests import DEFAULT_PRESET, REPO_ROOT, render, validate


@pytest.fixture(scope="module")
def files() -> dict[str, str]:
    return render.render_preset(DEFAULT_PRESET)


@pytest.fixture(scope="module")
def cfg():
    return load_config(DEFAULT_PRESET)


def _yaml(files: dict[str, str], rel: str) -> dict:
    return yaml.safe_load(files[rel])


def _containers(cluster_spec: dict) -> list[dict]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_committed_files_equal_a_fresh_render(files, monkeypatch):
    diffs = render.drift(files, REPO_ROOT)
    assert not diffs, (
        "the committed deployment files drifted from the config; run `nightshift infra render` and commit:\n"
        + "".join(diffs.values())[:4000]
    )
    # The render reads the cluster section, never this machine's environment.
    for var, value in {
        "MLFLOW_TRACKING_URI": "http://elsewhere:1",
        "NIGHTSHIFT_CATALOG_URL": "sqlite:////tmp/other.db",
        "NIGHTSHIFT_ARTIFACTS": "/tmp/other",
        "RAY_ADDRESS": "ray://other:10001",
        "NIGHTSHIFT_HOME": "/tmp/other-home",
    }.items():
        monkeypatch.setenv(var, value)
    assert render.render_preset(DEFAULT_PRESET) == files


def test_every_file_validates(files):
    assert validate.validate_files(files) == []


def test_launcher_validates_against_rays_schema_and_checks_the_image(files, cfg):
    doc = _yaml(files, render.LAUNCHER)
    jsonschema.validate(doc, validate.ray_launcher_schema())
    assert validate.check_launcher(doc) == []
    workers = doc["available_node_types"]["gpu-workers"]
    assert workers["resources"] == {"CPU": cfg.cluster.worker_cpus, "GPU": cfg.cluster.worker_gpus}
    assert (
        doc["docker"]["image"] == cfg.cluster.image and doc["max_workers"] == cfg.cluster.worker_max_replicas
    )
    # The setup command passes with the pinned Ray and stops, naming both versions, on another one.
    argv = shlex.split(doc["setup_commands"][0])
    assert argv[:2] == ["python", "-c"]

    def exit_code(code: str) -> object:
        with pytest.raises(SystemExit) as stop:
            exec(compile(code, "<setup_command>", "exec"), {})
        return stop.value.code

    assert exit_code(argv[2]) is False  # sys.exit(False): status 0
    other = argv[2].replace(json.dumps(cfg.cluster.resolved_ray_version()), '"1.0.0"')
    assert (
        exit_code(other)
        == f"the image has Ray {cfg.cluster.resolved_ray_version()}, cluster.ray_version is 1.0.0"
    )
    # A misspelt key is caught by Ray's schema, a dangling head type by Ray's validate_config.
    doc["available_node_types"]["gpu-workers"]["min_worker"] = 1
    assert "min_worker" in " ".join(validate.check_launcher(doc))
    del doc["available_node_types"]["gpu-workers"]["min_worker"]
    doc["head_node_type"] = "missing"
    assert "head_node_type" in " ".join(validate.check_launcher(doc))


def test_rayservice_serves_the_app_our_serve_config_file_describes(files, cfg, tmp_path, monkeypatch):
    from ray._common.utils import import_attr
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.schema import ServeDeploySchema

    from serving.app import deployment_options

    doc = _yaml(files, render.RAYSERVICE)
    serve_doc = yaml.safe_load(doc["spec"]["serveConfigV2"])
    app = ServeDeploySchema.model_validate(serve_doc).applications[0]
    built = call_user_app_builder_with_args_if_necessary(import_attr(app.import_path), app.args)
    assert built._bound_deployment.name == app.deployments[0].name == "NightshiftServer"
    assert app.args["model"] == f"models:/{cfg.serve.registered_model}@champion"
    assert (
        app.args["catalog_url"] == cfg.cluster.catalog_url
        and app.args["tracking_uri"] == cfg.cluster.mlflow_uri
    )
    # Replica settings are those build_app applies (autoscaling from serve.*).
    assert serve_doc["applications"][0]["deployments"][0] == {
        "name": "NightshiftServer",
        **json.loads(json.dumps(deployment_options(cfg.serve))),
    }
    # The rest is what `nightshift serve --write-config` writes for the same model and preset.
    monkeypatch.setenv("NIGHTSHIFT_HOME", str(tmp_path / "home"))
    out = tmp_path / "serve.yaml"
    model = app.args["model"]
    assert main(["serve", "--preset", DEFAULT_PRESET, "--model", model, "--write-config", str(out)]) == 0
    written = yaml.safe_load(out.read_text())
    ours, theirs = serve_doc["applications"][0], written["applications"][0]
    for key in ("name", "route_prefix", "import_path"):
        assert ours[key] == theirs[key]
    inside = {**theirs["args"]["serve"], "host": "0.0.0.0"}
    assert (
        ours["args"]["serve"] == inside
        and written["http_options"]["port"] == serve_doc["http_options"]["port"]
    )
    # The head exposes the Serve port KubeRay's serve Service targets.
    head = doc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"name": "serve", "containerPort": cfg.serve.port} in head["ports"]


def test_kuberay_manifests_have_the_required_fields(files, cfg):
    job, svc = _yaml(files, render.RAYJOB), _yaml(files, render.RAYSERVICE)
    assert (job["apiVersion"], job["kind"], job["metadata"]["name"]) == (
        "ray.io/v1",
        "RayJob",
        "nightshift-pretrain",
    )
    assert (svc["apiVersion"], svc["kind"], svc["metadata"]["name"]) == (
        "ray.io/v1",
        "RayService",
        "nightshift",
    )
    assert job["spec"]["entrypoint"] and svc["spec"]["serveConfigV2"]
    for spec in (job["spec"]["rayClusterSpec"], svc["spec"]["rayClusterConfig"]):
        assert (
            spec["rayVersion"] == cfg.cluster.resolved_ray_version()
            and spec["headGroupSpec"]
            and spec["workerGroupSpecs"]
        )
        for c in _containers(spec):
            assert c["image"] == cfg.cluster.image
            assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    worker = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert (
        worker["replicas"] == cfg.cluster.worker_replicas
        and not job["spec"]["rayClusterSpec"]["enableInTreeAutoscaling"]
    )
    assert worker["template"]["spec"]["nodeSelector"] == cfg.cluster.gpu_node_selector
    assert validate.check_rayjob(job) == [] and validate.check_rayservice(svc) == []
    # Kubernetes' own schema (kubernetes-validate, strict) catches a misspelt field and a wrong type
    # inside the pod templates; KubeRay's fields are checked by ours.
    c = _containers(job["spec"]["rayClusterSpec"])[1]
    c["resource"] = c.pop("resources")
    _containers(svc["spec"]["rayClusterConfig"])[0]["ports"][0]["containerPort"] = "eighty"
    svc["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParam"] = {}
    assert "'resource' was unexpected" in " ".join(validate.check_rayjob(job))
    assert "'rayStartParam' was unexpected" in " ".join(validate.check_rayservice(svc))
    del svc["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParam"]
    assert "'eighty' is not of type 'integer'" in " ".join(validate.check_rayservice(svc))


def test_every_pod_is_hardened_and_gets_only_its_secrets_as_files(files, cfg):
    from nightshift.manifests import pods

    svc = _yaml(files, render.RAYSERVICE)
    flow = json.loads(files[render.PREFECT_TEMPLATE])["job_configuration"]["job_manifest"]["spec"]["template"]
    head = svc["spec"]["rayClusterConfig"]["headGroupSpec"]
    worker = svc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]
    assert head["rayStartParams"]["dashboard-host"] == "$(POD_IP)"  # not every interface
    for role, template in (("head", head["template"]), ("worker", worker), ("flow", flow)):
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        (main,) = spec["containers"]
        assert main["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        }
        assert "envFrom" not in main  # no secret as variables
        (secret,) = [v for v in spec["volumes"] if "secret" in v]
        keys = {i["key"] for i in secret["secret"]["items"]}
        wanted = {k for k, (_, _, roles) in pods.SECRET_FILES.items() if role in roles}
        assert keys == wanted, role
        env = main["env"] if isinstance(main["env"], list) else None
        names = (
            {e["name"] for e in env}
            if env
            else set(json.loads(files[render.PREFECT_TEMPLATE])["variables"]["properties"]["env"]["default"])
        )
        assert ("PGPASSFILE" in names) == (role != "worker") and {
            "RAY_AUTH_MODE",
            "RAY_AUTH_TOKEN_PATH",
        } <= names
    # A pod that runs as root, or takes the secret as variables, fails the check.
    bad = copy.deepcopy(head["template"])
    bad["spec"]["securityContext"]["runAsNonRoot"] = False
    bad["spec"]["containers"][0]["envFrom"] = [{"secretRef": {"name": "nightshift-secrets"}}]
    problems = " ".join(validate.check_pod_template(bad, "head"))
    assert "runAsNonRoot must be true" in problems and "secrets go in as files" in problems


def test_the_network_policy_admits_only_the_serve_port_from_outside(files, cfg):
    policy = _yaml(files, render.NETWORK_POLICY)
    assert validate.check_network_policy(policy, cfg.serve.port) == []
    open_rules = [r for r in policy["spec"]["ingress"] if "from" not in r]
    assert open_rules == [{"ports": [{"protocol": "TCP", "port": cfg.serve.port}]}]
    policy["spec"]["ingress"].append({"ports": [{"protocol": "TCP", "port": 8265}]})
    assert "only Serve's" in " ".join(validate.check_network_policy(policy, cfg.serve.port))
    policy["spec"]["podSelectr"] = {}
    assert "'podSelectr' was unexpected" in " ".join(validate.check_network_policy(policy, cfg.serve.port))


def test_rayjob_entrypoint_survives_both_shells_and_runs_the_flow(files):
    from flows.pretrain import pretrain

    entrypoint = _yaml(files, render.RAYJOB)["spec"]["entrypoint"]

    def bash_words(command: str) -> list[str]:
        out = subprocess.run(["bash", "-c", f"printf '%s\\0' {command}"], capture_output=True, check=True)
        return out.stdout.decode().split("\0")[:-1]

    # KubeRay's submitter script parses it, `ray job submit` re-quotes it (list2cmdline) and Ray's
    # job supervisor hands that to a shell again: the flow must get the same argument vector.
    first = bash_words(entrypoint)
    assert bash_words(list2cmdline(first)) == first == shlex.split(entrypoint)
    params = json.loads(first[3])
    assert params == json.loads(files[render.LAUNCHER_PARAMS])  # the launcher's cluster runs the same
    assert set(inspect.signature(pretrain.fn).parameters) >= set(params)
    # The code imports that flow and calls it with exactly these parameters.
    tree = ast.parse(first[2])
    imports = [(n.module, [a.name for a in n.names]) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "pretrain"]
    assert imports == [("flows.pretrain", ["pretrain"])] and len(calls) == 1
    assert ast.unparse(calls[0]) == "pretrain(**json.loads(sys.argv[1]))"
    cfg = load_config(params["preset"], params["overrides"])
    assert cfg.ray.address == "auto" and cfg.serve.deploy_stage is False
    assert cfg.train.cpus_per_worker == cfg.cluster.worker_cpus // cfg.cluster.worker_gpus


def test_prefect_base_job_template_is_a_valid_kubernetes_work_pool(files, cfg):
    from prefect.utilities.templating import find_placeholders

    template = json.loads(files[render.PREFECT_TEMPLATE])
    variables = template["variables"]
    jsonschema.validators.validator_for(variables).check_schema(variables)
    used = {p.name for p in find_placeholders(json.dumps(template["job_configuration"]))}
    assert used and used <= set(variables["properties"])
    props = variables["properties"]
    assert props["image"]["default"] == cfg.cluster.image
    env = props["env"]["default"]
    assert (
        env["MLFLOW_TRACKING_URI"] == cfg.cluster.mlflow_uri
        and env["PREFECT_API_URL"] == cfg.cluster.prefect_api_url
    )
    assert (
        env["NIGHTSHIFT_CATALOG_URL"] == cfg.cluster.catalog_url
        and env["NIGHTSHIFT_REPO"] == cfg.cluster.repo_dir
    )
    assert env["RAY_ADDRESS"] == "ray://nightshift-head-svc.nightshift.svc.cluster.local:10001"
    assert validate.check_prefect_template(template) == []
    # Prefect's server refuses a placeholder that no variable declares.
    template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]["image"] = (
        "{{ img }}"
    )
    assert "undeclared variable(s): img" in " ".join(validate.check_prefect_template(template))
    # The deployment's parameters load as a config, pointing the flow at the RayService's cluster.
    params = json.loads(files[render.PREFECT_PARAMS])
    loaded = load_config(params["preset"], params["overrides"])
    assert (
        loaded.ray.address == env["RAY_ADDRESS"]
        and loaded.tracking.artifact_root == cfg.cluster.artifact_root
    )


def test_a_config_change_reaches_every_file():
    sets = {"cluster.worker_gpus": 4, "cluster.worker_replicas": 2, "cluster.image": "ghcr.io/acme/ns:7"}
    files = render.render_preset(DEFAULT_PRESET, {**sets, "serve.max_replicas": 3, "train.max_steps": 1000})
    launcher = _yaml(files, render.LAUNCHER)
    assert launcher["available_node_types"]["gpu-workers"]["resources"]["GPU"] == 4
    assert "--num-gpus=4" in launcher["worker_start_ray_commands"][1]
    job = _yaml(files, render.RAYJOB)
    worker = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert worker["replicas"] == 2 and worker["rayStartParams"]["num-gpus"] == "4"
    assert worker["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "4"
    params = json.loads(shlex.split(job["spec"]["entrypoint"])[3])
    # 8 CPUs shared by 4 GPU workers per pod; the user's own override travels with the run.
    assert (
        params["overrides"]["train.cpus_per_worker"] == 2 and params["overrides"]["train.max_steps"] == 1000
    )
    assert "cluster.worker_gpus" not in params["overrides"]
    serve = yaml.safe_load(_yaml(files, render.RAYSERVICE)["spec"]["serveConfigV2"])
    assert serve["applications"][0]["deployments"][0]["autoscaling_config"]["max_replicas"] == 3
    assert "image: ghcr.io/acme/ns:7" in files[render.RAYSERVICE]
    assert (
        "ghcr.io/acme/ns:7" in files[render.PREFECT_TEMPLATE]
        and "--set cluster.worker_gpus=4" in files[render.RAYJOB]
    )
    assert validate.validate_files(files) == []


def test_cluster_rules_name_the_keys_to_change(tmp_path):
    from core.config_base import ConfigError

    with pytest.raises(ConfigError) as exc:
        load_config(
            DEFAULT_PRESET,
            {
                "cluster.worker_replicas": 2,  # 2 pods x 1 GPU < 8 GPU workers
                "cluster.catalog_url": "postgresql+psycopg://u:secret@db/x",
                "cluster.ray_version": "2.9.0",
                "cluster.shared_volume_claim": None,
            },
        )
    text = str(exc.value)
    for key in (
        "cluster.worker_replicas",
        "cluster.catalog_url",
        "cluster.ray_version",
        "cluster.shared_volume_claim",
    ):
        assert key in text
    assert "fewer than train.num_workers 8" in text and "PGPASSWORD" in text
    # The CLI reports the same and writes nothing.
    assert main(["infra", "render", "--out", str(tmp_path), "--set", "cluster.worker_replicas=2"]) == 2
    assert main(["infra", "render", "--out", str(tmp_path), "--set", "worker_replicas"]) == 2
    assert not any(tmp_path.iterdir())
    outside = tmp_path / "mine.yaml"
    outside.write_text((REPO_ROOT / "configs" / "tiny.yaml").read_text())
    with pytest.raises(ValueError, match="outside the repository"):
        render.render_preset(outside)
    # A value the RayJob's two shells would expand is refused, naming the override.
    with pytest.raises(ValueError, match=r"--set data.text_field='\$HOME'"):
        render.render_preset(DEFAULT_PRESET, {"data.text_field": "$HOME"})


def test_dockerfile_installs_the_lock_and_the_package(files):
    text = files[render.DOCKERFILE]
    assert validate.check_dockerfile(text) == []
    order = [
        text.index(s) for s in ("COPY pyproject.toml uv.lock", "--require-hashes", "COPY --chown", "-e .")
    ]
    assert order == sorted(order)  # dependencies are a layer of their own, below the code
    ignored = files[render.DOCKERIGNORE].splitlines()
    assert {".venv", ".nightshift", ".git"} <= set(ignored)
    assert "--no-dev" in text and "--extra postgres --extra s3" in text  # no pytest, ruff, moto
    assert validate.check_dockerfile(text.replace("--require-hashes", "")) == [
        "Dockerfile: missing uv pip install --require-hashes"
    ]


def test_cli_render_then_check_finds_drift(tmp_path, capsys):
    assert main(["infra", "render", "--out", str(tmp_path)]) == 0
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        render.render_preset(DEFAULT_PRESET)
    )
    assert main(["infra", "check", "--out", str(tmp_path)]) == 0
    job = tmp_path / render.RAYJOB
    job.write_text(job.read_text().replace("replicas: 8", "replicas: 9"))
    capsys.readouterr()
    assert main(["infra", "check", "--out", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "-      replicas: 9\n" in captured.out and "+      replicas: 8\n" in captured.out
    assert render.RAYJOB in captured.err and "nightshift infra render" in captured.err
