"""Beam search for one request, one step at a time; greedy search is beam size 1.

Each request keeps `beam_size` live hypotheses (decoder rows). A step scores every extension of
every live hypothesis, keeps the best `beam_size` that do not end in EOS, and finishes those
ranked in the top `beam_size` that do (fairseq's rule). Scores are sums of log-probabilities
divided by the GNMT length penalty ((5 + n) / 6) ** alpha, where n is the number of tokens
generated (EOS included); alpha = 0 leaves plain log-probabilities. An imported Marian model
uses Hugging Face's form instead (`length_penalty_form` "length"): n ** alpha, and its
stopping rule below.

A request is done when no live hypothesis can still enter the `num_hypotheses` best finished
ones it returns: log-probabilities only fall, so a live hypothesis ends at best at its current
sum divided by the largest penalty it can get, the one at `max_length` (an exact bound, not a
heuristic: searching on cannot change what is returned, so a 1-best request stops as soon as
its best hypothesis is settled, as CTranslate2's does). Counting finished hypotheses alone is
not enough: weak beams that stop early would end the search before the best hypothesis has
finished. An imported model stops as `generate` does with its generation config's
`early_stopping` (EARLY_STOPPING), which counts `beam_size` finished hypotheses whatever is
returned: False divides the best live sum by the current length's penalty instead (a
heuristic when alpha > 0), True stops once `beam_size` hypotheses have finished, "never" is
the bound above. Greedy search (beam 1) stops at its EOS.
Hypotheses that reach `max_length` tokens finish without EOS.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.native import decoder as _native  # the ranking in native code; None when not built

DEAD = -1e9  # cumulative score of a placeholder hypothesis (beams start as one live row)


LENGTH_PENALTY_FORMS = ("gnmt", "length")
# When beam search stops: "" seqserve's exact bound; otherwise transformers' early_stopping
# (an imported model's generation config): "false" its heuristic at the current length,
# "true" as soon as beam_size hypotheses have finished, "never" the bound at max_length.
EARLY_STOPPING = ("", "false", "true", "never")


@dataclass(frozen=True)
class SearchRules:
    """A model's search, where it is not seqserve's own (an imported Marian's): config.pbtxt
    keeps each field as a parameter of the same name."""

    length_penalty_form: str = "gnmt"  # LENGTH_PENALTY_FORMS
    early_stopping: str = ""  # EARLY_STOPPING
    suppress_ids: tuple[int, ...] = ()  # never generated (Marian: pad)

    def __post_init__(self) -> None:  # config.pbtxt's values are checked earlier, by the spec
        for name, value, known in (
            ("length_penalty_form", self.length_penalty_form, LENGTH_PENALTY_FORMS),
            ("early_stopping", self.early_stopping, EARLY_STOPPING),
        ):
            if value not in known:
                raise ValueError(f"{name} {value!r} is not one of {', '.join(map(repr, known))}")


OWN_RULES = SearchRules()  # seqserve's own: GNMT, the exact stopping bound, nothing suppressed


GROUP = 32  # `best_candidates` cuts each row's V tokens into V / GROUP groups of about this many


def best_candidates(
    log_probs: np.ndarray, cum: np.ndarray, n: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """log_probs [N, k, V] float32 (N requests' rows), cum [N, k] float64 (each row's sum so
    far) -> per request (the flat indices row * V + token of its n best candidates
    cum[row] + log_probs[row, token], best first, ties by the lower index; their scores [n]
    float64).

    Exact, in a few vectorised passes for every request at once, where partitioning each
    request's k * V candidates (`np.argpartition`, several times slower per element than a
    vectorised max) took a third of a beam step. Each row's tokens fall into G groups (token t
    in group t mod G, so that the groups' maxima are one elementwise pass); the n best
    candidates lie in the n groups with the best maxima (a candidate outside them is beaten
    by those n maxima), so only those groups' candidates are ranked. A request whose choice
    a tie at the n-th group or candidate could change, or with a NaN, is ranked whole
    (`rank_whole`)."""
    requests, k, vocab = log_probs.shape
    groups = vocab // GROUP  # G
    if n >= groups * k:  # a small vocabulary: nothing to prune
        return [rank_whole(log_probs[r], cum[r], n) for r in range(requests)]
    depth, rest = divmod(vocab, groups)  # tokens per group; the first `rest` have one more
    maxima = log_probs[:, :, : depth * groups].reshape(requests, k, depth, groups).max(2)
    if rest:  # [N, k, G]
        maxima[:, :, :rest] = np.maximum(maxima[:, :, :rest], log_probs[:, :, depth * groups :])
    group_best = (cum[:, :, None] + maxima).reshape(requests, k * groups)  # [N, k*G]
    chosen = np.argpartition(-group_best, n, axis=1)[:, : n + 1]  # [N, n+1]: n best, next
    chosen_best = np.take_along_axis(group_best, chosen, 1)  # [N, n+1]
    row, group = np.divmod(chosen[:, :n], groups)  # [N, n] each
    token = group[:, :, None] + groups * np.arange(depth + 1)  # [N, n, depth+1]
    inside = token < vocab
    token = np.minimum(token, vocab - 1)
    request = np.arange(requests)[:, None]  # [N, 1]
    values = log_probs[request[:, :, None], row[:, :, None], token]  # [N, n, depth+1]
    score = cum[request, row][:, :, None] + np.where(inside, values, -np.inf)
    score = score.reshape(requests, -1)  # [N, c]
    flat = (row[:, :, None] * vocab + token).reshape(requests, -1)  # [N, c]
    best = np.argpartition(-score, n, axis=1)[:, : n + 1]  # [N, n+1]: n best, then next
    best_score = np.take_along_axis(score, best, 1)  # [N, n+1]
    # a tie at the boundary (the next group or candidate as good as the n-th), or a NaN
    unsure = (
        (chosen_best[:, n] >= chosen_best[:, :n].min(axis=1))
        | (best_score[:, n] >= best_score[:, :n].min(axis=1))
        | np.isnan(group_best).any(axis=1)
    )
    top, top_score = best[:, :n], best_score[:, :n]  # [N, n] unordered
    top_flat = np.take_along_axis(flat, top, 1)  # [N, n]
    order = np.lexsort((top_flat, -top_score))  # [N, n] per request: by score, then index
    top_flat = np.take_along_axis(top_flat, order, 1)
    top_score = np.take_along_axis(top_score, order, 1)
    return [
        rank_whole(log_probs[r], cum[r], n) if unsure[r] else (top_flat[r], top_score[r])
        for r in range(requests)
    ]


def ranked_rows(
    log_probs: np.ndarray, cum: np.ndarray, first: np.ndarray, n: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """`best_candidates` for requests whose k rows start at `first` [N] in log_probs [R, V]
    (cum [N, k]): in native code where core/native is built (the same ranking; a test holds
    the two equal on peaked, flat, tied, -inf and NaN rows), else in numpy."""
    if _native is not None and n <= cum.shape[1] * log_probs.shape[1]:
        index, score = _native.best_candidates(log_probs, cum, first, n)
        return list(zip(index, score, strict=True))
    k = cum.shape[1]
    if len(first) * k == len(log_probs):  # every row, in order: a view, not a copy
        rows = log_probs.reshape(len(first), k, log_probs.shape[1])  # [N, k, V]
    else:
        rows = log_probs[first[:, None] + np.arange(k)]  # [N, k, V]
    return best_candidates(rows, cum, n)


def rank_whole(log_probs: np.ndarray, cum: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """One request's n best candidates as `best_candidates` gives them, ranking all k * V:
    log_probs [k, V] float32, cum [k] float64 -> (flat indices [n], scores [n] float64)."""
    whole = (cum[:, None] + log_probs.astype(np.float64)).reshape(-1)  # [k*V]
    whole = np.where(np.isnan(whole), -np.inf, whole)
    n = min(n, whole.size)
    nth = np.partition(whole, whole.size - n)[whole.size - n]  # the n-th best value
    idx = np.flatnonzero(whole >= nth)  # [c >= n]: ties at the n-th all kept
    idx = idx[np.lexsort((idx, -whole[idx]))[:n]]
    return idx, whole[idx]


def length_penalty(length: int, alpha: float, form: str = "gnmt") -> float:
    """GNMT's ((5 + length) / 6) ** alpha, or "length": length ** alpha (Hugging Face's and
    Marian's)."""
    if not alpha:
        return 1.0
    return (float(length) if form == "length" else (5.0 + length) / 6.0) ** alpha


