"""The server's allocator policy (serving/allocator.py): once a large buffer has been freed,
glibc serves the next buffers of a few MiB from heaps that keep them; with the policy, each
goes back to the system when freed (the flood test in test_memory_bound.py measures what
that saves under a flood)."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

MIB = 2**20

# In a fresh process: free a 24 MiB block (which raises glibc's moving threshold), then
# allocate 64 blocks of 1 MiB, write them, and free every other one, so that the freed ones
# lie between live ones: print how much of them is still resident.
_PROBE = """
import ctypes, os, sys
from serving.allocator import give_back_large_buffers
from bench.procfs import memory_bytes
if sys.argv[1] == "policy":
    assert give_back_large_buffers()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
MIB = 2**20
big = libc.malloc(24 * MIB)
ctypes.memset(big, 1, 24 * MIB)
libc.free(big)
blocks = [libc.malloc(MIB) for _ in range(64)]
for b in blocks:
    ctypes.memset(b, 1, MIB)
before = memory_bytes(os.getpid())
for b in blocks[::2]:
    libc.free(b)
print(before - memory_bytes(os.getpid()))
"""


def _given_back(mode: str) -> int:
    run = subprocess.run(
        [sys.executable, "-c", _PROBE, mode],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parents[2],
    )
    assert run.returncode == 0, run.stderr
    return int(run.stdout)


def test_freed_buffers_go_back_to_the_system() -> None:
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc: the C library keeps its own policy")
    assert _given_back("policy") >= 30 * MIB  # the 32 freed MiB, within a page or two
    # glibc's default, for contrast: the test would pass without the policy otherwise
    assert _given_back("default") < 8 * MIB
