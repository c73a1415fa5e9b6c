"""The typed Translator API and the V2 translator model on the tiny default translator."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos.seqserve.translate.v1 import translate_service_pb2 as tpb
from protos.seqserve.translate.v1 import translate_service_pb2_grpc as tgrpc
from serving.client import Client
from tests.conftest import ServerProcess
from tests.serving.v2 import call_error, outputs, request, scrape, stub


@pytest.fixture(scope="module")
def api(tiny_server: ServerProcess) -> Iterator[tgrpc.TranslatorStub]:
    with grpc.insecure_channel(tiny_server.target) as ch:
        yield tgrpc.TranslatorStub(ch)


def test_translate_many_with_nbest(api: tgrpc.TranslatorStub) -> None:
    reply = api.Translate(
        tpb.TranslateRequest(
            model_name="translator",
            sentences=["dreihundertzweiundvierzig", "sieben", ""],
            beam_size=4,
            num_hypotheses=2,
        ),
        timeout=30,
    )
    assert (reply.model_name, reply.model_version) == ("translator", "1")
    first, second, empty = reply.translations
    assert len(first.hypotheses) == 2 and first.hypotheses[0].score >= first.hypotheses[1].score
    assert first.hypotheses[0].text and first.hypotheses[0].num_tokens > 0
    assert first.num_source_tokens > 0 and second.hypotheses[0].text
    assert empty.hypotheses[0].text == ""  # empty input, empty output


def test_more_sentences_than_decoder_rows_come_back_in_order(api: tgrpc.TranslatorStub) -> None:
    """Clients cannot see the model's batch limit (max_batch_size 128): a request with more
    sentences queues them as rows free up and answers them all, in order, each as it would
    be alone."""
    words = ["eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun"]
    sentences = [words[i % 9] for i in range(150)]
    reply = api.Translate(
        tpb.TranslateRequest(model_name="translator", sentences=sentences, beam_size=1),
        timeout=60,
    )
    alone = {
        w: api.Translate(
            tpb.TranslateRequest(model_name="translator", sentences=[w], beam_size=1), timeout=30
        )
        .translations[0]
        .hypotheses[0]
        .text
        for w in words
    }
    got = [t.hypotheses[0].text for t in reply.translations]
    assert got == [alone[s] for s in sentences]
    with pytest.raises(grpc.RpcError) as err:  # past the queue: refused, naming the field
        api.Translate(
            tpb.TranslateRequest(model_name="translator", sentences=["eins"] * 5000), timeout=30
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sentences: 5000 in one request, at most 1024" in err.value.details()


def test_stream_equals_unary_greedy(api: tgrpc.TranslatorStub) -> None:
    sentence = "neunhundertneunundneunzigtausendachthundertsiebenundsiebzig"
    unary = api.Translate(
        tpb.TranslateRequest(model_name="translator", sentences=[sentence], beam_size=1), timeout=30
    )
    chunks = list(
        api.TranslateStream(
            tpb.TranslateRequest(model_name="translator", sentences=[sentence]), timeout=30
        )
    )
    text = "".join(c.text for c in chunks)
    assert text == unary.translations[0].hypotheses[0].text
    assert chunks[-1].done and len([c for c in chunks if c.text]) > 1  # pieces, not one blob


def test_client_translate_and_stream(tiny_server: ServerProcess) -> None:
    with Client(tiny_server.target) as c:
        (t,) = c.translate(["zweiundvierzig"], beam_size=1)
        pieces = list(c.translate_stream("zweiundvierzig"))
    assert "".join(pieces) == t.text and t.num_tokens > 0


@pytest.mark.parametrize(
    ("msg", "words"),
    [
        (
            tpb.TranslateRequest(model_name="translator", sentences=["eins " * 400]),
            "sentences[0]: ",
        ),
        (
            tpb.TranslateRequest(model_name="translator", sentences=["eins"], beam_size=1000),
            "beam_size 1000 exceeds",
        ),
        (
            tpb.TranslateRequest(
                model_name="translator", sentences=["eins"], beam_size=2, num_hypotheses=3
            ),
            "num_hypotheses must be in 1..beam_size",
        ),
        (tpb.TranslateRequest(model_name="translator"), "at least one sentence"),
        (tpb.TranslateRequest(model_name="forecaster_gru", sentences=["eins"]), "not a translator"),
    ],
)
def test_invalid_requests(api: tgrpc.TranslatorStub, msg: tpb.TranslateRequest, words: str) -> None:
    err = call_error(api.Translate, msg, timeout=30)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert words in err.details()


def test_too_long_names_the_limit(api: tgrpc.TranslatorStub) -> None:
    err = call_error(
        api.Translate,
        tpb.TranslateRequest(model_name="translator", sentences=["eins " * 400]),
        timeout=30,
    )
    assert "limit" in err.details() or "at most" in err.details()


def test_stream_rejects_beam_search(api: tgrpc.TranslatorStub) -> None:
    err = call_error(
        lambda m, **kw: list(api.TranslateStream(m, **kw)),
        tpb.TranslateRequest(model_name="translator", sentences=["eins"], beam_size=4),
        timeout=30,
    )
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_v2_translator(tiny_server: ServerProcess) -> None:
    channel, s = stub(tiny_server.target)
    with channel:
        text = np.array([[b"zweiundvierzig"], [b"sieben"]], dtype=object)
        msg = request("translator", text=text)
        msg.parameters["beam_size"].int64_param = 2
        got = outputs(s.ModelInfer(msg, timeout=30))
        assert got["translation"].shape == (2, 1) and got["score"].shape == (2, 1)
        assert all(t for t in got["translation"].reshape(-1))
        bad = request("translator", text=np.array([[b"\xff\xfe"]], dtype=object))
        err = call_error(s.ModelInfer, bad, timeout=30)
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and "UTF-8" in err.details()
        bad = request("translator", text=text)
        bad.parameters["beam_size"].string_param = "four"
        err = call_error(s.ModelInfer, bad, timeout=30)
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT and "beam_size" in err.details()


def test_v2_translator_queue_timeout(tiny_server: ServerProcess) -> None:
    """V2's `timeout` parameter: a request that cannot start decoding in time fails with
    DEADLINE_EXCEEDED, counted REJECTED. 1 µs always runs out before the engine process
    reads the request; a generous one does not."""
    channel, s = stub(tiny_server.target)
    with channel:
        text = np.array([[b"zweiundvierzig"]], dtype=object)
        late = request("translator", text=text)
        late.parameters["timeout"].int64_param = 1
        err = call_error(s.ModelInfer, late, timeout=30)
        assert err.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert "timed out after" in err.details() and "in the queue" in err.details()
        patient = request("translator", text=text)
        patient.parameters["timeout"].int64_param = 30_000_000
        assert outputs(s.ModelInfer(patient, timeout=30))["translation"][0, 0]
    samples = scrape(tiny_server.metrics_url)
    assert (
        samples[("nv_inference_request_failure", "model=translator,reason=REJECTED,version=1")] >= 1
    )


SHORT_MAX_LENGTH = 3  # decoder steps the short request needs at most


async def _short_overtakes_long(repository: Path) -> tuple | None:
    """Drive the served translator model in-process, reading its decode-step counters; None
    when the short request joined too late to overtake, which proves nothing.

    The long requests decode for a few tens of ms. If the event loop is descheduled once they
    are seen decoding, the short request joins near or after their end: with fewer than
    SHORT_MAX_LENGTH steps left, it could not finish first even decoded alone, and the caller
    tries again on a fresh model (the step counters start from 0).
    """
    from serving.repository import ModelRepository
    from serving.settings import Settings

    repo = ModelRepository(repository, Settings(model_repository=repository))
    await repo.load("translator")
    model = repo.get("translator", "")
    try:
        long = [
            model.prepare(
                "neunhundertneunundneunzigtausendachthundertsiebenundsiebzig",
                beam_size=4,
                max_length=60,
            )
            for _ in range(8)
        ]
        long_task = asyncio.ensure_future(model.translate(long))
        while model.steps < 2:  # the long request is decoding
            await asyncio.sleep(0.001)
        short = await model.translate(
            [model.prepare("eins", beam_size=1, max_length=SHORT_MAX_LENGTH)]
        )
        long_results = await long_task
        if short[0].joined_step + SHORT_MAX_LENGTH >= long_results[0].finished_step:
            return None
        return short[0], long_results[0]
    finally:
        await repo.close()


def test_short_request_joins_mid_flight_and_finishes_first(tiny_repository: Path) -> None:
    for _ in range(5):  # a descheduled event loop may send the short request too late
        joined = asyncio.run(_short_overtakes_long(tiny_repository))
        if joined is not None:
            break
    assert joined is not None, "five tries never had the short request join in time to overtake"
    short, long = joined
    assert long.joined_step == 0
    assert short.joined_step >= 2, "the short request joined while the long one was decoding"
    assert short.finished_step < long.finished_step, "and left the batch before it"


def test_the_engine_process_reports_its_cpu_and_memory(tiny_server: ServerProcess) -> None:
    with grpc.insecure_channel(tiny_server.target) as ch:
        msg = tpb.TranslateRequest(model_name="translator", sentences=["zwei"])
        tgrpc.TranslatorStub(ch).Translate(msg, timeout=30)
    series = scrape(tiny_server.metrics_url)
    labels = "model=translator,version=1"
    assert series[("seqserve_engine_cpu_seconds_total", labels)] > 0
    assert series[("seqserve_engine_resident_memory_bytes", labels)] > 10e6
    assert not any(n.startswith("seqserve_engine") and "forecaster" in lb for n, lb in series)
