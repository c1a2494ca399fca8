"""Config of serving: the Ray Serve application, its engine, auth and autoscaling."""

from __future__ import annotations

from training.config_base import Section


class ServeConfig(Section):
    """Serving settings."""
