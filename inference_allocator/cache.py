"""The cache directory: builds and downloads that take minutes (Apache Kafka's jars, the
local model server) are kept here, outside any clone, and reused by every run."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$INFERENCE_CACHE_DIR``, else ``$XDG_CACHE_HOME/inference-allocator``, else
    ``~/.cache/inference-allocator``."""
    explicit = os.environ.get("INFERENCE_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "inference-allocator"
