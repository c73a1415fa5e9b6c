"""Training the SentencePiece model a translator ships with (`spm.model`).

One joint model over source and target sentences (one vocabulary, so embeddings can be tied),
with fixed special ids: pad 0, unk 1, bos 2, eos 3.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import sentencepiece as spm

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


def train_tokenizer(
    sentences: Sequence[str],
    vocab_size: int,
    model_type: str = "unigram",
    seed: int = 0,
    max_sentences: int = 2_000_000,
) -> bytes:
    """A serialized SentencePiece model trained on `sentences`. `vocab_size` is an upper
    bound: a small corpus gets fewer pieces rather than an error."""
    if model_type not in {"unigram", "bpe"}:
        raise ValueError(f"model_type must be unigram or bpe, not {model_type!r}")
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([s for s in sentences if s.strip()]),
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=1.0,
        hard_vocab_limit=False,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        input_sentence_size=max_sentences,
        shuffle_input_sentence=True,
        num_threads=2,
        minloglevel=2,
    )
    return model.getvalue()
