"""A loaded translator version: tokenizer, graphs, limits, and whole-sentence helpers on top
of the step-level `DecodeBatch`."""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from core.config_checks import version_file
from core.translation.batch import (
    DecodeBatch,
    DecodeRequest,
    EncodedSources,
    StepUpdate,
    TranslationResult,
    encode,
)
from core.translation.errors import BadDecodingSetting, SourceTooLong
from core.translation.graphs import StepModel
from core.translation.spec import SpecError, TranslatorSpec, read_config
from core.translation.tokenizer import Tokenizer
from core.translation.vocab_tokenizer import VocabTokenizer
from protos.inference import model_config_pb2 as mc

AnyTokenizer = Tokenizer | VocabTokenizer  # a joint SentencePiece model, or Marian's three files

CHARS_PER_TOKEN = 32  # the character cap of a source is this times max_source_tokens


class RequestBuilder:
    """Tokenizes sentences and checks them against a version's limits and defaults: what a
    server process needs of a translator when another process holds the graphs."""

    def __init__(self, tokenizer: AnyTokenizer, spec: TranslatorSpec) -> None:
        self.tokenizer, self.spec = tokenizer, spec
        if tokenizer.source_normalization != spec.source_normalization:
            raise SpecError(
                f"tokenizer normalises sources by {tokenizer.source_normalization!r}, the "
                f"config by {spec.source_normalization!r}"
            )
        special = (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)
        if special != (spec.bos_id, spec.eos_id, spec.pad_id):
            raise SpecError(
                f"tokenizer bos/eos/pad ids {special} differ from the config's "
                f"{(spec.bos_id, spec.eos_id, spec.pad_id)}"
            )
        self._ids = itertools.count()
        # A sentence of more characters than this is refused before it is tokenized: no
        # SentencePiece piece in these vocabularies is longer than 16 characters, so twice
        # that per token leaves room for spacing that normalisation collapses.
        self.max_source_chars = CHARS_PER_TOKEN * spec.max_source_tokens

    @classmethod
    def load(cls, version_dir: Path, config: mc.ModelConfig | None = None) -> RequestBuilder:
        """The tokenizer of `<model>/<version>/` and the limits of `config` (default:
        `<model>/config.pbtxt`)."""
        version_dir = Path(version_dir)
        spec = TranslatorSpec.from_config(
            config if config is not None else read_config(version_dir.parent)
        )

        def file(key: str) -> Path:
            return version_file(version_dir, getattr(spec, key), f"parameter {key!r}")

        if spec.vocab:  # an imported Marian model
            try:
                tokenizer: AnyTokenizer = VocabTokenizer.from_files(
                    file("tokenizer"),
                    file("target_tokenizer"),
                    file("vocab"),
                    spec.source_normalization,
                )
            except ValueError as err:
                raise SpecError(str(err)) from None
        else:
            tokenizer = Tokenizer.from_file(file("tokenizer"), spec.source_normalization)
        return cls(tokenizer, spec)

    def request(
        self,
        text: str,
        id: Hashable | None = None,
        beam_size: int | None = None,
        max_length: int | None = None,
        length_penalty: float | None = None,
        num_hypotheses: int = 1,
    ) -> DecodeRequest:
        """Tokenize and check one sentence. Raises SourceTooLong (naming the limit) or
        BadDecodingSetting, both `InvalidInput`. Whitespace-only text becomes an empty
        request, answered with an empty translation."""
        if len(text) > self.max_source_chars:  # before tokenizing: bounded work per sentence
            raise SourceTooLong(len(text), self.max_source_chars, unit="characters")
        source = self.tokenizer.encode_source(text)
        if len(source) > self.spec.max_source_tokens:
            raise SourceTooLong(len(source), self.spec.max_source_tokens)
        beam = self.spec.default_beam_size if beam_size is None else beam_size
        if length_penalty is None:
            length_penalty = self.spec.default_length_penalty
        cap = self.spec.max_target_tokens
        if max_length is None:
            max_length = min(cap, 3 * len(source) + 10)
        elif max_length > cap:
            raise BadDecodingSetting(
                f"max_length {max_length} exceeds this model's max_target_tokens {cap}"
            )
        if self.spec.max_batch_size and beam > self.spec.max_batch_size:
            raise BadDecodingSetting(
                f"beam_size {beam} exceeds max_batch_size {self.spec.max_batch_size}"
            )
        request = DecodeRequest(
            next(self._ids) if id is None else id,
            source,
            beam,
            max_length,
            length_penalty,
            num_hypotheses,
        )
        request.check()
        return request


