"""Keep glibc from handing freed activation buffers back to the kernel between layers.

By default glibc returns the top of the heap to the kernel once more than 128 KiB is free and
serves large blocks with mmap/munmap; a forward pass that frees and re-allocates megabyte-sized
activations layer after layer then pays a page fault for every page, every layer. Raising both
thresholds keeps the memory in the process. Measured effect: docs/performance.md.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc caps the mmap threshold at 32 MiB on 64-bit systems; larger values are refused.
_MMAP_THRESHOLD_MAX = 32 * 2**20
_TRIM_THRESHOLD = 2**30


def pin_glibc_allocator() -> bool:
    """Raise glibc's trim and mmap thresholds; False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    trimmed: int = mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    mapped: int = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
    return trimmed == 1 and mapped == 1
