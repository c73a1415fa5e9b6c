"""Start-up checks on the onnxruntime installation."""

from __future__ import annotations

from importlib import metadata

RUNTIME_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")


def installed_runtimes() -> list[str]:
    """The onnxruntime distributions installed, as `name==version`."""
    found = []
    for name in RUNTIME_DISTRIBUTIONS:
        try:
            found.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return found


def check_single_runtime() -> str:
    """Return the one installed runtime, or raise SystemExit with what to do.

    Both wheels ship the same `onnxruntime` package: with both installed, whichever was
    installed last silently wins, and uninstalling either breaks the import.
    """
    found = installed_runtimes()
    if len(found) > 1:
        raise SystemExit(
            f"seqserve: both {' and '.join(found)} are installed; they overwrite each other. "
            "Uninstall both, then install exactly one: pip install 'seqserve[serve-cpu]' "
            "or 'seqserve[serve-gpu]'."
        )
    if not found:
        raise SystemExit(
            "seqserve: onnxruntime is not installed. Install one runtime: "
            "pip install 'seqserve[serve-cpu]' (CPU) or 'seqserve[serve-gpu]' (CUDA)."
        )
    return found[0]
