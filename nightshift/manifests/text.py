"""YAML and JSON text of the rendered files: stable key order, no anchors, readable block strings."""

from __future__ import annotations

import json
from typing import Any

import yaml


class BlockStr(str):
    """A string written as a YAML literal block (``|``), e.g. a RayService's ``serveConfigV2``."""


class _Dumper(yaml.SafeDumper):
    # Shared sub-dicts (the same env list in two containers) must be written out, not as &anchors:
    # kubectl accepts anchors but a reader of the manifest should not need to resolve them.
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _block(dumper: yaml.SafeDumper, data: BlockStr) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(data), style="|")


_Dumper.add_representer(BlockStr, _block)


def dump_yaml(doc: Any) -> str:
    """YAML in the order the dicts were built, long lines kept whole (entrypoints stay one line)."""
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=4096, allow_unicode=True)


def dump_json(doc: Any) -> str:
    """Indented JSON with a final newline."""
    return json.dumps(doc, indent=2) + "\n"
