"""What /proc tells about another process: its memory and its engine children. Shared by the
benchmarks and the tests that watch a server from outside."""

from __future__ import annotations

from pathlib import Path


def memory_bytes(pid: int, field: str = "VmRSS") -> int | None:
    """A memory line of /proc/<pid>/status in bytes (VmRSS: resident now; VmHWM: its peak);
    None once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def engine_children(pid: int) -> list[int]:
    """The children of `pid` that multiprocessing's spawn started (the translator engines)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid and b"spawn_main" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return found
