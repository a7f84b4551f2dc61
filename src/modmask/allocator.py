"""Keep freed memory in the process (glibc malloc), so large tensors do not page-fault anew.

Mask training allocates and frees tensors of K x |W| elements at every step. With glibc's default
settings each of them is mapped fresh from the kernel and page-faults on first touch: measured on a
2-core machine, about 2,700 faults and 7 ms of system time per mask step of the 400-400-200 MLP,
about 20% of the step. Raising the mmap and trim thresholds lets malloc reuse the memory instead.
The command line and the benchmark call this once; library code never does (it is process-wide).
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(threshold_bytes: int = 1 << 30) -> bool:
    """Serve allocations below `threshold_bytes` from the heap and never trim it; True if applied
    (False where the C library is not glibc)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold_bytes)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 * threshold_bytes))
