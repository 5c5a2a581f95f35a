"""How a training process's malloc keeps freed memory: set by every worker loop and by `optim.bench`."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

# glibc's mallopt parameters (malloc.h): no mmap'd chunks, and no trimming of the heap's top.
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
_GLIBC_INT_MAX = 2**31 - 1


@functools.cache  # once per process: a reused Tune actor runs many trials
def keep_freed_memory() -> bool:
    """Let glibc's malloc reuse freed memory instead of returning it to the kernel; True where applied.

    A CPU training step allocates activations larger than glibc's largest mmap threshold (32 MiB: ResNet-8
    at batch 512 has 33.5 MB feature maps), so by default each is mmap'd, page-faulted in and munmap'd
    again every step. Measured on the 2-core CI machine (ResNet-8, LARS, batch 512, 3 interleaved rounds of
    fresh processes): 3-6.7 M minor faults and 6-12 s of system time per 30 s of training (more in Tune's
    trial thread), against 0.25 M faults and 0.5 s with these two settings: +13% images/s, for ~0.2 GB
    more resident memory. In optimizer micro-benchmarks the default made one step's cost depend on what
    ran before it (torch SGD 12 ms alone, 26 ms after an Adam step). Malloc has no Python API (nor does
    torch's CPU allocator expose one), hence ctypes. Elsewhere than glibc (macOS, musl) nothing changes.
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, _GLIBC_INT_MAX))
