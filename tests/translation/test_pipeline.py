"""The served translator's two-thread pipeline (`core.translation.pipeline`) on fake models
with known behaviour: it delivers what decoding alone gives, drops cancelled requests from the
running batch, streams text step by step, fails only the requests a broken step held, and
expires requests whose queue time ran out before they could join."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from core.translation import DecodeBatch, DecodeRequest, Translator
from core.translation.pipeline import STEPS, WAITING, Delivery, Pipeline
from tests.translation.fakes import BOS, EOS, PAD, B, C, LengthModel, log


def source(n: int) -> list[int]:
    return [7] * n + [EOS]


class SlowLengthModel(LengthModel):
    """LengthModel whose steps take 2 ms, so that a test can act while a request decodes."""

    def step(self, *args: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        time.sleep(0.002)
        return super().step(*args)


class WordsModel(LengthModel):
    """Alternates B and C (real words in the tiny tokenizer) until the source length."""

    def next_log_probs(self, last: int, position: int, src_len: int) -> np.ndarray:
        if position >= src_len - 1:
            return log({EOS: 1.0})
        return log({B: 0.9, C: 0.1}) if position % 2 == 0 else log({C: 0.9, B: 0.1})


class BrokenFirstStep(LengthModel):
    """Raises on its first decoder step only."""

    def step(self, *args: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self.calls:
            self.calls.append(-1)
            raise RuntimeError("a broken step")
        return super().step(*args)


class Sink:
    """Collects what a pipeline delivers, on its threads."""

    def __init__(self) -> None:
        self.results: dict = {}
        self.pieces: dict = defaultdict(list)
        self.failed: list = []
        self.expired: list = []  # (id, seconds queued)
        self.queued: list[int] = []
        self.executions: list[tuple[int, int, int, int]] = []
        self._cond = threading.Condition()

    def deliver(self, delivery: Delivery) -> None:
        with self._cond:
            for request_id, text, result in delivery.updates:
                if text:
                    self.pieces[request_id].append(text)
                if result is not None:
                    self.results[request_id] = result
            self.queued += delivery.queued_ns
            self.executions += delivery.executions
            self._cond.notify_all()

    def fail(self, ids: list) -> None:
        with self._cond:
            self.failed += ids
            self._cond.notify_all()

    def expire(self, expired: list) -> None:
        with self._cond:
            self.expired += expired
            self._cond.notify_all()

    def wait_for(self, ids: list) -> None:
        with self._cond:
            assert self._cond.wait_for(
                lambda: all(
                    i in self.results or i in self.failed or i in dict(self.expired) for i in ids
                ),
                timeout=30,
            )


@pytest.fixture
def make_pipeline(translator: Translator) -> Iterator[Callable]:
    pipelines: list[Pipeline] = []

    def make(model: LengthModel, max_rows: int = 8) -> tuple[Pipeline, Sink]:
        sink = Sink()
        pipeline = Pipeline(
            Translator(model, translator.tokenizer, translator.spec),
            max_rows,
            sink.deliver,
            sink.fail,
            sink.expire,
        )
        pipeline.start()
        pipelines.append(pipeline)
        return pipeline, sink

    yield make
    for pipeline in pipelines:
        pipeline.stop()


def _alone(request: DecodeRequest) -> list:
    batch = DecodeBatch(LengthModel(), BOS, EOS, PAD)
    batch.add([request])
    while len(batch):
        for update in batch.step():
            if update.finished:
                return update.result.hypotheses
    raise AssertionError("never finished")


def test_delivers_what_decoding_alone_gives(make_pipeline: Callable) -> None:
    pipeline, sink = make_pipeline(LengthModel(), max_rows=6)
    requests = [
        DecodeRequest(i, source(n), beam_size=b, max_length=40)
        for i, (n, b) in enumerate([(3, 1), (9, 2), (1, 1), (6, 4), (4, 1)])
    ]
    requests.append(DecodeRequest(5, []))
    now = time.monotonic()
    pipeline.submit([(r, now, None) for r in requests[:2]])
    pipeline.submit([(r, now, None) for r in requests[2:]])
    sink.wait_for([r.id for r in requests])
    assert not sink.failed
    for r in requests[:-1]:
        got = sink.results[r.id].hypotheses
        assert [(h.token_ids, h.score) for h in got] == [(h.token_ids, h.score) for h in _alone(r)]
    assert sink.results[5].text == ""  # an empty source: an empty translation
    assert len(sink.queued) == len(requests) and min(sink.queued) >= 0
    assert max(rows for rows, *_ in sink.executions) <= 6  # max_rows holds
    assert pipeline.counters[STEPS] == len(sink.executions)
    assert pipeline.counters[WAITING] == 0


def test_a_cancelled_request_leaves_the_running_batch(make_pipeline: Callable) -> None:
    model = SlowLengthModel()
    pipeline, sink = make_pipeline(model)
    pipeline.submit([(DecodeRequest("long", source(60), max_length=64), time.monotonic(), None)])
    deadline = time.monotonic() + 10
    while pipeline.counters[STEPS] < 3:  # the long request is decoding
        assert time.monotonic() < deadline
        time.sleep(0.001)
    pipeline.cancel(["long"])
    pipeline.submit([(DecodeRequest("short", source(2), max_length=10), time.monotonic(), None)])
    sink.wait_for(["short"])
    steps = pipeline.counters[STEPS]
    time.sleep(0.05)
    assert pipeline.counters[STEPS] == steps < 30, "decoding stopped with the short request"
    assert "long" not in sink.results and model.calls[-1] == 1  # the short one, alone


def test_streamed_text_arrives_step_by_step(make_pipeline: Callable) -> None:
    pipeline, sink = make_pipeline(WordsModel())
    now = time.monotonic()
    pipeline.submit(
        [
            (DecodeRequest("streamed", source(6), max_length=20, stream=True), now, None),
            (DecodeRequest("whole", source(6), max_length=20), now, None),
        ]
    )
    sink.wait_for(["streamed", "whole"])
    text = sink.results["streamed"].text
    assert text == sink.results["whole"].text and len(sink.results["whole"].token_ids) == 6
    assert len(sink.pieces["streamed"]) >= 5 and "".join(sink.pieces["streamed"]) == text
    assert sink.pieces["whole"] == [text]  # not streamed: the text comes with the result


def test_a_broken_step_fails_its_requests_and_the_next_ones_decode(make_pipeline: Callable) -> None:
    pipeline, sink = make_pipeline(BrokenFirstStep())
    pipeline.submit([(DecodeRequest("first", source(3), max_length=10), time.monotonic(), None)])
    sink.wait_for(["first"])
    pipeline.submit([(DecodeRequest("second", source(3), max_length=10), time.monotonic(), None)])
    sink.wait_for(["second"])
    assert sink.failed == ["first"] and list(sink.results) == ["second"]


def test_requests_whose_queue_time_runs_out_are_expired_undecoded(make_pipeline: Callable) -> None:
    """One row, held by a long request (about 250 steps of 2 ms): `encoded` is encoded at
    once and waits for the row, `waiting` stays in the inbox (the ready queue is full); both
    expire when their 10 ms run out, long before the row frees up. `patient` has no deadline
    and is decoded after the long one."""
    model = SlowLengthModel()
    pipeline, sink = make_pipeline(model, max_rows=1)
    pipeline.submit([(DecodeRequest("long", source(250), max_length=256), time.monotonic(), None)])
    deadline = time.monotonic() + 10
    while pipeline.counters[STEPS] < 2:  # the long request holds the row
        assert time.monotonic() < deadline
        time.sleep(0.001)
    now = time.monotonic()
    pipeline.submit(
        [
            (DecodeRequest("encoded", source(2), max_length=10), now, now + 0.01),
            (DecodeRequest("waiting", source(2), max_length=10), now, now + 0.01),
            (DecodeRequest("patient", source(2), max_length=10), now, None),
        ]
    )
    sink.wait_for(["encoded", "waiting"])
    assert "long" not in sink.results, "expired at the deadline, not when the row freed up"
    sink.wait_for(["long", "encoded", "waiting", "patient"])
    assert sorted(i for i, _ in sink.expired) == ["encoded", "waiting"]
    assert min(queued for _, queued in sink.expired) > 0.01
    assert sorted(sink.results) == ["long", "patient"] and not sink.failed
    assert pipeline.counters[WAITING] == 0
