"""The server process's allocator policy: buffers of 128 KiB or more go back to the system as
soon as they are freed.

glibc's malloc maps a block of its own when the block is larger than a threshold, and serves
smaller ones from its heaps (arenas the threads share, up to 8 per core), which keep what is
freed for later. The threshold starts at 128 KiB, but it moves: each mapped block freed raises it to
that block's size, up to 32 MiB. A server receiving messages of a few MiB and more raises it
within its first requests; from then on the transport's slices, an HTTP body's chunks and a
message's copies come from the heaps, and a flood leaves them there, resident, after its
requests are gone. Under the memory-bound test's flood (32 gRPC messages at the cap and 16
HTTP bodies of 48 MiB) that slack took the peak from the budget's 576 MiB up to 1,013
(docs/serving.md, "Memory, worst case").

So the server fixes the threshold at glibc's starting value. Requests of ordinary size
allocate below it, as before; the cost of a mapped block (its page faults) falls on large
messages, where it is small beside their copies. Only the server's own processes are set
(`serve`, in each worker): the translator's engine processes are spawned, and keep glibc's
defaults.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

MMAP_THRESHOLD = 128 * 2**10  # bytes: glibc's starting value, held there
_M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def give_back_large_buffers() -> bool:
    """Fix glibc's mmap threshold at `MMAP_THRESHOLD` for this process: whether it took
    effect (False with another C library, which keeps its own policy; musl's mallopt does
    nothing and says so)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the process runs on
    except (OSError, AttributeError):  # none that has mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
        log.warning("mallopt(M_MMAP_THRESHOLD, %d) refused", MMAP_THRESHOLD)
        return False
    return True
