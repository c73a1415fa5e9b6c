"""The tokenizer of an imported Marian / OPUS-MT model: two SentencePiece models (`source.spm`,
`target.spm`) that cut text into pieces, and one vocabulary (`vocab.json`, piece -> id) that
numbers them, as Hugging Face's MarianTokenizer does it:

- a source is cut by the source model; a leading language code such as `>>fra<<` (multilingual
  models) is kept as one piece; pieces missing from the vocabulary become `<unk>`; EOS ends it;
- a translation's ids go back to pieces through the vocabulary, special ones (pad, EOS, unk)
  dropped, and the pieces are joined by the source model, as MarianTokenizer does with a shared
  vocabulary (the only kind imported); the target model cuts references (`encode`);
- the decoder starts from the pad token (`bos_id` is pad's id).

Only sentencepiece and json: serving needs neither torch nor transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

import sentencepiece as spm

from core.translation.normalization import normalizer

UNDERLINE = "\u2581"


class VocabTokenizer:
    """Text <-> ids of a Marian vocabulary; the same interface as `Tokenizer`."""

    def __init__(
        self,
        source: spm.SentencePieceProcessor,
        target: spm.SentencePieceProcessor,
        vocab: dict[str, int],
        source_normalization: str = "none",
    ) -> None:
        for token in ("</s>", "<unk>", "<pad>"):
            if token not in vocab:
                raise ValueError(f"the vocabulary has no {token!r} entry")
        self.source, self.target, self.vocab = source, target, vocab
        self.pieces_of = {i: piece for piece, i in vocab.items()}
        self.eos_id, self.unk_id, self.pad_id = vocab["</s>"], vocab["<unk>"], vocab["<pad>"]
        self.bos_id = self.pad_id  # Marian's decoder starts from pad
        self.vocab_size = max(vocab.values()) + 1
        self.special = {self.eos_id, self.unk_id, self.pad_id}
        self.source_normalization = source_normalization
        self.normalize_source = normalizer(source_normalization)

    @classmethod
    def from_files(
        cls, source: Path, target: Path, vocab: Path, source_normalization: str = "none"
    ) -> VocabTokenizer:
        try:
            table = json.loads(Path(vocab).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ValueError(f"{Path(vocab).name}: not a JSON vocabulary ({err})") from None
        if not isinstance(table, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and v >= 0 for k, v in table.items()
        ):
            raise ValueError(f"{Path(vocab).name}: not a mapping of pieces to ids")
        return cls(
            spm.SentencePieceProcessor(model_file=str(source)),
            spm.SentencePieceProcessor(model_file=str(target)),
            table,
            source_normalization,
        )

    def encode(self, text: str) -> list[int]:
        """Ids of a target-side text (a reference), cut by the target model, without EOS."""
        return [self.vocab.get(p, self.unk_id) for p in self.target.encode(text, out_type=str)]

    def encode_source(self, text: str) -> list[int]:
        """What the encoder reads: the pieces' ids followed by EOS; empty text gives []."""
        text = self.normalize_source(text)
        code: list[str] = []
        if text.startswith(">>") and (end := text.find("<<")) != -1:
            code, text = [text[: end + 2]], text[end + 2 :]
        pieces = code + self.source.encode(text, out_type=str)
        ids = [self.vocab.get(p, self.unk_id) for p in pieces]
        return [*ids, self.eos_id] if ids else []

    def decode(self, ids: list[int]) -> str:
        """Detokenized text; special ids are dropped."""
        pieces = [self.pieces_of.get(i, "<unk>") for i in ids if i not in self.special]
        text = self.source.decode_pieces(pieces)  # type: ignore[arg-type]
        return text.replace(UNDERLINE, " ").strip()

    def pieces(self, ids: list[int]) -> list[str]:
        return [self.pieces_of.get(i, "<unk>") for i in ids]
