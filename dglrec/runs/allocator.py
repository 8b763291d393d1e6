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
:data:`ENVIRONMENT` variables before Python starts.
"""

from __future__ import annotations

import ctypes
import sys

# mallopt(3) parameters (glibc malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest (HEAP_MAX_SIZE / 2 on 64-bit)
TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes an int
# The same settings for a process not yet started (glibc reads them at its first malloc).
ENVIRONMENT = {
    "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
    "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD),
}


def keep_freed_memory() -> bool:
    """Set both thresholds for this process; ``False`` where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        # glibc's soname; find_library would run `ldconfig -p` at every command's start.
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl's is libc.so), or no mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
