"""Continuous (in-flight) batching at decoder-step granularity, in the style of TGI's `Batch`.

A `DecodeBatch` holds the requests being decoded and one row per live hypothesis (beam). The
server loop is:

    batch = translator.new_batch()
    while True:
        batch.add(newly_arrived_requests)      # encoded now, decoded from the next step on
        for update in batch.step():            # one decoder call for every row
            stream(update.id, update.text)     # greedy: the text decoded this step
            if update.finished:
                reply(update.id, update.result)  # finished requests have left the batch
        batch.remove(cancelled_ids)            # e.g. clients that went away

`step` blocks on onnxruntime; run it on a worker thread from asyncio. A batch is not thread
safe: one thread drives it. The encoder can run on another thread, ahead of the batch:
`encode(model, requests, pad_id)` touches no batch, and `batch.join(encoded)` appends what it
returns (`add` is the two in one). The served model pipelines them this way, so that one
onnxruntime session encodes new sentences while the other runs decoder steps.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from core.translation.cache import KVCache
from core.translation.errors import BadDecodingSetting
from core.translation.graphs import StepModel, Window
from core.translation.search import (
    OWN_RULES,
    BeamState,
    Hypothesis,
    SearchRules,
    ranked_rows,
)


@dataclass(frozen=True)
class DecodeRequest:
    """One sentence to decode. `source_ids` ends with EOS; [] (empty input) gives an empty
    translation without touching the model. Build it with `Translator.request`, which
    tokenizes and checks the limits."""

    id: Hashable
    source_ids: Sequence[int]
    beam_size: int = 1
    max_length: int = 64  # target tokens, EOS excluded
    length_penalty: float = 0.0  # GNMT alpha; 0 = plain log-probabilities
    num_hypotheses: int = 1  # n-best, at most beam_size
    stream: bool = False  # greedy: text with every step's update, not only with the last

    def check(self) -> None:
        if self.beam_size < 1:
            raise BadDecodingSetting(f"beam_size must be at least 1, got {self.beam_size}")
        if self.max_length < 1:
            raise BadDecodingSetting(f"max_length must be at least 1, got {self.max_length}")
        if not 1 <= self.num_hypotheses <= self.beam_size:
            raise BadDecodingSetting(
                f"num_hypotheses must be in 1..beam_size "
                f"({self.beam_size}), got {self.num_hypotheses}"
            )
        if not self.length_penalty >= 0.0:
            raise BadDecodingSetting(f"length_penalty must be >= 0, got {self.length_penalty}")


@dataclass
class TranslationResult:
    """A finished request: hypotheses best first, and when it ran (batch step counters)."""

    id: Hashable
    hypotheses: list[Hypothesis]
    num_source_tokens: int
    joined_step: int  # batch step counter when it was added
    finished_step: int  # batch step counter after its last step
    steps: int  # decoder steps it took part in

    @property
    def text(self) -> str:
        return self.hypotheses[0].text if self.hypotheses else ""

    @property
    def score(self) -> float:
        return self.hypotheses[0].score if self.hypotheses else 0.0

    @property
    def token_ids(self) -> list[int]:
        return self.hypotheses[0].token_ids if self.hypotheses else []


@dataclass
class StepUpdate:
    """What one step did for one request. For streamed greedy requests `text` is the text
    decoded by this step (joining a request's `text` pieces gives its translation). Otherwise
    the text arrives whole with the last update: beam search changes its mind, and a request
    nobody streams need not be detokenized at every step."""

    id: Hashable
    step: int
    token_ids: list[int] = field(default_factory=list)  # tokens new this step (greedy only)
    text: str = ""
    finished: bool = False
    result: TranslationResult | None = None


@dataclass(frozen=True)
class EncodedSources:
    """Requests whose sources went through the encoder (`encode`), ready to `DecodeBatch.join`.
    The arrays cover the requests with a non-empty source, in order; empty ones have no row."""

    requests: list[DecodeRequest]
    cross_k: np.ndarray  # [L, B, H, S, K]
    cross_v: np.ndarray  # [L, B, H, S, K]
    src_mask: np.ndarray  # [B, S] bool

    @property
    def rows(self) -> int:
        """Decoder rows these requests take once joined: the sum of their beam sizes."""
        return sum(r.beam_size for r in self.requests)


def encode(model: StepModel, requests: Sequence[DecodeRequest], pad_id: int) -> EncodedSources:
    """Check the requests' settings and run the encoder over their sources, padded into one
    call. Reads no batch state, so it may run on another thread than the batch's."""
    for r in requests:
        r.check()
    new = [r for r in requests if r.source_ids]
    if not new:
        kv = np.zeros((0,), np.float32)
        return EncodedSources(list(requests), kv, kv, np.zeros((0, 0), bool))
    width = max(len(r.source_ids) for r in new)
    src = np.full((len(new), width), pad_id, np.int64)  # [B, S]
    for i, r in enumerate(new):
        src[i, : len(r.source_ids)] = r.source_ids
    src_mask = src != pad_id  # [B, S]
    cross_k, cross_v = model.encode(src, src_mask)  # [L, B, H, S, K] each
    return EncodedSources(list(requests), cross_k, cross_v, src_mask)


@dataclass
class _Entry:
    request: DecodeRequest
    beam: BeamState
    joined_step: int
    steps: int = 0
    emitted: str = ""  # text already streamed
    reported: int = 0  # tokens already streamed


class DecodeBatch:
    """Requests in flight and their decoder rows. See the module docstring for the loop."""

    def __init__(
        self,
        model: StepModel,
        bos_id: int,
        eos_id: int,
        pad_id: int,
        detokenize: Callable[[list[int]], str] | None = None,
        rules: SearchRules = OWN_RULES,
    ) -> None:
        self.model = model
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.rules = rules
        self.suppress = list(rules.suppress_ids)  # ids never generated (an imported Marian's pad)
        self.detokenize = detokenize
        self.cache = KVCache.empty(model.num_layers, model.num_heads, model.head_dim)
        # a backend that reads caches in place: row selections and trims stay windows
        self.windows = bool(getattr(model, "reads_windows", False))
        self.tokens = np.zeros(0, np.int64)  # [R] last token of each row
        self.positions = np.zeros(0, np.int64)  # [R] position of that token
        self._entries: list[_Entry] = []
        self._empty: list[DecodeRequest] = []
        self.step_count = 0

    def __len__(self) -> int:
        """Requests in the batch (empty inputs waiting for their answer included)."""
        return len(self._entries) + len(self._empty)

    @property
    def rows(self) -> int:
        """Decoder rows: the sum of the requests' beam sizes."""
        return len(self.tokens)

    @property
    def ids(self) -> list[Hashable]:
        return [e.request.id for e in self._entries] + [r.id for r in self._empty]

    def add(self, requests: Sequence[DecodeRequest]) -> None:
        """Encode new requests and append their rows; they decode from the next step."""
        self._check_ids(requests)
        self.join(encode(self.model, requests, self.pad_id))

    def join(self, encoded: EncodedSources) -> None:
        """Append requests encoded by `encode` (on any thread); they decode from the next
        step. Empty sources are answered by the next step without a row."""
        self._check_ids(encoded.requests)
        self._empty.extend(r for r in encoded.requests if not r.source_ids)
        new = [r for r in encoded.requests if r.source_ids]
        if not new:
            return
        beams = np.repeat(np.arange(len(new)), [r.beam_size for r in new])  # [R_new]
        if self.windows:  # each beam reads its sentence's keys and values where they are
            cross_k, cross_v = Window.of(encoded.cross_k), Window.of(encoded.cross_v)
        else:
            cross_k, cross_v = encoded.cross_k, encoded.cross_v
        rows = KVCache.for_sources(cross_k[:, beams], cross_v[:, beams], encoded.src_mask[beams])
        self.cache = self.cache.concat(rows, windows=self.windows)
        self.tokens = np.concatenate([self.tokens, np.full(len(beams), self.bos_id, np.int64)])
        self.positions = np.concatenate([self.positions, np.zeros(len(beams), np.int64)])
        self._entries.extend(
            _Entry(
                r,
                BeamState(
                    r.beam_size,
                    r.max_length,
                    r.length_penalty,
                    self.eos_id,
                    self.rules,
                    r.num_hypotheses,
                ),
                self.step_count,
            )
            for r in new
        )

    def _check_ids(self, requests: Sequence[DecodeRequest]) -> None:
        known = set(self.ids)
        for r in requests:
            if r.id in known:
                raise ValueError(f"request id {r.id!r} is already in the batch")
            known.add(r.id)

    def step(self) -> list[StepUpdate]:
        """One decoder call for every row. Returns one update per request; finished requests
        (including empty inputs) are answered and leave the batch."""
        updates = [self._answer_empty(r) for r in self._empty]
        self._empty = []
        if not self._entries:
            return updates
        c = self.cache
        log_probs, present_k, present_v = self.model.step(
            self.tokens[:, None],
            self.positions[:, None],
            c.past_k,
            c.past_v,
            c.past_mask,
            c.cross_k,
            c.cross_v,
            c.src_mask,
        )  # [R, V], [L, R, H, P+1, K] x2
        self.cache = c.appended(present_k, present_v)
        self.step_count += 1
        if self.suppress:  # after the log-softmax, as Hugging Face's bad_words_ids
            log_probs[:, self.suppress] = -np.inf
        pick_ids, pick_lps = self._greedy_picks(log_probs)
        ranked = self._rank_beams(log_probs)
        order: list[int] = []  # [R'] the old row each next row continues
        next_tokens: list[int] = []  # [R']
        live = []
        offset = 0
        for i, entry in enumerate(self._entries):
            k = entry.request.beam_size
            if k == 1:
                token = entry.beam.greedy_step(pick_ids[offset], pick_lps[offset])
                parents, tokens = [offset], [token]
            else:
                parent_rows, new_tokens = entry.beam.extend(*ranked[i], log_probs.shape[1])
                parents, tokens = (parent_rows + offset).tolist(), new_tokens.tolist()
            entry.steps += 1
            updates.append(self._update(entry))
            if not entry.beam.done:
                order += parents
                next_tokens += tokens
                live.append(entry)
            offset += k
        # no request left: each row still belongs to the request it did, whose beams share
        # one source, so the source keys and values stay as they are
        same_sources = len(live) == len(self._entries)
        self._entries = live
        if order != list(range(self.rows)):
            rows = np.array(order, np.int64)  # [R']
            self.cache = self.cache.take(rows, same_sources, self.windows)
            if len(rows) < len(self.positions):
                self.cache = self.cache.trim()
            self.positions = self.positions[rows]
        self.positions = self.positions + 1
        self.tokens = np.array(next_tokens, np.int64)
        return updates

    def _greedy_picks(self, log_probs: np.ndarray) -> tuple[list[int], list[float]]:
        """Every row's best token and its log-probability, in one call, when any request is
        greedy (greedy rows take them; beam rows ignore them); empty lists when none is."""
        if all(e.request.beam_size > 1 for e in self._entries):
            return [], []
        picks = log_probs.argmax(axis=1)  # [R]
        return picks.tolist(), log_probs[np.arange(len(picks)), picks].tolist()

    def _rank_beams(self, log_probs: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Every beam request's best 2k candidates (`BeamState.extend`'s input), ranked in
        one pass per beam size: entry index -> (flat indices into its [k, V], their cumulative
        scores)."""
        starts: dict[int, list[tuple[int, int]]] = {}  # beam size -> (entry index, first row)
        offset = 0
        for i, entry in enumerate(self._entries):
            k = entry.request.beam_size
            if k > 1:
                starts.setdefault(k, []).append((i, offset))
            offset += k
        ranked: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for k, group in starts.items():
            first = np.array([row for _, row in group], np.int64)  # [N]
            cum = np.stack([self._entries[i].beam.cum for i, _ in group])  # [N, k]
            for (i, _), best in zip(group, ranked_rows(log_probs, cum, first, 2 * k), strict=True):
                ranked[i] = best
        return ranked

    def filter(self, keep: Iterable[Hashable]) -> None:
        """Keep only the requests whose ids are in `keep` (TGI's filter); drop the rest."""
        keep = set(keep)
        self._empty = [r for r in self._empty if r.id in keep]
        rows, live, offset = [], [], 0
        for entry in self._entries:
            k = entry.request.beam_size
            if entry.request.id in keep:
                rows.append(np.arange(offset, offset + k))
                live.append(entry)
            offset += k
        if len(live) == len(self._entries):
            return
        idx = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        self._entries = live
        self.cache = self.cache.take(idx, windows=self.windows).trim()
        self.tokens, self.positions = self.tokens[idx], self.positions[idx]

    def remove(self, ids: Iterable[Hashable]) -> None:
        """Drop these requests (cancelled); unknown ids are ignored."""
        gone = set(ids)
        self.filter(i for i in self.ids if i not in gone)

    # -- results ----------------------------------------------------------------------------

    def _text(self, ids: list[int]) -> str:
        return self.detokenize(ids) if self.detokenize else ""

    def _update(self, entry: _Entry) -> StepUpdate:
        r, beam = entry.request, entry.beam
        if beam.done:
            hyps = beam.best(r.num_hypotheses)
            for h in hyps:
                h.text = self._text(h.token_ids)
            result = TranslationResult(
                r.id, hyps, len(r.source_ids), entry.joined_step, self.step_count, entry.steps
            )
            new = result.token_ids[entry.reported :] if r.beam_size == 1 else []
            return StepUpdate(
                r.id, self.step_count, new, self._delta(entry, result.text), True, result
            )
        if r.beam_size > 1:
            return StepUpdate(r.id, self.step_count)
        tokens = beam.tokens[0]
        entry.reported = len(tokens)
        text = self._delta(entry, self._text(tokens)) if r.stream else ""
        return StepUpdate(r.id, self.step_count, tokens[-1:], text)

    @staticmethod
    def _delta(entry: _Entry, text: str) -> str:
        """Text not yet emitted; held back while the new text does not extend the old (a
        piece boundary that detokenizes differently once more pieces follow)."""
        if not text.startswith(entry.emitted):
            return ""
        delta, entry.emitted = text[len(entry.emitted) :], text
        return delta

    def _answer_empty(self, r: DecodeRequest) -> StepUpdate:
        hyps = [Hypothesis([], 0.0, 0.0, "")]
        result = TranslationResult(r.id, hyps, 0, self.step_count, self.step_count, 0)
        return StepUpdate(r.id, self.step_count, finished=True, result=result)
