"""The one error export raises: the message says what failed and what to do about it."""

from __future__ import annotations


class ExportError(RuntimeError):
    """An export or repository write that cannot go ahead; nothing was written."""
