"""dglrec.runs.allocator: the thresholds reach glibc's malloc.

Each case runs in a fresh interpreter (the allocator's state is per process) and
allocates one 20 MiB tensor. glibc's default mmap threshold (128 KiB until a mapped
block is freed) maps it from the kernel, and frees it back; with
``keep_freed_memory()`` it comes from the heap (32 MiB threshold) and, freed, stays
there for the next pass (2 GiB trim threshold). ``mallinfo2`` reports both.
"""

import subprocess
import sys

import pytest

WORKLOAD = """
import ctypes, sys
import torch
from dglrec.runs.allocator import keep_freed_memory
if sys.argv[1] == "kept":
    assert keep_freed_memory()
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd",
        "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
before = libc.mallinfo2()
x = torch.ones(5 << 20)
held = libc.mallinfo2()
del x
after = libc.mallinfo2()
mib = 1 << 20
print((held.hblkhd - before.hblkhd) // mib, (after.arena - before.arena) // mib)
"""


def mapped_and_kept(mode: str) -> tuple[int, int]:
    """MiB of the tensor mapped from the kernel while held; MiB the heap grew by, after."""
    done = subprocess.run(
        [sys.executable, "-c", WORKLOAD, mode], capture_output=True, text=True, check=True
    )
    mapped, kept = done.stdout.split()
    return int(mapped), int(kept)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and mallinfo2")
def test_freed_memory_stays_in_the_heap():
    assert mapped_and_kept("default") == (20, 0)  # mapped, and unmapped when freed
    mapped, kept = mapped_and_kept("kept")
    assert mapped == 0 and kept >= 20
