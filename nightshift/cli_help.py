"""What ``nightshift`` says at the keyboard: per-verb help with config keys and examples, did-you-mean,
and one clear line (no traceback) for every error a user can cause and fix.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from core.config import describe_fields, load_config
from core.config_base import did_you_mean

# The config keys each verb reads: a selector is a dotted key where `*` stands for one name and `**`
# for any number, so `rlhf.*` is rlhf's own keys and `rlhf.sft.**` everything under rlhf.sft.
VERB_KEYS: dict[str, tuple[str, ...]] = {
    "config": ("preset", "seed"),
    "ingest": ("data.**", "ray.**", "tracking.**"),
    "tokenize": ("data.**", "seed", "tracking.**"),
    "pretrain": ("model.**", "train.**", "ray.**", "seed", "tracking.**"),
    "up": ("stack.**", "serve.auth", "serve.port", "tracking.**"),
    "down": ("stack.**",),
    "status": ("stack.**", "night.**"),
    "gc": ("gc.**", "tracking.**"),
    "demo": ("stack.**",),
    "evaluate": ("eval.**", "tracking.**"),
    "serve": ("serve.**", "ray.**", "tracking.**"),
    "rollback": ("serve.**", "ray.**", "tracking.**"),
    "promote": ("serve.**", "ray.**", "tracking.**"),
    "keys": ("serve.auth", "tracking.catalog_url"),
    "sft": ("rlhf.*", "rlhf.sft.**", "rlhf.tasks.**", "rlhf.eval.**", "tracking.**"),
    "reward": ("rlhf.*", "rlhf.reward.**", "rlhf.preferences.**", "rlhf.tasks.**", "tracking.**"),
    "ppo": ("rlhf.*", "rlhf.ppo.**", "rlhf.sampling.**", "rlhf.tasks.**", "rlhf.eval.**", "tracking.**"),
    "dpo": ("rlhf.*", "rlhf.dpo.**", "rlhf.preferences.**", "rlhf.tasks.**", "rlhf.eval.**", "tracking.**"),
    "grpo": ("rlhf.*", "rlhf.grpo.**", "rlhf.sampling.**", "rlhf.tasks.**", "rlhf.eval.**", "tracking.**"),
}

# Two examples per verb, shown at the end of `nightshift VERB --help`.
EXAMPLES: dict[str, tuple[str, str]] = {
    "config": ("nightshift config --preset small --train.max_steps 500", "nightshift config --fields"),
    "ingest": (
        "nightshift ingest --source books/ --out /tmp/corpus --no-track",
        "nightshift ingest --source 'data/*.jsonl' --out /tmp/corpus --data.text_field body",
    ),
    "tokenize": (
        "nightshift tokenize --corpus /tmp/corpus --out /tmp/tok --no-track",
        "nightshift tokenize --corpus /tmp/corpus --out /tmp/tok --data.vocab_size 8192",
    ),
    "pretrain": (
        "nightshift pretrain --tokens /tmp/tok/tokens --tokenizer /tmp/tok/tokenizer --out /tmp/model "
        "--no-track",
        "nightshift pretrain --preset small --tokens T --tokenizer K --out M --train.num_workers 2 "
        "--train.max_steps 500",
    ),
    "export": (
        "nightshift export --model /tmp/model --out /tmp/hf-model",
        "nightshift export --model .nightshift/artifacts/model/0123abcd4567ef89 --format hf --out hf/",
    ),
    "import": (
        "nightshift import --from /tmp/hf-model --out /tmp/model",
        "nightshift import --from ./gpt2-small --format hf --out /tmp/gpt2-artifact",
    ),
    "generate": (
        "nightshift generate --model /tmp/model --prompt 'ROMEO:' --max-new-tokens 60",
        "nightshift generate --model /tmp/model --prompt 'To be' -n 3 --temperature 0.7 --seed 1",
    ),
    "up": ("nightshift up", "nightshift up --stack.backend postgres --stack.prefect_port 4300"),
    "down": ("nightshift down", "NIGHTSHIFT_HOME=/srv/nightshift nightshift down"),
    "status": ("nightshift status", "nightshift status --nights 20"),
    "gc": ("nightshift gc --dry-run", "nightshift gc --gc.keep_nights 3 --json"),
    "fetch-data": ("nightshift fetch-data", "NIGHTSHIFT_HOME=/tmp/ns nightshift fetch-data"),
    "demo": ("nightshift demo", "nightshift demo --train.max_steps 100 --rlhf.algorithm grpo"),
    "sft": (
        "nightshift sft --model /tmp/model --out /tmp/sft --no-track",
        "nightshift sft --model /tmp/model --rlhf.sft.steps 200 --rlhf.num_workers 2",
    ),
    "reward": (
        "nightshift reward --model /tmp/sft --out /tmp/rm --no-track",
        "nightshift reward --model /tmp/sft --rlhf.preferences.files '[\"prefs.jsonl\"]'",
    ),
    "ppo": (
        "nightshift ppo --model /tmp/sft --reward-model /tmp/rm --out /tmp/ppo --no-track",
        "nightshift ppo --model /tmp/sft --reward-model /tmp/rm --rlhf.ppo.kl_coef 0.05",
    ),
    "dpo": (
        "nightshift dpo --model /tmp/sft --out /tmp/dpo --no-track",
        "nightshift dpo --model /tmp/sft --rlhf.dpo.beta 0.2 --rlhf.num_workers 2",
    ),
    "grpo": (
        "nightshift grpo --model /tmp/sft --out /tmp/grpo --no-track",
        "nightshift grpo --model /tmp/sft --reward-model /tmp/rm --rlhf.grpo.group_size 8",
    ),
    "evaluate": (
        "nightshift evaluate --model /tmp/dpo --against-champion --tokens /tmp/tok/tokens",
        "nightshift evaluate --model /tmp/dpo --champion /tmp/sft --no-track --eval.min_task_accuracy 0.5",
    ),
    "serve": ("nightshift serve", "nightshift serve --model models:/nightshift-gpt@champion"),
    "rollback": ("nightshift rollback --reason 'bad answers'", "nightshift rollback --preset small"),
    "promote": (
        "nightshift promote --version 7 --reason 'reviewed the samples'",
        "nightshift promote --version 3",
    ),
    "keys": ("nightshift keys create --name alice --role labeller", "nightshift keys revoke alice"),
}

# Optional parts (pyproject's extras) and the modules that tell one is missing.
EXTRAS = {"transformers": "hf", "psycopg": "postgres", "boto3": "s3", "botocore": "s3", "s3fs": "s3"}


# The errors a user can cause and fix, by class: printed as their message alone, exit status 2. Named
# rather than imported, so that a quick verb does not import torch or Ray to be able to catch them;
# a class in the error's MRO counts, so Ray's wrappers of a stage's error count too.
EXPECTED_ERRORS = frozenset(
    {
        "core.config_base.ConfigError",
        "catalog.artifacts.ArtifactError",
        "nightshift.upkeep.GCError",
        "nightshift.services.StackError",
        "training.pretrain.checkpoint.CheckpointError",
        "training.placement.PlacementError",
        "serving.deploy.DeployError",
        "nightshift.cli_help.CliError",
        "builtins.FileNotFoundError",
        "builtins.ValueError",  # SourceError, ModelArtifactError, RegistryError, ... are ValueErrors
    }
)


def is_expected(err: BaseException) -> bool:
    return any(f"{c.__module__}.{c.__qualname__}" in EXPECTED_ERRORS for c in type(err).__mro__)


class CliError(Exception):
    """An error of the command line's own (a missing flag, a failed download): printed as one line."""


