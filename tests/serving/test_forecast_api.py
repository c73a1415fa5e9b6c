"""The typed Forecaster API end to end, on a forecaster-shaped model with a known answer."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from core.calendar import calendar_features
from protos.inference.grpc_service_pb2 import ModelStatisticsRequest
from protos.inference.grpc_service_pb2_grpc import GRPCInferenceServiceStub
from protos.seqserve.forecast.v1 import forecast_service_pb2 as fpb
from protos.seqserve.forecast.v1 import forecast_service_pb2_grpc as fgrpc
from tests.conftest import ServerProcess, native_built
from tests.serving.model_factory import AFFINE_CONFIG, add_forecaster, add_model, affine
from tests.serving.v2 import call_error

T0 = np.datetime64("2024-03-01T20:00:00", "ns")
HOUR = np.timedelta64(3600, "s")


@pytest.fixture(scope="module", params=["python", "native"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """The typed API as the Python front end serves it, and as the native one answers it in
    process."""
    if request.param == "native":
        native_built()
    repo = tmp_path_factory.mktemp("fc") / "model_repository"
    add_forecaster(repo)
    add_forecaster(repo, "fc_b", business_days=True)
    add_model(repo, "affine", AFFINE_CONFIG.format(scheduling="", extra=""), affine)
    server = ServerProcess(repo, "--frontend", request.param)
    try:
        server.wait_ready()
        yield server
    finally:
        server.terminate()


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[fgrpc.ForecasterStub]:
    with grpc.insecure_channel(server.target) as ch:
        yield fgrpc.ForecasterStub(ch)


def stamp(t: np.datetime64) -> Timestamp:
    ns = int(t.astype("datetime64[ns]").astype(np.int64))
    return Timestamp(seconds=ns // 10**9, nanos=ns % 10**9)


def window(
    n: int = 6,
    start: np.datetime64 = T0,
    promo: tuple = (1.0, 2.0),
    shift: float = 0,
    stamps: list | None = None,
) -> fpb.Window:
    rng = np.random.default_rng(n)
    w = fpb.Window(
        past=[
            fpb.Series(name=s, values=(rng.standard_normal(n) + shift).tolist())
            for s in ("price", "index", "mentions")
        ],
        future=[fpb.Series(name="promo", values=list(promo))],
    )
    ts = stamps if stamps is not None else [start + i * HOUR for i in range(n)]
    w.timestamps.extend(stamp(t) for t in ts)
    return w


def expected_point(w: fpb.Window, last: np.datetime64) -> np.ndarray:
    price = np.asarray(w.past[0].values, np.float32)[-6:]
    horizon = np.array([last + HOUR, last + 2 * HOUR], "datetime64[ns]")
    cal = calendar_features(horizon, ["hour", "weekday"]).sum(1)
    return price.mean() + cal + np.asarray(w.future[0].values, np.float32)


def test_forecast(api: fgrpc.ForecasterStub) -> None:
    windows = [window(), window(n=10, shift=5)]
    reply = api.Forecast(fpb.ForecastRequest(model_name="fc", windows=windows), timeout=10)
    assert (reply.model_name, reply.model_version) == ("fc", "1")
    assert len(reply.forecasts) == 2
    for w, f, n in zip(windows, reply.forecasts, (6, 10), strict=True):
        last = T0 + (n - 1) * HOUR
        (target,) = f.targets
        assert target.name == "price"
        # longer history: the last 6 values are used
        np.testing.assert_allclose(target.point, expected_point(w, last), rtol=1e-5)
        assert [t.ToDatetime().hour for t in f.timestamps] == [
            int(str(last + k * HOUR)[11:13]) for k in (1, 2)
        ]
        assert [q.level for q in target.quantiles] == pytest.approx([0.1, 0.5, 0.9])
        np.testing.assert_allclose(
            target.quantiles[2].values, np.asarray(target.point) + 1, rtol=1e-5
        )


def test_timestamps_before_1970_and_within_a_second_round_trip(api: fgrpc.ForecasterStub) -> None:
    """Stamps are decoded and encoded as arrays: negative seconds keep their nanos in
    [0, 1e9), as protobuf normalises them, and the horizon continues at the same step."""
    start = np.datetime64("1969-12-31T21:00:00.250", "ns")
    w = window(start=start)
    assert w.timestamps[0].seconds < 0 and w.timestamps[0].nanos == 250_000_000
    reply = api.Forecast(fpb.ForecastRequest(model_name="fc", windows=[w]), timeout=10)
    got = [np.datetime64(t.seconds * 10**9 + t.nanos, "ns") for t in reply.forecasts[0].timestamps]
    assert got == [start + 6 * HOUR, start + 7 * HOUR]
    assert all(0 <= t.nanos < 10**9 for t in reply.forecasts[0].timestamps)


def test_start_and_frequency_and_quantile_subset(api: fgrpc.ForecasterStub) -> None:
    w = window()
    del w.timestamps[:]
    w.start.CopyFrom(stamp(T0))
    w.frequency.CopyFrom(Duration(seconds=3600))
    reply = api.Forecast(
        fpb.ForecastRequest(model_name="fc", windows=[w], quantile_levels=[0.9]), timeout=10
    )
    target = reply.forecasts[0].targets[0]
    np.testing.assert_allclose(target.point, expected_point(w, T0 + 5 * HOUR), rtol=1e-5)
    assert [q.level for q in target.quantiles] == pytest.approx([0.9])


def test_many_windows_beyond_max_batch_size(api: fgrpc.ForecasterStub) -> None:
    windows = [window(shift=i) for i in range(9)]  # max_batch_size is 4
    reply = api.Forecast(fpb.ForecastRequest(model_name="fc", windows=windows), timeout=10)
    points = [f.targets[0].point[0] for f in reply.forecasts]
    assert len(points) == 9 and points == sorted(points)


def _bad(change: str) -> fpb.ForecastRequest:
    w = window()
    for key in (change,):
        if key == "drop":
            del w.past[2]
        elif key == "rename":
            w.past[1].name = "volume"
        elif key == "short":
            for s in w.past:
                del s.values[0]
        elif key == "nan":
            w.past[0].values[3] = float("nan")
        elif key == "unsorted":
            w.timestamps[2].CopyFrom(w.timestamps[1])
        elif key == "irregular":
            w.timestamps[-1].CopyFrom(stamp(T0 + 7 * HOUR))
        elif key == "daily":
            del w.timestamps[:]
            w.timestamps.extend(stamp(T0 + i * 24 * HOUR) for i in range(6))
        elif key == "no_time":
            del w.timestamps[:]
        elif key == "no_promo":
            del w.future[:]
        elif key == "bad_promo":
            w.future[0].values.append(3.0)
    return fpb.ForecastRequest(model_name="fc", windows=[w])


BAD = {
    "unknown series": (_bad("rename"), "unknown series 'volume'"),
    "missing series": (_bad("drop"), "series 'mentions' is missing"),
    "too short": (_bad("short"), "5 values, the model needs the last 6"),
    "NaN": (_bad("nan"), "windows[0].past['price']: value 3 is not finite"),
    "unsorted": (_bad("unsorted"), "not strictly increasing at index 2"),
    "irregular": (_bad("irregular"), "irregular spacing at index 5"),
    "wrong frequency": (_bad("daily"), "trained on 3600 s"),
    "no timestamps": (_bad("no_time"), "timestamps (or start and frequency) are needed"),
    "missing future": (_bad("no_promo"), "known-future series 'promo' is missing"),
    "bad future": (_bad("bad_promo"), "needs 2 finite values, got 3"),
    "quantile": (
        fpb.ForecastRequest(model_name="fc", windows=[window()], quantile_levels=[0.25]),
        "0.25 is not one the model",
    ),
    "no windows": (fpb.ForecastRequest(model_name="fc"), "at least one window"),
    "not a forecaster": (
        fpb.ForecastRequest(model_name="affine", windows=[window()]),
        "model 'affine' is not a forecaster",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_invalid_requests(api: fgrpc.ForecasterStub, case: str) -> None:
    msg, words = BAD[case]
    err = call_error(api.Forecast, msg, timeout=10)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert words in err.details()


def test_calls_that_arrive_together_are_answered_each_on_its_own(
    server: ServerProcess, api: fgrpc.ForecasterStub
) -> None:
    """Calls sent at once, good and bad mixed (on the native front end the good ones share
    the fast path's batches, the others go to the Python servicer), each get their own answer:
    the forecast each gets alone, a bad one its own error, an unknown model NOT_FOUND; and
    each call to the model is one request of its statistics, a success or a failure."""
    good = [
        fpb.ForecastRequest(model_name="fc", windows=[window(shift=i), window(n=8, shift=-i)])
        for i in range(12)
    ]
    alone = [api.Forecast(r, timeout=10) for r in good]
    bad, words = BAD["NaN"]
    unknown = fpb.ForecastRequest(model_name="zz", windows=[window()])
    requests = [*good[:6], bad, unknown, *good[6:], bad]

    def counts() -> tuple[int, int]:
        with grpc.insecure_channel(server.target) as ch:
            stats = GRPCInferenceServiceStub(ch).ModelStatistics(
                ModelStatisticsRequest(name="fc"), timeout=10
            )
        (model,) = stats.model_stats
        return model.inference_stats.success.count, model.inference_stats.fail.count

    before = counts()
    with grpc.insecure_channel(server.target) as ch:
        stub = fgrpc.ForecasterStub(ch)
        for _ in range(3):  # several rounds: how calls group depends on when they arrive
            futures = [stub.Forecast.future(r, timeout=10) for r in requests]
            outcomes = []
            for f in futures:
                try:
                    outcomes.append(f.result())
                except grpc.RpcError as err:
                    outcomes.append(err)
            got = [o for o in outcomes if isinstance(o, fpb.ForecastResponse)]
            assert got == [*alone[:6], *alone[6:]]
            errors = [o for o in outcomes if isinstance(o, grpc.RpcError)]
            assert [e.code() for e in errors] == [
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.INVALID_ARGUMENT,
            ]
            assert words in errors[0].details() and words in errors[2].details()
    after = counts()
    assert (after[0] - before[0], after[1] - before[1]) == (3 * 12, 3 * 2)


def test_unknown_model(api: fgrpc.ForecasterStub) -> None:
    err = call_error(
        api.Forecast, fpb.ForecastRequest(model_name="zz", windows=[window()]), timeout=10
    )
    assert err.code() is grpc.StatusCode.NOT_FOUND


def test_list_and_describe(api: fgrpc.ForecasterStub) -> None:
    listed = api.ListModels(fpb.ListModelsRequest(), timeout=10)
    assert [m.name for m in listed.models] == ["fc", "fc_b"]
    info = api.GetModelInfo(fpb.GetModelInfoRequest(model_name="fc"), timeout=10).model
    assert (info.input_window, info.horizon) == (6, 2)
    assert list(info.target_names) == ["price"]
    assert list(info.covariate_names) == ["index", "mentions"]
    assert list(info.calendar_features) == ["hour", "weekday"]
    assert list(info.future_covariate_names) == ["promo"]
    assert info.frequency.seconds == 3600 and list(info.versions) == ["1"]
    assert info.metrics["test_mse"] == 0.25 and info.architecture == "mean-test"
    assert info.frequency_alias == "h" and not info.holidays
    business = api.GetModelInfo(fpb.GetModelInfoRequest(model_name="fc_b"), timeout=10).model
    assert business.frequency_alias == "B" and list(business.holidays) == ["2024-01-15"]
    assert not business.HasField("frequency")  # business days are no fixed step


def _on(stamps: list[str]) -> list[np.datetime64]:
    return [np.datetime64(f"{d}T00:00:00", "ns") for d in stamps]


def test_business_days_skip_weekends_and_holidays(api: fgrpc.ForecasterStub) -> None:
    """A business-day model: the window skips the weekend, the holiday of its training data
    (15 January) and one it never saw (19 January, taken from the window's own gap, as
    training does), and the forecast's days skip the next weekend."""
    days = ["2024-01-12", "2024-01-16", "2024-01-17", "2024-01-18", "2024-01-22", "2024-01-23"]
    reply = api.Forecast(
        fpb.ForecastRequest(model_name="fc_b", windows=[window(stamps=_on(days))]), timeout=10
    )
    got = [t.ToDatetime().date().isoformat() for t in reply.forecasts[0].timestamps]
    assert got == ["2024-01-24", "2024-01-25"]
    friday = ["2024-01-19", "2024-01-22", "2024-01-23", "2024-01-24", "2024-01-25", "2024-01-26"]
    reply = api.Forecast(
        fpb.ForecastRequest(model_name="fc_b", windows=[window(stamps=_on(friday))]), timeout=10
    )
    got = [t.ToDatetime().date().isoformat() for t in reply.forecasts[0].timestamps]
    assert got == ["2024-01-29", "2024-01-30"]  # Monday and Tuesday
    for bad, named in (
        ([*days[:-1], "2024-01-27"], "index 5"),  # a Saturday
        ([*days[:-1], "2024-02-05"], "index 5"),  # after 9 missing business days: a gap
    ):
        with pytest.raises(grpc.RpcError) as err:
            api.Forecast(
                fpb.ForecastRequest(model_name="fc_b", windows=[window(stamps=_on(bad))]),
                timeout=10,
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "windows[0].timestamps" in err.value.details() and named in err.value.details()
