"""How the server's process allocates host memory.

glibc's malloc hands every block over 32 MiB straight back to the kernel when it is freed, so
the next one of that size arrives as fresh pages, each zeroed in a page fault. A 4,096-token
batch of the full-size model allocates four such blocks per layer (the MLP's [tokens, 3072]
activations, 48 MiB each in float32): measured on a 2-core Xeon, 2.3 million page faults and
6 s of system time per pass over bench.cpu_throughput's passages, of 44 s of CPU time. Kept in
the heap, freed blocks are reused instead (0.5 s of system time), for more resident memory: the
peak of that process rose from 1,694 MiB to 1,721-1,888 MiB.
"""

from __future__ import annotations

import ctypes
import os

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

# Blocks up to this size come from the heap (the default is 32 MiB at most); a larger one is
# mapped and unmapped as before.
MMAP_THRESHOLD = 256 << 20
# Free memory kept at the heap's top before it is handed back.
TRIM_THRESHOLD = 512 << 20


def keep_freed_memory() -> str:
    """Has glibc keep freed blocks for reuse; says what it did, for `mgte info`. Call before
    other threads start: with one arena, every thread's blocks come from one heap rather than
    from per-thread heaps of 64 MiB, which a block of 48 MiB nearly fills. Leaves malloc alone
    where the environment tunes it (GLIBC_TUNABLES with a glibc.malloc tunable, or a
    MALLOC_*_ variable) and where the C library is not glibc."""
    tuned = [name for name in os.environ if name.startswith("MALLOC_") and name.endswith("_")]
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        tuned.append("GLIBC_TUNABLES")
    if tuned:
        return f"as the environment tunes it ({', '.join(sorted(tuned))})"
    libc = ctypes.CDLL(None)  # the C library this process runs on, already loaded
    if not hasattr(libc, "gnu_get_libc_version"):
        return "the C library's default (not glibc)"
    libc.gnu_get_libc_version.restype = ctypes.c_char_p
    version = libc.gnu_get_libc_version().decode()
    settings = ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_ARENA_MAX, 1))
    refused = [parameter for parameter, value in settings if libc.mallopt(parameter, value) != 1]
    if refused:
        return f"glibc {version}, mallopt refused parameters {refused}"
    return (f"glibc {version}, freed blocks kept for reuse: blocks up to {MMAP_THRESHOLD >> 20} MiB from the heap, "
            f"up to {TRIM_THRESHOLD >> 20} MiB free kept, one arena")