def _selector_regex(selector: str) -> re.Pattern[str]:
    parts = []
    for part in selector.split("."):
        parts.append({"*": r"[^.]+", "**": r".+"}.get(part, re.escape(part)))
    return re.compile(r"\.".join(parts))


def verb_keys(verb: str, preset: str) -> list[tuple[str, str, str]]:
    """(key, value in ``preset``, help) for every config key ``verb`` reads."""
    selectors = [_selector_regex(s) for s in VERB_KEYS.get(verb, ())]
    if not selectors:
        return []
    values = load_config(preset).to_dict()
    rows = []
    for key, _default, help_text in describe_fields():
        if any(s.fullmatch(key) for s in selectors):
            node: Any = values
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            rows.append((key, repr(node), help_text))
    return rows


class VerbParser(argparse.ArgumentParser):
    """An argparse parser that suggests the closest choice and ends a verb's help with its config keys
    (their values in the verb's default preset) and two examples.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self.verb: str | None = None
        self.default_preset = "tiny"

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is not None and value not in action.choices:
            choices = [str(c) for c in action.choices]
            raise argparse.ArgumentError(
                action,
                f"invalid choice: {value!r}{did_you_mean(str(value), choices)} "
                f"(one of: {', '.join(choices)})",
            )

    def format_help(self) -> str:
        text = super().format_help()
        if self.verb is None:
            return text
        rows = verb_keys(self.verb, self.default_preset)
        if rows:
            width = min(40, max(len(k) for k, _, _ in rows) + 2)
            text += (
                f"\nconfig keys it reads (--key VALUE; values of preset '{self.default_preset}', "
                "which --preset changes):\n"
            )
            for key, value, help_text in rows:
                first = help_text.split(". ")[0].rstrip(".")
                text += f"  --{key:<{width}} {value:<14} {first}\n"
        else:
            text += "\nconfig keys it reads: none\n"
        examples = EXAMPLES.get(self.verb)
        if examples:
            text += "\nexamples:\n" + "".join(f"  {e}\n" for e in examples)
        return text


def missing_extra(err: ModuleNotFoundError) -> str | None:
    """The one-line fix when ``err`` is an optional part that is not installed, else None."""
    extra = EXTRAS.get((err.name or "").split(".")[0])
    if extra is None:
        return None
    return (
        f"this needs the optional part '{extra}' ({err.name} is not installed): "
        f"`uv sync --extra {extra}` (`make setup` installs every part)"
    )
