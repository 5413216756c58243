"""Keep freed memory in the process, so a training step does not page-fault its tensors in anew.

A training step frees and allocates the same tensors every time. glibc hands freed heap memory
back to the kernel past its trim threshold and serves large blocks from fresh mappings, so a step
can fault all of them in again (the kernel zeroing every page): the default teacher's fp32 `fit`
faulted 1,135-2,507 pages a step and ran 1.09x faster with both thresholds raised, 0 faults
(`python benchmarks/freed_memory.py`, README). Where the C library is not glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

MMAP_THRESHOLD = 32 << 20  # glibc's largest: blocks up to 32 MiB come from the heap, not mmap
TRIM_THRESHOLD = 512 << 20  # freed memory kept for reuse before any is returned to the kernel

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds, once per process; whether they are raised."""
    global _applied
    if _applied is None:
        _applied = False
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt): nothing to tune
            return False
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        _applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
