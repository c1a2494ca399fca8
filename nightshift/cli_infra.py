"""``nightshift infra render | check``: the cluster deployment files, rendered from the config."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from core.config import parse_cli_overrides, parse_value
from core.config_base import ConfigError
from nightshift.manifests import DEFAULT_PRESET, REPO_ROOT
from nightshift.manifests.render import drift, render_preset, write_files
from nightshift.manifests.validate import validate_files


def _overrides(args: argparse.Namespace, extra: Sequence[str]) -> dict[str, Any]:
    """``--set key=value`` pairs and ``--section.key VALUE`` tokens, as one dict of dotted overrides."""

    out: dict[str, Any] = {}
    bad = []
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            bad.append(f"--set {item}: write --set section.key=VALUE (e.g. --set cluster.worker_gpus=4)")
            continue
        out[key.strip()] = parse_value(value)
    if bad:
        raise ConfigError(bad, source="command line")
    return {**out, **parse_cli_overrides(extra)}


def cmd_render(args: argparse.Namespace, extra: Sequence[str]) -> int:
    files = render_preset(args.preset, _overrides(args, extra))
    for path in write_files(files, args.out):
        print(path)
    return 0


def cmd_check(args: argparse.Namespace, extra: Sequence[str]) -> int:

    files = render_preset(args.preset, _overrides(args, extra))
    problems = validate_files(files)
    diffs = drift(files, args.out)
    for text in diffs.values():
        sys.stdout.write(text)
    for p in problems:
        print(f"invalid: {p}", file=sys.stderr)
    if diffs:
        print(
            f"error: {len(diffs)} file(s) under {args.out} differ from a fresh render: {', '.join(diffs)}; "
            f"run `nightshift infra render --preset {args.preset}` and commit the result",
            file=sys.stderr,
        )
    if not diffs and not problems:
        print(f"{len(files)} files under {args.out} match a fresh render and validate")
    return 1 if diffs or problems else 0


def register(sub: Any) -> None:
    """Add ``nightshift infra render|check`` to the top-level subparsers."""
    infra = sub.add_parser("infra", help="cluster deployment files rendered from the config")
    verbs = infra.add_subparsers(dest="infra_command", required=True)
    for name, fn, help_text in (
        ("render", cmd_render, "write the launcher YAML, KubeRay manifests, Prefect template and Dockerfile"),
        ("check", cmd_check, "fail when the files on disk differ from a fresh render or do not validate"),
    ):
        p = verbs.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--preset", default=DEFAULT_PRESET, help=f"preset or YAML path ({DEFAULT_PRESET})")
        p.add_argument("--out", default=str(REPO_ROOT), help="root the files are written under (the repo)")
        p.add_argument(
            "--set", action="append", metavar="KEY=VALUE", help="a config override: cluster.worker_gpus=4"
        )
        p.set_defaults(fn=fn)
