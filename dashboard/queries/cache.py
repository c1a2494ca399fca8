"""The short-lived cache in front of every catalog read."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import streamlit as st

# Pages rerun on every click, while the catalog changes on the scale of served requests, not
# clicks: a few seconds of staleness saves a query per widget interaction.
TTL_S = 15

F = TypeVar("F", bound=Callable[..., Any])


def cached(fn: F) -> F:
    """``st.cache_data`` with the dashboard's TTL; arguments must be hashable values (str, int, tuple)."""
    return st.cache_data(ttl=TTL_S, show_spinner=False)(fn)  # type: ignore[return-value]


def clear_caches() -> None:
    """Forget every cached read (after a write, so the change shows at once)."""
    st.cache_data.clear()