class Translator:
    """Tokenize -> encoder -> cached decoder steps -> detokenize.

    Per-request settings: `beam_size` (1 = greedy; default: the config's `default_beam_size`),
    `max_length` (target tokens; default min(max_target_tokens, 3 * source tokens + 10)),
    `length_penalty` (GNMT alpha, 0 = none; default: the config's `default_length_penalty`,
    chosen on validation at training), `num_hypotheses` (n-best, <= beam_size).
    """

    def __init__(self, model: StepModel, tokenizer: AnyTokenizer, spec: TranslatorSpec) -> None:
        self.model, self.tokenizer, self.spec = model, tokenizer, spec
        self.requests = RequestBuilder(tokenizer, spec)

    def new_batch(self) -> DecodeBatch:
        """An empty continuous batch on this model (see `core.translation.batch`)."""
        spec = self.spec
        return DecodeBatch(
            self.model,
            spec.bos_id,
            spec.eos_id,
            spec.pad_id,
            self.tokenizer.decode,
            spec.search,
        )

    def encode(self, requests: Sequence[DecodeRequest]) -> EncodedSources:
        """Run the encoder over requests for a later `DecodeBatch.join`; safe to call on
        another thread than the one driving the batch (onnxruntime sessions are)."""
        return encode(self.model, requests, self.spec.pad_id)

    def request(
        self,
        text: str,
        id: Hashable | None = None,
        beam_size: int | None = None,
        max_length: int | None = None,
        length_penalty: float | None = None,
        num_hypotheses: int = 1,
    ) -> DecodeRequest:
        """`RequestBuilder.request`: tokenize and check one sentence."""
        return self.requests.request(
            text, id, beam_size, max_length, length_penalty, num_hypotheses
        )

    def run(
        self, requests: Sequence[DecodeRequest], max_rows: int | None = None
    ) -> list[TranslationResult]:
        """Decode requests to the end with continuous batching: a finished request's rows are
        refilled from the waiting ones at the next step. `max_rows` caps the decoder rows
        (default: the config's max_batch_size, or 64). Results are in request order."""
        cap = max_rows or self.spec.max_batch_size or 64
        waiting = list(requests)[::-1]
        batch = self.new_batch()
        results: dict[Hashable, TranslationResult] = {}
        while waiting or len(batch):
            joining: list[DecodeRequest] = []
            rows = batch.rows
            while waiting and (rows + waiting[-1].beam_size <= cap or rows == 0):
                rows += waiting[-1].beam_size
                joining.append(waiting.pop())
            if joining:
                batch.add(joining)
            for update in batch.step():
                if update.result is not None:
                    results[update.id] = update.result
        return [results[r.id] for r in requests]

    def translate(
        self,
        texts: Sequence[str],
        beam_size: int | None = None,
        max_length: int | None = None,
        length_penalty: float | None = None,
        num_hypotheses: int = 1,
        max_rows: int | None = None,
    ) -> list[TranslationResult]:
        """Translate sentences (see `request` for the settings); one result per sentence,
        in order. Sources are batched longest first, which wastes less padding."""
        requests = [
            self.request(t, i, beam_size, max_length, length_penalty, num_hypotheses)
            for i, t in enumerate(texts)
        ]
        by_length = sorted(requests, key=lambda r: -len(r.source_ids))
        done = {r.id: res for r, res in zip(by_length, self.run(by_length, max_rows), strict=True)}
        return [done[r.id] for r in requests]

    def stream(self, text: str, **settings: int | float | None) -> Iterator[StepUpdate]:
        """Decode one sentence alone and yield its update after every step."""
        batch = self.new_batch()
        batch.add([replace(self.request(text, **settings), stream=True)])
        while len(batch):
            yield from batch.step()
