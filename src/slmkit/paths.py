"""Where slmkit keeps its caches."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$SLMKIT_CACHE`` or ``~/.cache/slmkit``."""
    root = os.environ.get("SLMKIT_CACHE") or Path.home() / ".cache" / "slmkit"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
