"""Beam search for one request, one step at a time; greedy search is beam size 1.

Each request keeps `beam_size` live hypotheses (decoder rows). A step scores every extension of
every live hypothesis, keeps the best `beam_size` that do not end in EOS, and finishes those
ranked in the top `beam_size` that do (fairseq's rule). Scores are sums of log-probabilities
divided by the GNMT length penalty ((5 + n) / 6) ** alpha, where n is the number of tokens
generated (EOS included); alpha = 0 leaves plain log-probabilities. An imported Marian model
uses Hugging Face's form instead (`length_penalty_form` "length"): n ** alpha, and its
stopping rule below.

A request is done when no live hypothesis can still enter its `beam_size` best finished ones:
log-probabilities only fall, so a live hypothesis ends at best at its current sum divided by
the largest penalty it can get, the one at `max_length` (an exact bound, not a heuristic).
Counting finished hypotheses alone is not enough: weak beams that stop early would end the
search before the best hypothesis has finished. An imported model stops as `generate` does
with its generation config's `early_stopping` (EARLY_STOPPING): False divides the best live
sum by the current length's penalty instead (a heuristic when alpha > 0), True stops once
`beam_size` hypotheses have finished, "never" is the bound above. Greedy search (beam 1)
stops at its EOS.
Hypotheses that reach `max_length` tokens finish without EOS.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
    ) -> None:
        self.beam_size, self.max_length, self.alpha, self.eos_id = (
            beam_size,
            max_length,
            alpha,
            eos_id,
        )
        self.form, self.early_stopping = rules.length_penalty_form, rules.early_stopping
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
        returned arrays are then meaningless."""
        k, vocab = log_probs.shape
        if k == 1:
            return self._greedy(log_probs[0])
        cand = (self.cum[:, None] + log_probs).ravel()  # [k, V] -> [k*V]
        n = min(2 * k, cand.size)
        top = np.argpartition(-cand, n - 1)[:n]  # best n, unordered
        top = top[np.lexsort((top, -cand[top]))]  # by score, ties by index: deterministic
        self.length += 1
        parents, tokens, cum = [], [], []
        for rank, flat in enumerate(top.tolist()):
            score = float(cand[flat])
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
        if not parents or self._settled(k, max(cum)):
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

    def _settled(self, k: int, best_live: float) -> bool:
        """No live hypothesis can beat the k-th best finished one."""
        if len(self.finished) < k:
            return False
        if k == 1:
            return True
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
        """The n best finished hypotheses, best first."""
        return sorted(self.finished, key=lambda h: -h.score)[:n]
