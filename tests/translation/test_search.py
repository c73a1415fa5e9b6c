"""Beam search on a model with known probabilities (tests/translation/fakes.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.native import decoder
from core.translation import BadDecodingSetting, DecodeBatch, DecodeRequest
from core.translation.search import (
    DEAD,
    BeamState,
    SearchRules,
    best_candidates,
    length_penalty,
    ranked_rows,
)
from tests.translation.fakes import BOS, EOS, PAD, A, B, FakeModel, LateModel


def decode(beam: int, model: FakeModel | None = None, **settings: float) -> list:
    batch = DecodeBatch(model or FakeModel(), BOS, EOS, PAD)
    batch.add([DecodeRequest("r", [5, EOS], beam_size=beam, **settings)])
    while len(batch):
        for update in batch.step():
            if update.finished:
                return update.result.hypotheses
    raise AssertionError("never finished")


def test_beam_search_finds_a_better_sequence_than_greedy() -> None:
    [greedy] = decode(1)
    best, *_ = decode(2)
    assert greedy.token_ids == [A] and greedy.log_prob == pytest.approx(math.log(0.6 * 0.3))
    assert best.token_ids == [B] and best.log_prob == pytest.approx(math.log(0.4 * 0.9))
    assert best.log_prob > greedy.log_prob


@pytest.mark.parametrize("beam", [2, 3, 4])
def test_search_goes_on_until_the_best_hypothesis_has_finished(beam: int) -> None:
    """Weak beams that stop early must not end the search (counting finished ones would)."""
    best = decode(beam, LateModel(), num_hypotheses=2)[0]
    assert best.token_ids == [A] * 5
    assert best.log_prob == pytest.approx(math.log(0.9 * 0.99**4))


def _random_search(seed: int, beam: int, n: int, alpha: float) -> tuple[list, int]:
    """Beam search on a random model whose next-token distribution depends on the whole
    prefix (EOS likely enough that hypotheses finish at many lengths): the n best and the
    number of steps taken."""
    state = BeamState(beam, max_length=12, alpha=alpha, eos_id=EOS, num_hypotheses=n)

    def log_probs(prefix: list[int]) -> np.ndarray:  # [V]
        logits = 2.0 * np.random.default_rng([seed, *prefix]).normal(size=7)
        logits[EOS] += 1.0
        return logits - np.log(np.exp(logits).sum())

    steps = 0
    while not state.done:
        state.advance(np.stack([log_probs(tokens) for tokens in state.tokens]))
        steps += 1
    return state.best(n), steps


@pytest.mark.parametrize("alpha", [0.0, 1.2])
def test_the_search_stops_once_what_it_returns_is_settled(alpha: float) -> None:
    """The exact bound needs only the hypotheses a request returns: a 1-best or 2-best search
    returns what the search gathering all `beam_size` finished ones returns, in fewer steps."""
    saved = 0
    for seed in range(40):
        full, full_steps = _random_search(seed, 4, 4, alpha)
        for n in (1, 2):
            hyps, steps = _random_search(seed, 4, n, alpha)
            assert [(h.token_ids, h.score) for h in hyps] == [
                (h.token_ids, h.score) for h in full[:n]
            ], f"seed {seed}, {n}-best"
            assert steps <= full_steps
            saved += full_steps - steps
    assert saved > 0


def test_n_best_is_sorted_and_scored() -> None:
    hyps = decode(3, num_hypotheses=3)
    assert len(hyps) == 3
    assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
    assert hyps[0].token_ids == [B]
    assert hyps[1].token_ids == [A] and hyps[1].log_prob == pytest.approx(math.log(0.18))


def test_length_penalty_divides_by_the_gnmt_factor() -> None:
    assert length_penalty(3, 0.0) == 1.0
    assert length_penalty(7, 1.0) == pytest.approx(2.0)
    [h] = decode(1, length_penalty=1.0)
    assert h.score == pytest.approx(h.log_prob / length_penalty(2, 1.0))


def test_max_length_stops_a_hypothesis_without_eos() -> None:
    [h] = decode(1, max_length=1)
    assert h.token_ids == [A] and h.log_prob == pytest.approx(math.log(0.6))


@pytest.mark.parametrize("seed", range(20))
def test_greedy_is_the_argmax_chain(seed: int) -> None:
    """Beam size 1 takes an argmax shortcut; it must give what ranking the whole vocabulary
    gives: the best token each step (the first of ties), a stop at EOS or at max_length, and
    the GNMT-penalised sum of log-probabilities as the score."""
    rng = np.random.default_rng(seed)
    steps = rng.normal(size=(8, 7))  # [max 8 steps, V=7]
    steps[rng.integers(8), rng.integers(7)] = 5.0  # a clear winner somewhere
    steps[0, 1] = steps[0, 2] = steps[0].max() + 1  # a tie on the first step: token 1 wins
    log_probs = steps - np.log(np.exp(steps).sum(axis=1, keepdims=True))  # [8, V]
    max_length, alpha = int(rng.integers(1, 9)), 0.6
    state = BeamState(beam_size=1, max_length=max_length, alpha=alpha, eos_id=EOS)
    tokens, total = [], 0.0
    for t in range(max_length):
        best = int(np.argmax(log_probs[t]))
        total += float(log_probs[t, best])
        state.advance(log_probs[t : t + 1])
        if best == EOS:
            break
        tokens.append(best)
    assert state.done
    [h] = state.best(1)
    assert h.token_ids == tokens and h.token_ids[:1] in ([], [1])
    n = len(tokens) + (1 if len(tokens) < max_length else 0)  # EOS counts when generated
    assert h.log_prob == pytest.approx(total)
    assert h.score == pytest.approx(total / length_penalty(n, alpha))


def test_beam_state_reorders_rows_from_their_parents() -> None:
    state = BeamState(beam_size=2, max_length=10, alpha=0.0, eos_id=EOS)
    lp = np.log(np.full((2, 7), 1e-9))
    lp[0, [A, B]] = np.log([0.6, 0.4])
    parents, tokens = state.advance(lp)  # both from row 0: row 1 is a placeholder
    assert parents.tolist() == [0, 0] and tokens.tolist() == [A, B]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"beam_size": 0}, "beam_size"),
        ({"max_length": 0}, "max_length"),
        ({"beam_size": 2, "num_hypotheses": 3}, "num_hypotheses"),
        ({"length_penalty": -1.0}, "length_penalty"),
    ],
)
def test_bad_settings_are_invalid_input(settings: dict, message: str) -> None:
    batch = DecodeBatch(FakeModel(), BOS, EOS, PAD)
    with pytest.raises(BadDecodingSetting, match=message):
        batch.add([DecodeRequest("r", [5, EOS], **settings)])


def test_search_rules_refuse_unknown_values() -> None:
    with pytest.raises(ValueError, match="early_stopping 'sometimes'"):
        SearchRules(early_stopping="sometimes")
    with pytest.raises(ValueError, match="length_penalty_form 'cubic'"):
        SearchRules(length_penalty_form="cubic")


def _ranked_whole(log_probs: np.ndarray, cum: np.ndarray, n: int) -> tuple[np.ndarray, ...]:
    """The definition: every candidate ranked, best first, ties by the lower index."""
    scores = (cum[:, None] + log_probs.astype(np.float64)).reshape(-1)
    scores = np.where(np.isnan(scores), -np.inf, scores)
    order = np.lexsort((np.arange(scores.size), -scores))[:n]
    return order, scores[order]


@pytest.mark.parametrize("seed", range(6))
def test_best_candidates_are_every_candidate_ranked(seed: int) -> None:
    """The pruned ranking (groups of tokens, only the best groups' candidates sorted), and
    `ranked_rows` (native code where built, at each vector level), give exactly what ranking
    all k * V candidates gives: peaked and flat rows, ties, -inf (suppressed tokens), NaN,
    placeholder rows, vocabularies too small to prune."""
    rng = np.random.default_rng(seed)
    for case in range(150):
        requests, k = int(rng.integers(1, 6)), int(rng.integers(1, 5))
        vocab = int(rng.integers(1, 3000))
        kind = case % 5
        if kind == 0:  # peaked: a few tokens far ahead
            lp = rng.standard_normal((requests, k, vocab)) * rng.choice([0.1, 1.0, 10.0])
            lp[..., rng.integers(0, vocab, 3)] += rng.choice([0.0, 30.0])
        elif kind == 1:  # many exact ties
            lp = rng.integers(-3, 1, (requests, k, vocab)).astype(float)
        elif kind == 2:
            lp = rng.standard_normal((requests, k, vocab)) * 5
            lp[rng.random(lp.shape) < 0.3] = -np.inf
        elif kind == 3:
            lp = rng.standard_normal((requests, k, vocab))
            lp[rng.random(lp.shape) < 0.05] = np.nan
        else:
            lp = np.full((requests, k, vocab), -np.inf)
        lp = lp.astype(np.float32)
        cum = rng.standard_normal((requests, k)) * 3
        cum[:, 1:][rng.random((requests, k - 1)) < 0.3] = DEAD
        n = int(rng.integers(1, 12))
        # ranked_rows (native where built) on the same rows laid out among others, as a
        # batch holds them: request r's k rows start at first[r]
        rows = np.full((requests * k + 3, vocab), np.nan, np.float32)  # filler rows: never read
        first = np.arange(requests) * k + 2
        rows[first[:, None] + np.arange(k)] = lp
        many_ways = [best_candidates(lp, cum, n)]
        if n <= k * vocab:  # native: at every vector level this CPU runs
            for level in decoder.isas() if decoder else ["auto"]:
                try:
                    assert decoder is None or decoder.use_isa(level)
                    many_ways.append(ranked_rows(rows, cum, first, n))
                finally:
                    assert decoder is None or decoder.use_isa("auto")
        for ranked in many_ways:
            for r, (top, scores) in enumerate(ranked):
                want_top, want_scores = _ranked_whole(lp[r], cum[r], n)
                np.testing.assert_array_equal(top, want_top)
                np.testing.assert_array_equal(scores, want_scores)
