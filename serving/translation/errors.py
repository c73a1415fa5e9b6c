"""Errors of the translation pipeline. Both are `serving.errors.InvalidInput`, so the gRPC
interceptor answers INVALID_ARGUMENT with the message as written here."""

from __future__ import annotations

from serving.errors import InvalidInput


class SourceTooLong(InvalidInput):
    """The tokenized source exceeds the model's `max_source_tokens`; never truncated."""

    def __init__(self, tokens: int, limit: int) -> None:
        super().__init__(f"input is {tokens} tokens long (end-of-sentence included); this "
                         f"model accepts at most {limit} source tokens (max_source_tokens)")
        self.tokens, self.limit = tokens, limit


class BadDecodingSetting(InvalidInput):
    """A decoding parameter (beam size, max length, length penalty, hypotheses) is invalid."""
