"""Errors of the translation pipeline. Both are `core.errors.InvalidInput`, so the gRPC
interceptor answers INVALID_ARGUMENT with the message as written here."""

from __future__ import annotations

from core.errors import InvalidInput


class SourceTooLong(InvalidInput):
    """The source exceeds the model's `max_source_tokens` (or, checked before tokenizing,
    the character cap that follows from it); never truncated."""

    def __init__(self, tokens: int, limit: int, unit: str = "tokens") -> None:
        if unit == "tokens":
            message = (
                f"input is {tokens} tokens long (end-of-sentence included); this model "
                f"accepts at most {limit} source tokens (max_source_tokens)"
            )
        else:
            message = (
                f"input is {tokens} {unit} long; this model accepts at most {limit} "
                f"(32 per token of max_source_tokens)"
            )
        super().__init__(message)
        self.tokens, self.limit = tokens, limit


class BadDecodingSetting(InvalidInput):
    """A decoding parameter (beam size, max length, length penalty, hypotheses) is invalid."""
