"""A numpy StepModel whose next-token distribution depends only on the row's last token (and,
for `LengthModel`, on how far the row is from its source length): search and batching tests
with exactly known probabilities."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

PAD, UNK, BOS, EOS, A, B, C = range(7)
VOCAB = 7
L, H, K = 1, 2, 4  # layers, heads, head width of the fake cache


def log(p: dict[int, float]) -> np.ndarray:
    row = np.full(VOCAB, 1e-9)
    for token, prob in p.items():
        row[token] = prob
    return np.log(row / row.sum())


class FakeModel:
    """Transition table: greedy takes A (0.6) then has to stop at 0.3; beam search finds
    B (0.4) then EOS (0.9), a better sequence (0.36 > 0.18)."""

    num_layers, num_heads, head_dim = L, H, K
    table: ClassVar[dict[int, np.ndarray]] = {
        BOS: log({A: 0.6, B: 0.4}),
        A: log({EOS: 0.3, A: 0.25, B: 0.25, C: 0.2}),
        B: log({EOS: 0.9, C: 0.1}),
        C: log({EOS: 1.0}),
    }

    def __init__(self) -> None:
        self.calls: list[int] = []  # rows per decoder call
        self.past_lens: list[int] = []  # cache length P per decoder call

    def encode(self, src_ids: np.ndarray, src_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        b, s = src_ids.shape
        kv = np.zeros((L, b, H, s, K), np.float32)
        kv[..., 0] = src_mask.sum(axis=1)[None, :, None, None]  # the source length, per row
        return kv, kv.copy()

    def next_log_probs(self, last: int, position: int, src_len: int) -> np.ndarray:
        return self.table.get(last, self.table[C])  # anything else: stop

    def step(
        self,
        tokens: np.ndarray,
        positions: np.ndarray,
        past_k: np.ndarray,
        past_v: np.ndarray,
        past_mask: np.ndarray,
        cross_k: np.ndarray,
        cross_v: np.ndarray,
        src_mask: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = tokens.shape[0]
        self.calls.append(rows)
        self.past_lens.append(past_k.shape[3])
        src_len = src_mask.sum(axis=1)
        assert np.all(cross_k[0, :, 0, 0, 0] == src_len), "cross K/V and source mask misaligned"
        for i in range(rows):  # a row's own cache slots hold positions 0..p-1, in order
            own = past_k[0, i, 0, past_mask[i], 0]
            assert np.array_equal(own, np.arange(len(own))), f"row {i} cache: {own}"
            assert positions[i, 0] == len(own), f"row {i}: position {positions[i, 0]}"
        lp = np.stack(
            [
                self.next_log_probs(int(tokens[i, 0]), int(positions[i, 0]), int(src_len[i]))
                for i in range(rows)
            ]
        )
        new = np.zeros((L, rows, H, 1, K), np.float32)
        new[..., 0] = positions[None, :, None, :]  # each slot remembers its position
        present = np.concatenate([past_k, new], axis=3)
        return lp.astype(np.float32), present, present.copy()


class LengthModel(FakeModel):
    """Emits A until the target is as long as the source (EOS excluded), then EOS."""

    def next_log_probs(self, last: int, position: int, src_len: int) -> np.ndarray:
        return log({EOS: 1.0}) if position >= src_len - 1 else log({A: 0.9, B: 0.1})


class LateModel(FakeModel):
    """The best sequence (A A A A A) is long; B stops at once with a low score, and the other
    beams hold near-impossible hypotheses whose EOS ranks high among the few candidates."""

    def next_log_probs(self, last: int, position: int, src_len: int) -> np.ndarray:
        if last == BOS:
            return log({A: 0.9, B: 0.1})
        if last == A:
            return log({EOS: 1.0}) if position >= 5 else log({A: 0.99, EOS: 0.01})
        return log({EOS: 1.0})
