"""Keep freed memory in the process for reuse: glibc ``malloc`` settings for a fit.

A ranking pass allocates tens of megabytes of fresh tensors at a time. With glibc's
defaults, a block above the (dynamic) mmap threshold is mapped from the kernel and
unmapped when freed, and free memory at the top of the heap above the trim threshold
is handed back: the next pass then touches new pages, a minor page fault for every 4
KiB. On Last.FM a two-hop KGCN ranking took up to 500k faults and twice its time
(``benchmarks/fast_kg.py``). A fixed 32 MiB mmap threshold and a 2 GiB trim threshold
let the heap keep what a pass freed for the next one; peak RSS, what the machine must
hold, does not change. The command line applies them (:func:`keep_freed_memory`) to
every process it starts; a library user may call it, or set the equivalent
``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` before Python starts.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt(3) parameters (glibc malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest (HEAP_MAX_SIZE / 2 on 64-bit)
TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes an int


def keep_freed_memory() -> bool:
    """Set both thresholds for this process; ``False`` where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # no libc to load, or one without mallopt (musl)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
