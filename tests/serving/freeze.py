"""Freeze some threads of a process while its others run, with ptrace (PTRACE_SEIZE and
PTRACE_INTERRUPT act on one thread each): how a test wedges a translator engine's decoding
while its heartbeat thread goes on beating, as an onnxruntime call that never returns would."""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_PTRACE_DETACH, _PTRACE_SEIZE, _PTRACE_INTERRUPT = 17, 0x4206, 0x4207
_WALL = 0x40000000
_CLOCK_NANOSLEEP = 230  # x86-64: where time.sleep waits

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
_libc.ptrace.restype = ctypes.c_long


def _ptrace(request: int, tid: int) -> None:
    if _libc.ptrace(request, tid, None, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"ptrace({request:#x}, {tid}): {os.strerror(err)}")


def threads(pid: int) -> list[int]:
    return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))


def sleeping_threads(pid: int, samples: int = 5) -> set[int]:
    """Threads found in clock_nanosleep at every one of `samples` looks, 50 ms apart."""
    found: set[int] | None = None
    for _ in range(samples):
        now = set()
        for tid in threads(pid):
            try:
                call = Path(f"/proc/{pid}/task/{tid}/syscall").read_text().split()[0]
            except (OSError, IndexError):
                continue
            if call == str(_CLOCK_NANOSLEEP):
                now.add(tid)
        found = now if found is None else found & now
        time.sleep(0.05)
    return found or set()


@contextmanager
def frozen(tids: list[int]) -> Iterator[None]:
    """Stop these threads (of a process that is not ours to wait for) until the block ends,
    or until the process is killed meanwhile; either way leave nothing traced."""
    seized: list[int] = []
    dead: set[int] = set()
    done = threading.Event()

    def reap() -> None:
        """A killed tracee's exit goes to its tracer first: collect it at once, as its parent
        would see it with no tracer."""
        while not done.wait(0.01):
            for tid in seized:
                if tid in dead:
                    continue
                try:
                    got, status = os.waitpid(tid, _WALL | os.WNOHANG)
                except ChildProcessError:
                    dead.add(tid)
                    continue
                if got == tid and (os.WIFEXITED(status) or os.WIFSIGNALED(status)):
                    dead.add(tid)

    reaper = threading.Thread(target=reap, daemon=True)
    try:
        for tid in tids:
            _ptrace(_PTRACE_SEIZE, tid)
            _ptrace(_PTRACE_INTERRUPT, tid)
            os.waitpid(tid, _WALL)  # its stop
            seized.append(tid)
        reaper.start()
        yield
    finally:
        done.set()
        if reaper.is_alive():
            reaper.join()
        for tid in seized:
            if tid in dead:
                continue
            try:
                _ptrace(_PTRACE_DETACH, tid)
            except OSError:  # it died meanwhile
                _reap(tid)


def _reap(tid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(tid, _WALL | os.WNOHANG)[0] == tid:
                return
        except ChildProcessError:
            return
        time.sleep(0.01)
