"""Requests an attacker would send: sizes that overflow, shapes that claim more than the bytes
received, timestamps at the edge of time. Each gets INVALID_ARGUMENT naming the field, costs
the server no more than the bytes it sent, is counted as a failure of the model it names, and
the server goes on serving everyone else. Against both front ends."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from bench.procfs import memory_bytes
from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc as pb_grpc
from protos.seqserve.forecast.v1 import forecast_service_pb2 as fpb
from protos.seqserve.forecast.v1 import forecast_service_pb2_grpc as fgrpc
from tests.conftest import ServerProcess, native_built
from tests.serving.model_factory import add_forecaster, standard_repository
from tests.serving.v2 import call_error, outputs, request, scrape, stub

INVALID = grpc.StatusCode.INVALID_ARGUMENT
X = np.ones((1, 4), np.float32)
FAIL = "nv_inference_request_failure"


@pytest.fixture(scope="module", params=["python", "native"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    if request.param == "native":
        native_built()
    repo = standard_repository(tmp_path_factory.mktemp("hostile") / "model_repository")
    add_forecaster(repo)
    srv = ServerProcess(repo, "--frontend", request.param)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.terminate()


@pytest.fixture(scope="module")
def v2(server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    channel, s = stub(server.target)
    with channel:
        yield s


def claim(
    model: str, name: str, datatype: str, shape: list[int], raw: bytes = b""
) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name=model)
    msg.inputs.add(name=name, datatype=datatype, shape=shape)
    msg.raw_input_contents.append(raw)
    return msg


def peak_rss_bytes(pid: int) -> int:
    peak = memory_bytes(pid, "VmHWM")
    assert peak is not None, f"the server ({pid}) is gone"
    return peak


def failures(server: ServerProcess, model: str, reason: str) -> float:
    key = (FAIL, f"model={model},reason={reason},version=1")
    return scrape(server.metrics_url).get(key, 0.0)


BOMBS = {
    # An empty payload claiming 50 million strings: once 380 MiB and 4 s of event loop.
    "BYTES claims more than it sent": (
        claim("echo", "text", "BYTES", [1, 50_000_000]),
        "does not match [-1, 1]",
    ),
    "BYTES, a variable count of strings": (
        claim("echo", "text", "BYTES", [4, 1], b"\0" * 8),
        "too few for the 4 elements",
    ),
    "a dimension of 2**40": (
        claim("echo", "text", "BYTES", [2**40]),
        "claims more than 2147483647 elements",
    ),
    "2**62 elements, a variable dimension": (
        claim("fragile", "x", "FP32", [1, 2**62]),
        "claims more than 2147483647 elements",
    ),
    # 2**62 FP32 elements * 4 bytes wraps a 64-bit size to 0: the empty payload matched.
    "a byte count that wraps to zero": (
        claim("fragile", "x", "FP32", [4, 2**60]),
        "claims more than",
    ),
    "a negative dimension": (
        claim("fragile", "x", "FP32", [1, -4], b"\0" * 16),
        "negative dimension",
    ),
}


@pytest.mark.parametrize("case", list(BOMBS))
def test_shape_bombs(
    server: ServerProcess, v2: pb_grpc.GRPCInferenceServiceStub, case: str
) -> None:
    msg, words = BOMBS[case]
    model = msg.model_name
    before_peak = peak_rss_bytes(server.proc.pid)
    before = failures(server, model, "OTHER")
    err = call_error(v2.ModelInfer, msg, timeout=10)
    assert err.code() is INVALID, err.details()
    assert words in err.details()
    assert f"input '{msg.inputs[0].name}'" in err.details()
    # Nothing was allocated for what the request claimed (50 MiB of slack for the rest).
    assert peak_rss_bytes(server.proc.pid) - before_peak < 50 * 2**20
    # It counts as a failure of that model, not of its backend: no false alarm.
    assert failures(server, model, "OTHER") == before + 1
    assert failures(server, model, "BACKEND") == 0
    got = outputs(v2.ModelInfer(request("affine", x=X), timeout=10))
    np.testing.assert_array_equal(got["y"], 2 * X + 1)


def test_shape_bomb_for_an_unknown_model(v2: pb_grpc.GRPCInferenceServiceStub) -> None:
    """The model is looked up before anything the request claims is decoded."""
    err = call_error(v2.ModelInfer, claim("nope", "text", "BYTES", [1, 50_000_000]), timeout=10)
    assert err.code() is grpc.StatusCode.NOT_FOUND
    assert "unknown model 'nope'" in err.details()


DECODE_FAILURES = {
    "raw length": claim("affine", "x", "FP32", [1, 4], b"\0" * 15),
    "datatype": claim("affine", "x", "FP8", [1, 4], b"\0" * 4),
    "BYTES framing": claim("echo", "text", "BYTES", [1, 1], b"\x09\0\0\0ab"),
}


@pytest.mark.parametrize("case", list(DECODE_FAILURES))
def test_rejections_while_decoding_are_counted(
    server: ServerProcess, v2: pb_grpc.GRPCInferenceServiceStub, case: str
) -> None:
    msg = DECODE_FAILURES[case]
    before = failures(server, msg.model_name, "OTHER")
    assert call_error(v2.ModelInfer, msg, timeout=10).code() is INVALID
    assert failures(server, msg.model_name, "OTHER") == before + 1


def forecast_window(seconds: int = 1_700_000_000, step: int = 3600) -> fpb.Window:
    w = fpb.Window(
        past=[fpb.Series(name=s, values=[1.0] * 6) for s in ("price", "index", "mentions")],
        future=[fpb.Series(name="promo", values=[0.0, 0.0])],
    )
    w.timestamps.extend(Timestamp(seconds=seconds + i * step) for i in range(6))
    return w


FORECASTS = {
    "timestamps near 1e12 s": (forecast_window(10**12), "windows[0].timestamps"),
    "timestamps before 1677": (forecast_window(-(10**10)), "windows[0].timestamps"),
    "a horizon past 2262": (forecast_window(9_223_372_036 - 6 * 3600), "run past 2262"),
    "NaN in a series": (
        fpb.Window(past=[fpb.Series(name="price", values=[float("nan")] * 6)]),
        "windows[0]",
    ),
}


@pytest.mark.parametrize("case", list(FORECASTS))
def test_typed_forecast_rejections(server: ServerProcess, case: str) -> None:
    window, words = FORECASTS[case]
    before = failures(server, "fc", "OTHER")
    with grpc.insecure_channel(server.target) as ch:
        api = fgrpc.ForecasterStub(ch)
        err = call_error(
            api.Forecast, fpb.ForecastRequest(model_name="fc", windows=[window]), timeout=10
        )
        assert err.code() is INVALID, err.details()
        assert words in err.details()
        assert failures(server, "fc", "OTHER") == before + 1
        good = api.Forecast(
            fpb.ForecastRequest(model_name="fc", windows=[forecast_window()]), timeout=10
        )
        assert len(good.forecasts[0].targets[0].point) == 2


@pytest.mark.parametrize(
    "method, kind",
    [
        ("/seqserve.forecast.v1.Forecaster/Forecast", "seqserve.forecast.v1.ForecastRequest"),
        ("/seqserve.translate.v1.Translator/Translate", "seqserve.translate.v1.TranslateRequest"),
        (
            "/seqserve.translate.v1.Translator/TranslateStream",
            "seqserve.translate.v1.TranslateRequest",
        ),
        ("/inference.GRPCInferenceService/ModelMetadata", "inference.ModelMetadataRequest"),
    ],
)
def test_bytes_that_are_not_the_request_message(
    server: ServerProcess, method: str, kind: str
) -> None:
    """Malformed protobuf is the client's error, named, on every front end (grpc.aio alone
    answered UNKNOWN with its exception's words), and the server goes on."""
    with grpc.insecure_channel(server.target) as ch:
        with pytest.raises(grpc.RpcError) as caught:
            if method.endswith("Stream"):
                list(ch.unary_stream(method)(b"\xff\xff\xff", timeout=10))
            else:
                ch.unary_unary(method)(b"\xff\xff\xff", timeout=10)
        assert caught.value.code() is INVALID, caught.value.details()
        assert caught.value.details() == f"request: not a valid {kind}"
        good = fgrpc.ForecasterStub(ch).Forecast(
            fpb.ForecastRequest(model_name="fc", windows=[forecast_window()]), timeout=10
        )
        assert len(good.forecasts[0].targets[0].point) == 2
