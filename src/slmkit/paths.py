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


def peak_rss() -> int:
    """Peak resident memory of this process in bytes.

    Read from ``VmHWM`` in ``/proc/self/status``, which starts afresh in a new
    program; ``ru_maxrss`` would carry over the peak of the parent that
    started this process (it survives ``exec``).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
