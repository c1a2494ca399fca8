"""``nightshift evaluate | promote | serve | rollback | keys``: deciding and serving from the command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from catalog.redact import redact_url
from catalog.registry import RegistryError
from core.config import load_config
from serving.options import serve_app_args, serve_config_yaml


def _stack_config(args: argparse.Namespace, extra: Sequence[str]):
    """The config, pointed at the local stack's Ray head when no cluster address is given.

    A model served by an in-process Ray would vanish when this command exits, so a 'local'
    address is only accepted with the stack up, and then means the stack's head.
    """
    # Deferred: loads SQLAlchemy and the stack's services, which `nightshift --help` does without.
    from nightshift import stack

    cfg = load_config(args.preset, list(extra))
    if cfg.ray.address == "local":
        head = {s.name: s for s in stack.status(cfg)}.get("ray-head")
        if head is None or not head.healthy:
            raise SystemExit(
                "error: serving needs a lasting Ray: start the local stack with `nightshift up`, "
                "or give a cluster with --ray.address"
            )
        env = stack.stack_env(cfg)
        os.environ.update({k: v for k, v in env.items() if k.startswith(("RAY_", "MLFLOW_"))})
        cfg.ray.address = env["RAY_ADDRESS"]
    return cfg


def _who() -> str:
    return os.environ.get("USER") or os.environ.get("LOGNAME") or "cli"


def _print(res: Any) -> None:
    print(
        f"deployment {res.deployment_id}: {res.endpoint}/v1 serves model {res.model_sha256[:16]} "
        f"({res.seconds:.1f} s)"
    )


def cmd_serve(args: argparse.Namespace, extra: Sequence[str]) -> int:
    # Deferred: loads torch and Ray, which `nightshift --help` and the other commands do without.
    from release.promotion import redeploy
    from serving.deploy import DeployError, deploy_model

    if args.write_config:
        cfg = load_config(args.preset, list(extra))
        if not args.model:
            raise SystemExit("error: --write-config needs --model (an artifact directory or models:/ URI)")
        Path(args.write_config).write_text(serve_config_yaml(serve_app_args(cfg, args.model), cfg))
        print(f"wrote {args.write_config}; deploy it with `serve deploy {args.write_config}`")
        return 0
    cfg = _stack_config(args, extra)
    try:
        res = deploy_model(cfg, args.model, created_by=_who()) if args.model else redeploy(cfg, who=_who())
    except DeployError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    _print(res)
    return 0


def cmd_rollback(args: argparse.Namespace, extra: Sequence[str]) -> int:
    # Deferred: loads torch and Ray, which `nightshift --help` and the other commands do without.
    from release.promotion import rollback
    from serving.deploy import DeployError

    cfg = _stack_config(args, extra)
    try:
        res = rollback(cfg, who=_who(), reason=args.reason)
    except DeployError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    _print(res)
    return 0


def cmd_promote(args: argparse.Namespace, extra: Sequence[str]) -> int:
    # Deferred: loads torch and Ray, which `nightshift --help` and the other commands do without.
    from release.promotion import promote
    from serving.deploy import DeployError

    cfg = _stack_config(args, extra)
    try:
        res = promote(cfg, args.version, who=_who(), reason=args.reason)
    except (DeployError, RegistryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    _print(res)
    return 0


def cmd_keys(args: argparse.Namespace, extra: Sequence[str]) -> int:
    """``nightshift keys create --name N [--role R] | list | revoke NAME``: named keys in the catalog."""
    # Deferred: loads SQLAlchemy and the stack's services, which `nightshift --help` does without.
    from catalog.keys import KeyProblem, create_key, list_keys, revoke_key

    cfg = load_config(args.preset, list(extra))
    url = cfg.tracking.catalog_url
    try:
        if args.action == "create":
            if not args.name:
                raise KeyProblem("keys create needs --name NAME (the labeller name of the key's feedback)")
            key, info = create_key(url, args.name, args.role)
            print(key)
            print(
                f"({info.role} key {info.name!r}, id {info.id}: shown once; only its sha256 is stored, "
                f"in the catalog {redact_url(url)})",
                file=sys.stderr,
            )
        elif args.action == "list":
            for k in list_keys(url):
                state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
                print(f"{k.id}  {k.name:<24} {k.role:<9} created {k.created_at:%Y-%m-%d %H:%M}  {state}")
        else:
            if not args.name:
                raise KeyProblem("keys revoke needs the key's name or id")
            info = revoke_key(url, args.name)
            print(f"revoked {info.name!r} ({info.id}); replicas refuse it within serve.key_cache_s seconds")
    except KeyProblem as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def register(verb: Callable[..., argparse.ArgumentParser]) -> None:
    p = verb("serve", cmd_serve, "serve a model on Ray Serve (default: redeploy the active deployment)")
    p.add_argument(
        "--model", help="a model artifact directory or a models:/ URI (e.g. models:/nightshift-gpt@champion)"
    )
    p.add_argument(
        "--write-config", metavar="PATH", help="write a Serve config file for `serve deploy` instead"
    )
    p = verb("rollback", cmd_rollback, "move champion back to the previous one and serve it")
    p.add_argument("--reason", default="", help="recorded on the registry version")
    p = verb("promote", cmd_promote, "make a registry version the champion and serve it")
    p.add_argument("--version", required=True, help="the registry version of nightshift-gpt")
    p.add_argument("--reason", default="", help="recorded on the registry version")
    p = verb(
        "keys",
        cmd_keys,
        "API keys of the served model, in the catalog: create (printed once; only its sha256 is stored), "
        "list, revoke (refused by every replica within serve.key_cache_s, no restart)",
    )
    p.add_argument("action", choices=["create", "list", "revoke"])
    p.add_argument("name", nargs="?", help="revoke: the key's name or id")
    p.add_argument("--name", dest="name", help="create: the key's name (the labeller of its feedback)")
    p.add_argument(
        "--role",
        default="client",
        choices=["client", "labeller", "admin"],
        help="client: feedback only on completions it received (default); labeller, admin: on any",
    )
