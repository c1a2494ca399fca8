"""Offline validation of the rendered files, each by the schema of the tool that will read it.

- launcher YAML: the JSON schema inside the installed ``ray`` (``ray/autoscaler/ray-schema.json``),
  then Ray's own ``prepare_config`` + ``validate_config`` (what ``ray up`` runs before launching);
- RayService ``serveConfigV2``: Ray Serve's ``ServeDeploySchema`` (plus no keys it would ignore),
  and the import path imported and its builder called with the args, as Serve does, without
  starting Serve; every configured deployment must exist in the built application;
- RayJob / RayService: KubeRay's fields (:mod:`nightshift.manifests.kube_schema`) and cross-field
  rules; every pod template inside them by the real Kubernetes schema (``kubernetes-validate``,
  strict: unknown fields are errors), and the hardening every pod must have (non-root, no privilege
  escalation, no capabilities, seccomp ``RuntimeDefault``, secrets only as files, the Ray dashboard
  off ``0.0.0.0``);
- NetworkPolicy: the Kubernetes schema, and only the Serve port open to every source;
- Prefect base job template: Prefect's server-side work-pool validation, a JSON-schema check of
  ``variables``, the defaults against it, and the job it renders against the structure Prefect's
  Kubernetes worker requires;
- run parameters: ``load_config`` accepts them; the Dockerfile: installs the lock and the package.

Each ``check_*`` returns a list of problems (empty when valid), so one run reports all of them.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from core.cluster_config import installed_ray_version
from core.config import load_config
from core.config_base import ConfigError
from nightshift.manifests import REPO_ROOT, kube_schema, render

# Ray and Prefect are imported inside the functions that use them, not here: each takes a second
# or more to import, and not every user of this module needs them.


def _schema_errors(doc: Any, schema: dict[str, Any], what: str) -> list[str]:
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [
        f"{what}: {'/'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]


def ray_launcher_schema() -> dict[str, Any]:
    """The cluster-config JSON schema that ships inside the installed ``ray`` package."""
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def check_launcher(doc: dict[str, Any]) -> list[str]:
    """The launcher config against Ray's schema, then through Ray's own fill-out and validation."""
    problems = _schema_errors(doc, ray_launcher_schema(), "ray-cluster.yaml")
    if problems:
        return problems
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        validate_config(prepare_config(copy.deepcopy(doc)))
    except (ValueError, RuntimeError, jsonschema.ValidationError) as e:
        problems.append(f"ray-cluster.yaml: Ray's validate_config: {e}")
    return problems


def _unknown_keys(doc: Mapping[str, Any], model: Any, where: str) -> list[str]:
    # Serve's schemas accept unknown keys (for forward compatibility) and ignore them; here an
    # ignored key is a mistake.
    return [f"{where}: unknown key {k!r} (Serve would ignore it)" for k in doc if k not in model.model_fields]


def check_serve_config(doc: dict[str, Any]) -> list[str]:
    """``serveConfigV2`` by Ray Serve's schema; each application really imported and built."""
    from ray._common.utils import import_attr
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.schema import DeploymentSchema, ServeApplicationSchema, ServeDeploySchema

    try:
        schema = ServeDeploySchema.model_validate(doc)
    except Exception as e:  # pydantic's ValidationError, from Ray's pydantic shim
        return [f"serveConfigV2: not a Serve config: {e}"]
    problems = _unknown_keys(doc, ServeDeploySchema, "serveConfigV2")
    for i, app_doc in enumerate(doc.get("applications", [])):
        where = f"serveConfigV2 applications[{i}]"
        problems += _unknown_keys(app_doc, ServeApplicationSchema, where)
        for j, dep in enumerate(app_doc.get("deployments", [])):
            problems += _unknown_keys(dep, DeploymentSchema, f"{where} deployments[{j}]")
        app = schema.applications[i]
        try:
            built = call_user_app_builder_with_args_if_necessary(import_attr(app.import_path), app.args or {})
        except Exception as e:
            problems.append(f"{where}: {app.import_path} with its args does not build: {e!r}")
            continue
        names = {built._bound_deployment.name}
        for dep in app.deployments:
            if dep.name not in names:
                problems.append(f"{where}: deployment {dep.name!r} is not in the application (has {names})")
    return problems


# The Kubernetes version whose schemas the rendered objects are checked against (kubernetes-validate
# ships one per minor release).
KUBERNETES_VERSION = "1.32"


