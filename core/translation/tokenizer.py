"""The SentencePiece tokenizer that travels with a translator (`spm.model`)."""

from __future__ import annotations

from pathlib import Path

import sentencepiece as spm

from core.translation.normalization import normalizer


class Tokenizer:
    """Text <-> token ids. The special ids come from the SentencePiece model itself; training
    fixes them to pad 0, unk 1, bos 2, eos 3. Sources are normalised first by the model's
    `source_normalization` (see `normalization.py`); targets never are."""

    def __init__(
        self, processor: spm.SentencePieceProcessor, source_normalization: str = "none"
    ) -> None:
        self.sp = processor
        self.source_normalization = source_normalization
        self.normalize_source = normalizer(source_normalization)
        self.pad_id, self.unk_id = processor.pad_id(), processor.unk_id()
        self.bos_id, self.eos_id = processor.bos_id(), processor.eos_id()
        self.vocab_size = processor.get_piece_size()

    @classmethod
    def from_file(cls, path: str | Path, source_normalization: str = "none") -> Tokenizer:
        return cls(spm.SentencePieceProcessor(model_file=str(path)), source_normalization)

    @classmethod
    def from_bytes(cls, model: bytes, source_normalization: str = "none") -> Tokenizer:
        return cls(spm.SentencePieceProcessor(model_proto=model), source_normalization)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without BOS/EOS."""
        return list(self.sp.encode(text, out_type=int))

    def encode_source(self, text: str) -> list[int]:
        """What the encoder reads: the normalised text's ids followed by EOS; empty text
        gives []."""
        ids = self.encode(self.normalize_source(text))
        return [*ids, self.eos_id] if ids else []

    def decode(self, ids: list[int]) -> str:
        """Detokenized text; special ids are dropped."""
        return self.sp.decode([i for i in ids if i not in (self.pad_id, self.bos_id, self.eos_id)])

    def pieces(self, ids: list[int]) -> list[str]:
        return [self.sp.id_to_piece(i) for i in ids]
