"""Peak memory of the running process, as ``slm eval`` and the steps' reports give it."""
from __future__ import annotations

import resource


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
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