def check_kubernetes(doc: dict[str, Any], what: str) -> list[str]:
    """A Kubernetes object against the API's own schema (strict: an unknown field is an error)."""
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{what}: {'/'.join(str(p) for p in e.path) or '(top)'}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [f"{what}: {e.message}"]
    return []


def check_pod_template(template: dict[str, Any], what: str) -> list[str]:
    """A pod template by the Kubernetes schema (as a core/v1 PodTemplate), then the hardening rules."""
    doc = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"}, "template": template}
    return check_kubernetes(doc, what) + _hardening_problems(template, what)


def _hardening_problems(template: dict[str, Any], where: str) -> list[str]:
    spec = template.get("spec", {})
    pod = spec.get("securityContext", {})
    out = []
    if pod.get("runAsNonRoot") is not True:
        out.append(f"{where}: securityContext.runAsNonRoot must be true")
    if (pod.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        out.append(f"{where}: securityContext.seccompProfile.type must be RuntimeDefault")
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{where}: container {c.get('name')}: allowPrivilegeEscalation must be false")
        if "ALL" not in (sc.get("capabilities") or {}).get("drop", []):
            out.append(f"{where}: container {c.get('name')}: capabilities must drop ALL")
        if any("secretRef" in e for e in c.get("envFrom", [])) or any(
            "secretKeyRef" in (e.get("valueFrom") or {}) for e in c.get("env", []) if isinstance(e, dict)
        ):
            out.append(f"{where}: container {c.get('name')}: secrets go in as files, not variables")
    return out


def check_network_policy(doc: dict[str, Any], serve_port: int) -> list[str]:
    """The Kubernetes schema, and: the only rule open to every source admits the Serve port alone."""
    out = check_kubernetes(doc, "NetworkPolicy")
    if out:
        return out
    spec = doc["spec"]
    if "Ingress" not in spec.get("policyTypes", []):
        out.append("NetworkPolicy: policyTypes must include Ingress")
    for i, rule in enumerate(spec.get("ingress", [])):
        ports = [p.get("port") for p in rule.get("ports", [])]
        if not rule.get("from") and ports != [serve_port]:
            opened = ports or "all ports"
            out.append(
                f"NetworkPolicy ingress[{i}]: every source may reach {opened}; only Serve's {serve_port} may"
            )
    return out


def _pod_problems(template: dict[str, Any], where: str) -> list[str]:
    spec = template.get("spec", {})
    declared = {v["name"] for v in spec.get("volumes", [])}
    out = []
    for c in spec.get("containers", []):
        for m in c.get("volumeMounts", []):
            if m["name"] not in declared:
                out.append(f"{where}: container {c['name']} mounts undeclared volume {m['name']!r}")
        res = c.get("resources", {})
        for key, amount in res.get("requests", {}).items():
            # Extended resources (GPUs) cannot be overcommitted: request and limit must agree.
            if "/" in key and res.get("limits", {}).get(key) != amount:
                out.append(f"{where}: container {c['name']}: {key} request {amount} needs an equal limit")
    return out


def check_ray_cluster(spec: dict[str, Any], where: str) -> list[str]:
    """KubeRay's rules beyond the schema: Ray version, head ports, replica bounds, pod consistency."""
    out = []
    if spec.get("rayVersion") != installed_ray_version():
        out.append(
            f"{where}: rayVersion {spec.get('rayVersion')} is not the installed Ray {installed_ray_version()}"
        )
    head = spec["headGroupSpec"]["template"]
    ports = {p.get("name") for p in head["spec"]["containers"][0].get("ports", [])}
    for needed in ("gcs-server", "dashboard", "client"):
        if needed not in ports:
            out.append(f"{where}: the head container has no port named {needed!r}")
    if spec["headGroupSpec"]["rayStartParams"].get("dashboard-host", "0.0.0.0") in ("0.0.0.0", "::"):
        out.append(
            f"{where}: the Ray dashboard listens on every interface; set rayStartParams dashboard-host"
        )
    out += check_pod_template(head, f"{where} head")
    out += _pod_problems(head, f"{where} head")
    for g in spec.get("workerGroupSpecs", []):
        lo, n, hi = g.get("minReplicas", 0), g.get("replicas", 0), g.get("maxReplicas", 2**31)
        if not lo <= n <= hi:
            out.append(f"{where} {g['groupName']}: replicas {n} outside [minReplicas {lo}, maxReplicas {hi}]")
        out += check_pod_template(g["template"], f"{where} {g['groupName']}")
        out += _pod_problems(g["template"], f"{where} {g['groupName']}")
    return out


def check_rayjob(doc: dict[str, Any]) -> list[str]:
    out = _schema_errors(doc, kube_schema.RAYJOB, "RayJob")
    if not out:
        out += check_ray_cluster(doc["spec"]["rayClusterSpec"], "RayJob rayClusterSpec")
        out += check_entrypoint(doc["spec"]["entrypoint"])
    return out


def check_rayservice(doc: dict[str, Any]) -> list[str]:
    out = _schema_errors(doc, kube_schema.RAYSERVICE, "RayService")
    if out:
        return out
    spec = doc["spec"]
    out += check_ray_cluster(spec["rayClusterConfig"], "RayService rayClusterConfig")
    try:
        serve = yaml.safe_load(spec["serveConfigV2"])
    except yaml.YAMLError as e:
        return [*out, f"RayService serveConfigV2: not YAML: {e}"]
    out += check_serve_config(serve)
    head = spec["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    serve_port = {p.get("name"): p["containerPort"] for p in head.get("ports", [])}.get("serve")
    http_port = (serve.get("http_options") or {}).get("port", 8000)
    if serve_port != http_port:
        out.append(f"RayService: head port 'serve' is {serve_port}, the Serve proxy listens on {http_port}")
    return out


def check_entrypoint(entrypoint: str) -> list[str]:
    """The RayJob's command: ``python -c <code> <params JSON>`` whose code compiles and params load."""
    try:
        argv = shlex.split(entrypoint)
    except ValueError as e:
        return [f"RayJob entrypoint: not a shell command: {e}"]
    if len(argv) != 4 or argv[:2] != ["python", "-c"]:
        return [f"RayJob entrypoint: expected python -c CODE PARAMS, got {argv[:3]}"]
    try:
        compile(argv[2], "<entrypoint>", "exec")
        params = json.loads(argv[3])
    except (SyntaxError, json.JSONDecodeError) as e:
        return [f"RayJob entrypoint: {e}"]
    return check_params(params, "RayJob entrypoint")


def _local_preset(preset: str) -> str | Path:
    """A preset as named inside the image, resolved in this checkout (``/app/configs/x.yaml`` -> here)."""
    p = Path(preset)
    if not p.is_absolute():
        return preset
    for i in range(1, len(p.parts)):
        here = REPO_ROOT.joinpath(*p.parts[i:])
        if here.is_file():
            return here
    return p


def check_params(params: dict[str, Any], where: str) -> list[str]:
    """Run parameters of the pretrain flow: exactly preset + overrides, and a config that loads."""
    if set(params) != {"preset", "overrides"}:
        return [f"{where}: parameters must be preset and overrides, got {sorted(params)}"]
    try:
        load_config(_local_preset(params["preset"]), params["overrides"])
    except ConfigError as e:
        return [f"{where}: {e}"]
    return []


# What Prefect's Kubernetes worker requires of a job manifest (its base manifest): these paths with
# these values, else the worker refuses the flow run.
PREFECT_REQUIRED = {
    ("apiVersion",): "batch/v1",
    ("kind",): "Job",
    ("spec", "template", "spec", "parallelism"): 1,
    ("spec", "template", "spec", "completions"): 1,
    ("spec", "template", "spec", "restartPolicy"): "Never",
    ("spec", "template", "spec", "containers", 0, "name"): "prefect-job",
}


def _get(doc: Any, path: tuple) -> Any:
    for part in path:
        try:
            doc = doc[part]
        except (KeyError, IndexError, TypeError):
            return None
    return doc


def check_prefect_template(template: dict[str, Any]) -> list[str]:
    """The base job template as the Prefect server and its Kubernetes worker will see it."""
    from prefect._internal.schemas.validators import validate_values_conform_to_schema
    from prefect.server.schemas.actions import WorkPoolCreate
    from prefect.utilities.templating import apply_values, find_placeholders

    out = []
    try:
        WorkPoolCreate(name="check", type="kubernetes", base_job_template=template)
    except Exception as e:  # pydantic ValidationError with Prefect's message
        return [f"prefect template: Prefect refuses it: {e}"]
    variables = template["variables"]
    try:
        jsonschema.validators.validator_for(variables).check_schema(variables)
    except jsonschema.SchemaError as e:
        return [f"prefect template: variables is not a JSON schema: {e.message}"]
    defaults = {k: v["default"] for k, v in variables.get("properties", {}).items() if "default" in v}
    try:
        validate_values_conform_to_schema(defaults, variables, ignore_required=True)
    except ValueError as e:
        out.append(f"prefect template: a default does not fit its variable: {e}")
    job = apply_values(template["job_configuration"], defaults)
    left = find_placeholders(json.dumps(job))
    manifest = job.get("job_manifest", {})
    for path, value in PREFECT_REQUIRED.items():
        if _get(manifest, path) != value:
            out.append(f"prefect template: job_manifest {'/'.join(map(str, path))} must be {value!r}")
    pod = copy.deepcopy(_get(manifest, ("spec", "template")) or {})
    # parallelism and completions sit in the pod spec only because Prefect's worker asks for them there.
    for key in ("parallelism", "completions"):
        pod.get("spec", {}).pop(key, None)
    container = _get(pod, ("spec", "containers", 0)) or {}
    if isinstance(container.get("env"), dict):  # the worker turns the env mapping into a list
        container["env"] = [{"name": k, "value": v} for k, v in container["env"].items()]
    unresolved = {p.name for p in left} - {"name", "labels", "command", "job_watch_timeout_seconds"}
    if unresolved:
        out.append(f"prefect template: placeholders without defaults: {sorted(unresolved)}")
    out += check_pod_template(pod, "prefect template pod")
    out += _pod_problems(pod, "prefect template pod")
    return out


# `pip install [--options] [-e] .`: the repository itself, not a requirement file or index.
_PACKAGE_INSTALL = r"pip install (?:--\S+ )*(?:-e )?\.(?:\s|$)"


def check_dockerfile(text: str) -> list[str]:
    """Read as text (no Docker engine here): base image, the lock, torch's index, the package."""
    lines = [
        ln.strip() for ln in text.replace("\\\n", " ").splitlines() if ln.strip() and not ln.startswith("#")
    ]
    runs = [ln for ln in lines if ln.startswith("RUN ")]
    checks = {
        "FROM python:3.11-slim": any(re.fullmatch(r"FROM python:3\.11-slim", ln) for ln in lines),
        "COPY uv.lock": any(re.match(r"COPY .*\buv\.lock", ln) for ln in lines),
        "uv export --frozen --no-dev": any(re.search(r"uv export --frozen --no-dev\b", r) for r in runs),
        "uv pip install --require-hashes": any(
            re.search(r"uv pip install .*--require-hashes", r) for r in runs
        ),
        "pip install of the package (-e .)": any(re.search(_PACKAGE_INSTALL, r) for r in runs),
        "ARG TORCH_INDEX_URL": any(ln.startswith("ARG TORCH_INDEX_URL=") for ln in lines),
        "torch from $TORCH_INDEX_URL": any("--index-url" in r and "$TORCH_INDEX_URL" in r for r in runs),
    }
    return [f"Dockerfile: missing {what}" for what, ok in checks.items() if not ok]


def validate_files(files: Mapping[str, str]) -> list[str]:
    """Every check on a :func:`render.render` result; an empty list when all files are valid."""
    doc = {rel: text for rel, text in files.items()}
    out = check_launcher(yaml.safe_load(doc[render.LAUNCHER]))
    out += check_rayjob(yaml.safe_load(doc[render.RAYJOB]))
    out += check_rayservice(yaml.safe_load(doc[render.RAYSERVICE]))
    serve = yaml.safe_load(yaml.safe_load(doc[render.RAYSERVICE])["spec"]["serveConfigV2"])
    serve_port = (serve.get("http_options") or {}).get("port", 8000)
    out += check_network_policy(yaml.safe_load(doc[render.NETWORK_POLICY]), serve_port)
    out += check_prefect_template(json.loads(doc[render.PREFECT_TEMPLATE]))
    out += check_params(json.loads(doc[render.PREFECT_PARAMS]), "pretrain-params.json (k8s)")
    out += check_params(json.loads(doc[render.LAUNCHER_PARAMS]), "pretrain-params.json (launcher)")
    out += check_dockerfile(doc[render.DOCKERFILE])
    images = {
        yaml.safe_load(doc[render.LAUNCHER])["docker"]["image"],
        json.loads(doc[render.PREFECT_TEMPLATE])["variables"]["properties"]["image"]["default"],
    }
    for rel in (render.RAYJOB, render.RAYSERVICE):
        images |= set(re.findall(r"^\s*image: (\S+)$", doc[rel], flags=re.M))
    if len(images) != 1:
        out.append(f"images: the files name different images {sorted(images)}; they must run one image")
    return out
