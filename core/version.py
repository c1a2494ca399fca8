"""The installed package version: part of every stage identity (training/stage_cache.py), and `--version`."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    try:
        return version("nightshift")
    except PackageNotFoundError:  # a checkout run without `make setup`
        return "unknown (not installed; run `make setup`)"
