"""Where charter keeps things on disk."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """User cache folder (converted models). ``CHARTER_CACHE_DIR`` overrides it."""
    override = os.environ.get("CHARTER_CACHE_DIR")
    if override:
        return Path(override)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("charter"))