@dataclass
class Hypothesis:
    """One finished candidate: its tokens (EOS excluded), length-penalised score and raw sum
    of log-probabilities. `text` is filled in when a detokenizer is at hand."""

    token_ids: list[int]
    score: float
    log_prob: float
    text: str = ""


class BeamState:
    """The search state of one request.

    `tokens[i]` is live hypothesis i (row i of the request's block); `advance` consumes the
    log-probabilities of those rows and says which old row each new row continues.
    """

    def __init__(
        self,
        beam_size: int,
        max_length: int,
        alpha: float,
        eos_id: int,
        rules: SearchRules = OWN_RULES,
        num_hypotheses: int = 1,
    ) -> None:
        self.beam_size, self.max_length, self.alpha, self.eos_id = (
            beam_size,
            max_length,
            alpha,
            eos_id,
        )
        self.form, self.early_stopping = rules.length_penalty_form, rules.early_stopping
        # how many finished hypotheses must be settled: those returned under an exact bound,
        # generate's count (beam_size) under its heuristics
        exact = self.early_stopping in ("", "never")
        self.settle = num_hypotheses if exact else beam_size
        self.tokens: list[list[int]] = [[] for _ in range(beam_size)]
        self.cum = np.full(beam_size, DEAD, np.float64)  # [k] cumulative log-probabilities
        self.cum[0] = 0.0  # all rows start identical: only the first one is live
        self.finished: list[Hypothesis] = []
        self.length = 0  # tokens generated so far by every live hypothesis
        self.done = False

    def _finish(self, tokens: list[int], log_prob: float, eos: bool = True) -> None:
        # "length" counts the EOS that Hugging Face forces at max_length, where GNMT counts
        # what was generated
        n = self.length + (not eos and self.form == "length")
        score = log_prob / length_penalty(n, self.alpha, self.form)
        self.finished.append(Hypothesis(list(tokens), float(score), float(log_prob)))

    def advance(self, log_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """log_probs [k, V] of this request's rows -> (parents [k] int64: the old row each new
        row continues, next_tokens [k] int64). Sets `done` when the request has finished; the
        returned arrays are then meaningless. `DecodeBatch` ranks every request's candidates
        in one pass (`best_candidates`) and calls `extend`; this is the two for one request."""
        k, vocab = log_probs.shape
        if k == 1:
            return self._greedy(log_probs[0])
        [(top, scores)] = best_candidates(log_probs[None], self.cum[None], 2 * k)
        return self.extend(top, scores, vocab)

    def extend(
        self, top: np.ndarray, scores: np.ndarray, vocab: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """`advance` from this request's best 2k candidates: `top` [n] flat indices into
        [k, V] (row * V + token), best first with ties by index, and their cumulative
        `scores` [n] (the row's sum plus the token's log-probability)."""
        k = self.beam_size
        self.length += 1
        parents, tokens, cum = [], [], []
        for rank, (flat, score) in enumerate(zip(top.tolist(), scores.tolist(), strict=True)):
            if score <= DEAD / 2:
                break  # only placeholder rows' extensions remain
            parent, token = divmod(flat, vocab)
            if token == self.eos_id:
                if rank < k:
                    self._finish(self.tokens[parent], score)
                continue
            parents.append(parent)
            tokens.append(token)
            cum.append(score)
            if len(parents) == k:
                break
        new_tokens = [[*self.tokens[p], t] for p, t in zip(parents, tokens, strict=True)]
        if not parents or self._settled(max(cum)):
            self.done = True
        elif self.length >= self.max_length:
            for hyp, score in zip(new_tokens, cum, strict=True):
                self._finish(hyp, score, eos=False)
            self.done = True
        if self.done:
            return np.zeros(k, np.int64), np.zeros(k, np.int64)
        while len(parents) < k:  # fewer live candidates than beams: pad with dead rows
            parents.append(parents[0])
            tokens.append(tokens[0])
            cum.append(DEAD)
            new_tokens.append(list(new_tokens[0]))
        self.tokens, self.cum = new_tokens, np.asarray(cum, np.float64)
        return np.asarray(parents, np.int64), np.asarray(tokens, np.int64)

    def _greedy(self, log_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`advance` for beam size 1, without ranking the whole vocabulary: the same result
        (the first of tied maxima wins in both), an argmax instead of a partition of V."""
        token = int(log_probs.argmax())  # [V] -> best token
        next_token = self.greedy_step(token, float(log_probs[token]))
        return np.zeros(1, np.int64), np.array([next_token], np.int64)

    def greedy_step(self, token: int, log_prob: float) -> int:
        """Beam size 1, once the caller has taken the argmax (`DecodeBatch` takes every greedy
        row's in one call): extend by `token` whose log-probability is `log_prob`. Returns the
        row's next input token (0 once done)."""
        score = float(self.cum[0]) + log_prob
        self.length += 1
        if token == self.eos_id:
            self._finish(self.tokens[0], score)
            self.done = True
            return 0
        self.tokens[0].append(token)
        self.cum[0] = score
        if self.length >= self.max_length:
            self._finish(self.tokens[0], score, eos=False)
            self.done = True
            return 0
        return token

    def _settled(self, best_live: float) -> bool:
        """No live hypothesis can beat the k-th best finished one (k = `settle`)."""
        k = self.settle
        if len(self.finished) < k:
            return False
        kth = sorted((h.score for h in self.finished), reverse=True)[k - 1]
        stop = self.early_stopping
        if stop == "true":
            return True
        if stop == "false" or (stop == "never" and self.alpha <= 0):  # at this length
            return best_live / length_penalty(self.length, self.alpha, self.form) <= kth
        # the largest penalty a live hypothesis can get; "length" counts the forced EOS
        longest = self.max_length + (self.form == "length")
        return best_live / length_penalty(longest, self.alpha, self.form) <= kth

    def best(self, n: int) -> list[Hypothesis]:
        """The n best finished hypotheses, best first (n at most `num_hypotheses`: no more
        are settled)."""
        return sorted(self.finished, key=lambda h: -h.score)[:n]
