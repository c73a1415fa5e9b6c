"""The step-level API on a model with known behaviour: rows join and leave between steps,
beams share the batch, caches stay aligned (FakeModel checks every row's cache slots)."""

from __future__ import annotations

import pytest

from core.translation import DecodeBatch, DecodeRequest
from core.translation.batch import encode
from tests.translation.fakes import BOS, EOS, PAD, A, LengthModel


def source(n: int) -> list[int]:
    return [5] * n + [EOS]


def run_to_end(batch: DecodeBatch) -> dict:
    results = {}
    while len(batch):
        for u in batch.step():
            if u.finished:
                results[u.id] = u.result
    return results


def test_a_request_added_mid_flight_finishes_first() -> None:
    model = LengthModel()
    batch = DecodeBatch(model, BOS, EOS, PAD)
    batch.add([DecodeRequest("long", source(12), max_length=50)])
    for _ in range(3):
        batch.step()
    batch.add([DecodeRequest("short", source(2), beam_size=3, max_length=50)])
    assert batch.rows == 4
    finished = []
    while len(batch):
        finished += [u.result for u in batch.step() if u.finished]
    short, long_ = finished
    assert (short.id, long_.id) == ("short", "long")
    assert short.joined_step == 3 and short.finished_step < long_.finished_step
    assert short.token_ids == [A, A] and long_.token_ids == [A] * 12
    assert model.calls[:3] == [1, 1, 1] and model.calls[3] == 4  # joined the running batch
    assert model.calls[-1] == 1  # the short one left


def test_batched_equals_one_at_a_time() -> None:
    requests = [
        DecodeRequest(i, source(n), beam_size=b, max_length=40)
        for i, (n, b) in enumerate([(3, 1), (9, 2), (1, 1), (6, 4), (4, 1)])
    ]
    together = run_to_end(_batch(requests))
    for r in requests:
        alone = run_to_end(_batch([r]))[r.id]
        assert alone.hypotheses == together[r.id].hypotheses


def test_a_long_lived_batch_does_not_carry_old_cache_slots() -> None:
    """The server keeps one batch for its whole life: once it empties, the next request starts
    from an empty cache, not behind every slot of the requests before it."""
    model = LengthModel()
    batch = DecodeBatch(model, BOS, EOS, PAD)
    for i in range(5):
        batch.add([DecodeRequest(i, source(6), max_length=20)])
        assert batch.cache.past_len == 0  # the new row's first step sees no padding
        run_to_end(batch)
        assert batch.rows == 0 and batch.cache.past_len == 0
    assert max(model.past_lens) <= 6  # never longer than one request's own output


def _batch(requests: list[DecodeRequest]) -> DecodeBatch:
    batch = DecodeBatch(LengthModel(), BOS, EOS, PAD)
    batch.add(requests)
    return batch


def test_remove_and_filter_drop_requests_and_their_rows() -> None:
    batch = _batch([DecodeRequest(i, source(8), beam_size=2, max_length=40) for i in "abc"])
    batch.step()
    batch.remove(["b"])
    assert batch.ids == ["a", "c"] and batch.rows == 4
    batch.filter(["c"])
    assert batch.ids == ["c"] and batch.rows == 2
    assert list(run_to_end(batch)) == ["c"]


def test_empty_input_is_answered_without_the_model() -> None:
    model = LengthModel()
    batch = DecodeBatch(model, BOS, EOS, PAD)
    batch.add([DecodeRequest("e", [])])
    [update] = batch.step()
    assert update.finished and update.result.text == "" and update.result.token_ids == []
    assert model.calls == [] and len(batch) == 0


def test_groups_encoded_apart_and_joined_later_decode_as_if_added() -> None:
    """The served model encodes on one thread and joins on another: `encode` then `join`
    must be `add`, whatever the grouping, with empty sources and beams in the groups."""
    requests = [
        DecodeRequest(i, source(n) if n else [], beam_size=b, max_length=40)
        for i, (n, b) in enumerate([(3, 1), (0, 1), (9, 2), (1, 1), (6, 4)])
    ]
    model = LengthModel()
    groups = [
        encode(model, requests[:2], PAD),
        encode(model, requests[2:3], PAD),
        encode(model, requests[3:], PAD),
    ]
    assert [g.rows for g in groups] == [2, 2, 5]
    batch = DecodeBatch(model, BOS, EOS, PAD)
    batch.join(groups[0])
    results = {u.id: u.result for u in batch.step() if u.finished}
    assert list(results) == [1]  # the empty source, answered by the first step
    for group in groups[1:]:
        batch.join(group)
    assert batch.rows == 1 + 2 + 1 + 4
    with pytest.raises(ValueError, match="already in the batch"):
        batch.join(encode(model, [DecodeRequest(0, source(2))], PAD))
    results.update(run_to_end(batch))
    for r in requests:
        assert results[r.id].hypotheses == run_to_end(_batch([r]))[r.id].hypotheses


def test_duplicate_ids_are_refused() -> None:
    batch = _batch([DecodeRequest("x", source(2))])
    with pytest.raises(ValueError, match="already in the batch"):
        batch.add([DecodeRequest("x", source(2))])


def test_greedy_updates_stream_one_token_per_step() -> None:
    batch = DecodeBatch(LengthModel(), BOS, EOS, PAD, detokenize=lambda ids: "a" * len(ids))
    batch.add([DecodeRequest("s", source(3), stream=True)])
    updates = [u for _ in range(4) for u in batch.step()]
    assert [u.token_ids for u in updates] == [[A], [A], [A], []]
    assert [u.text for u in updates] == ["a", "a", "a", ""]
    assert updates[-1].finished and updates[-1].result.text == "aaa"


def test_a_request_not_streamed_is_detokenized_once_at_the_end() -> None:
    calls: list[list[int]] = []

    def detokenize(ids: list[int]) -> str:
        calls.append(list(ids))
        return "a" * len(ids)

    batch = DecodeBatch(LengthModel(), BOS, EOS, PAD, detokenize=detokenize)
    batch.add([DecodeRequest("q", source(3)), DecodeRequest("s", source(3), stream=True)])
    updates = [u for _ in range(4) for u in batch.step()]
    quiet = [u for u in updates if u.id == "q"]
    assert [u.token_ids for u in quiet] == [[A], [A], [A], []]
    assert [u.text for u in quiet] == ["", "", "", "aaa"]  # the pieces still join to the text
    assert quiet[-1].result.text == "aaa"
    assert len(calls) == 3 + 2  # the streamed request's three steps, then each result once
