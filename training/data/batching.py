"""Token-based batching for the translator: pairs of similar length go together, and a batch
holds at most `max_tokens` tokens (source + target, padding included). numpy only."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Ids = Sequence[int]


def token_batches(
    src_lens: np.ndarray,
    tgt_lens: np.ndarray,
    max_tokens: int,
    rng: np.random.Generator | None = None,
    pool: int = 0,
) -> list[np.ndarray]:
    """Index batches. Pairs are sorted by length (ties shuffled by `rng`), cut into batches
    whose padded size (rows x (longest source + longest target)) fits `max_tokens`, and the
    batch order is shuffled when `rng` is given.

    `pool` > 0 (with `rng`): the pairs are shuffled first and sorted only within pools of
    about `pool` batches' tokens (torchtext's BucketIterator). A global sort puts every copy
    of a repeated pair, and every pair of a rare length, into one or two batches an epoch:
    a few updates, however many copies. Pools spread them over as many batches as there are
    pools, for a little more padding."""
    if pool and rng is not None:
        shuffled = rng.permutation(len(src_lens))  # [N]
        cost = np.cumsum(src_lens[shuffled] + tgt_lens[shuffled])  # [N] tokens so far
        size = pool * max_tokens
        cuts = np.searchsorted(cost, np.arange(size, cost[-1], size))  # pool boundaries
        batches = [
            chunk[b]
            for chunk in np.split(shuffled, cuts)
            for b in token_batches(src_lens[chunk], tgt_lens[chunk], max_tokens, rng)
        ]
        rng.shuffle(batches)
        return batches
    n = len(src_lens)
    noise = rng.random(n) if rng is not None else np.zeros(n)
    order = np.lexsort((noise, tgt_lens, src_lens))  # by source, then target length
    batches: list[np.ndarray] = []
    start, longest_s, longest_t = 0, 0, 0
    for i, idx in enumerate(order):
        s, t = max(longest_s, src_lens[idx]), max(longest_t, tgt_lens[idx])
        if i > start and (i - start + 1) * (s + t) > max_tokens:
            batches.append(order[start:i])
            start, s, t = i, src_lens[idx], tgt_lens[idx]
        longest_s, longest_t = s, t
    if start < n:
        batches.append(order[start:])
    if rng is not None:
        rng.shuffle(batches)
    return batches


def pad_batch(seqs: Sequence[Ids], pad_id: int) -> np.ndarray:
    """Right-padded [B, longest] int64 array."""
    out = np.full((len(seqs), max(len(s) for s in seqs)), pad_id, np.int64)  # [B, T]
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out


def collate(
    src: Sequence[Ids], tgt: Sequence[Ids], pad_id: int, bos_id: int, eos_id: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model inputs for teacher forcing. `src` already ends with EOS; `tgt` is bare.
    -> src [B, S], tgt_in [B, T] (BOS + target), tgt_out [B, T] (target + EOS)."""
    src_ids = pad_batch(src, pad_id)  # [B, S]
    tgt_in = pad_batch([[bos_id, *t] for t in tgt], pad_id)  # [B, T]
    tgt_out = pad_batch([[*t, eos_id] for t in tgt], pad_id)  # [B, T]
    return src_ids, tgt_in, tgt_out
