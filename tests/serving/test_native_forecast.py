"""The native front end's typed Forecast fast path (serving/native/forecast.h) held against the
Python servicer's rules: the same calendar features, the same tensors for every request it
takes, none that Python refuses, and the same reply as the Python path gives."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from core.calendar import FEATURES, calendar_features
from protos.seqserve.forecast.v1 import forecast_service_pb2 as fpb
from protos.seqserve.forecast.v1 import forecast_service_pb2_grpc as fgrpc
from tests.conftest import ServerProcess, native_built
from tests.fuzz.targets import _native_forecaster, forecast_request
from tests.serving.model_factory import add_forecaster
from tests.serving.v2 import scrape

HOUR = 3600


def frontend() -> object:
    native_built()
    from serving.native.frontend import _frontend

    return _frontend


def test_calendar_features_are_pythons() -> None:
    """Every feature of timestamps from 1677 to 2262 (leap days, year ends, before 1970, odd
    nanoseconds) is the float32 core.calendar computes."""
    rng = np.random.default_rng(0)
    edges = np.array(
        ["1677-09-22T00:00", "1900-02-28T23:59:59", "1969-12-31T23:59:59.999999999",
         "1970-01-01", "2000-02-29T12:00", "2023-12-31T23:00", "2024-02-29T23:59:59",
         "2024-12-31T00:00", "2262-04-10T23:59:59"],
        "datetime64[ns]",
    )  # fmt: skip
    ns = np.concatenate(
        [edges.astype(np.int64), rng.integers(-(2**63) + 10**18, 2**63 - 10**18, 5000)]
    )
    for f, name in enumerate(FEATURES):
        expected = calendar_features(ns.astype("datetime64[ns]"), [name])[:, 0]
        got = np.asarray(frontend().calendar(f, ns.tolist()), np.float32)
        np.testing.assert_array_equal(got, expected, err_msg=name)


def window(seconds: int = 1_700_000_000, n: int = 6, nanos: int = 0) -> fpb.Window:
    rng = np.random.default_rng(seconds % 1000 + n)
    w = fpb.Window(
        past=[
            fpb.Series(name=s, values=rng.standard_normal(n).tolist())
            for s in ("price", "index", "mentions")
        ],
        future=[fpb.Series(name="promo", values=rng.standard_normal(2).tolist())],
    )
    w.timestamps.extend(Timestamp(seconds=seconds + i * HOUR, nanos=nanos) for i in range(n))
    return w


def _taken(request: fpb.ForecastRequest) -> bool:
    spec = _native_forecaster()
    data = request.SerializeToString()
    forecast_request(data)  # the fast path takes only what Python takes, with equal tensors
    return frontend().forecast_to_infer(spec, data, max_batch_size=4) is not None


TAKEN = {
    "one window": [window()],
    "four windows, longer histories": [window(n=9), window(seconds=0), window(n=6), window(n=7)],
    "before 1970, with nanoseconds": [window(seconds=-1_000_000_000, nanos=250_000_000)],
}


@pytest.mark.parametrize("case", list(TAKEN))
def test_the_common_requests_are_taken_with_pythons_tensors(case: str) -> None:
    frontend()
    assert _taken(fpb.ForecastRequest(model_name="fc", windows=TAKEN[case]))
    assert _taken(
        fpb.ForecastRequest(model_name="fc", windows=TAKEN[case], quantile_levels=[0.9, 0.1])
    )


def _left(change: str) -> fpb.ForecastRequest:
    request = fpb.ForecastRequest(model_name="fc", windows=[window()])
    w = request.windows[0]
    if change == "alias":
        w.frequency_alias = "h"
    elif change == "start":
        del w.timestamps[:]
        w.start.CopyFrom(Timestamp(seconds=1_700_000_000))
    elif change == "irregular":
        w.timestamps[3].seconds += 1
    elif change == "duplicate series":
        w.past.append(w.past[0])
    elif change == "unknown future":
        w.future.add(name="hour", values=[0.0, 0.0])
    elif change == "NaN future":
        w.future[0].values[1] = float("nan")
    elif change == "infinite past":
        w.past[2].values[0] = float("inf")
    elif change == "a quantile not trained":
        request.quantile_levels.append(0.25)
    elif change == "more windows than max_batch_size":
        request.windows.extend([window()] * 4)
    elif change == "near 1e12 s":
        del w.timestamps[:]
        w.timestamps.extend(Timestamp(seconds=10**12 + i * HOUR) for i in range(6))
    elif change == "horizon past 2262":
        del w.timestamps[:]
        w.timestamps.extend(
            Timestamp(seconds=9_223_372_036 - 6 * HOUR + i * HOUR) for i in range(6)
        )
    elif change == "negative nanos":
        w.timestamps[0].nanos = -1
    elif change == "short":
        for s in w.past:
            del s.values[0]
        del w.timestamps[0]
    elif change == "no windows":
        del request.windows[:]
    return request


LEFT = [
    "alias", "start", "irregular", "duplicate series", "unknown future", "NaN future",
    "infinite past", "a quantile not trained", "more windows than max_batch_size",
    "near 1e12 s", "horizon past 2262", "negative nanos", "short", "no windows",
]  # fmt: skip


@pytest.mark.parametrize("change", LEFT)
def test_anything_unusual_is_left_to_the_servicer(change: str) -> None:
    """Whether Python then answers it or refuses it: the fast path has no errors of its own."""
    frontend()
    assert not _taken(_left(change))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    native_built()
    repo: Path = tmp_path_factory.mktemp("fast") / "model_repository"
    add_forecaster(repo)
    srv = ServerProcess(repo, "--frontend", "native")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.terminate()


def test_the_fast_paths_reply_is_the_servicers(server: ServerProcess) -> None:
    """One server, both paths: the same windows sent as the fast path takes them, and with the
    model's own frequency alias (which only the Python servicer takes) give the same reply,
    byte for byte; the first kind is counted by the fast path."""
    key = ("seqserve_native_requests_total", "model=fc,version=1")
    with grpc.insecure_channel(server.target) as ch:
        api = fgrpc.ForecasterStub(ch)
        alias = api.GetModelInfo(fpb.GetModelInfoRequest(model_name="fc")).model.frequency_alias
        for case, windows in TAKEN.items():
            for levels in ([], [0.9, 0.5]):
                fast = fpb.ForecastRequest(model_name="fc", windows=windows, quantile_levels=levels)
                python = fpb.ForecastRequest()
                python.CopyFrom(fast)
                for w in python.windows:
                    w.frequency_alias = alias
                before = scrape(server.metrics_url).get(key, 0)
                by_fast = api.Forecast(fast, timeout=10)
                assert scrape(server.metrics_url).get(key, 0) == before + 1, case
                by_python = api.Forecast(python, timeout=10)
                assert scrape(server.metrics_url).get(key, 0) == before + 1, case
                assert by_fast.SerializeToString() == by_python.SerializeToString(), case


def test_a_forecaster_whose_tensors_differ_from_its_parameters_stays_with_the_servicer() -> None:
    """The C++ reads the outputs at the shapes the parameters give: a config whose tensors say
    otherwise gets no fast path (the servicer answers, and fails cleanly if it must)."""
    frontend()
    from serving.native.frontend import forecast_spec
    from tests.fuzz.targets import _config, _Model
    from tests.serving.model_factory import FORECASTER_CONFIG

    assert forecast_spec(_Model("fc", 1, _config(FORECASTER_CONFIG, "fc"))) is not None
    forecast = '"forecast" data_type: TYPE_FP32 dims: [ 2, '
    wide = FORECASTER_CONFIG.replace(forecast + "1 ]", forecast + "2 ]")
    assert wide != FORECASTER_CONFIG
    assert forecast_spec(_Model("fc", 1, _config(wide, "fc"))) is None
