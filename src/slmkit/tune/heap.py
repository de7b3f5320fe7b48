"""Keep freed memory in the process heap while training, so big tensors reuse warm pages.

glibc's malloc serves every request above 32 MB (and, until it adapts, above 128 KB)
with a fresh ``mmap`` and gives it back with ``munmap`` when freed. A training step
allocates and frees the same big tensors every time (a 1024 x 49,152 chunk of logits
is 100 MB in bf16 and 200 MB in fp32), so each step touches hundreds of MB of new
pages, and each new 4 KiB page costs a page fault that the kernel must zero-fill.
On a small VM that was 40% of the time of the output head's loss (measured:
``bench/finetune.py``, BENCHMARKS.md).

``reuse_heap()`` switches ``mmap`` off for malloc (``M_MMAP_MAX = 0``) and stops the
heap from being trimmed (``M_TRIM_THRESHOLD``), so a freed block goes back to the
heap and the next step's tensor of the same size lands on pages already mapped.
On exit the defaults come back and ``malloc_trim`` returns the free heap to the OS.
Elsewhere than Linux with glibc it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from contextlib import contextmanager
from functools import lru_cache

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
DEFAULT_TRIM_THRESHOLD = 128 * 1024
DEFAULT_MMAP_MAX = 65536
NO_TRIM = 2**31 - 1                 # the largest value mallopt takes (an int)


@lru_cache(maxsize=1)
def _libc():
    """glibc, or None where ``mallopt``/``malloc_trim`` are missing (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        return libc
    except (OSError, AttributeError):
        return None


def _set(param: int, value: int) -> bool:
    libc = _libc()
    return bool(libc is not None and libc.mallopt(param, value) == 1)


@contextmanager
def reuse_heap(enabled: bool = True):
    """Within the block, freed memory stays in the heap for reuse; yields whether it took."""
    on = enabled and _set(M_MMAP_MAX, 0) and _set(M_TRIM_THRESHOLD, NO_TRIM)
    try:
        yield on
    finally:
        if on:
            _set(M_MMAP_MAX, DEFAULT_MMAP_MAX)
            _set(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
            _libc().malloc_trim(0)
