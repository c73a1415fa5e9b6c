"""The Python client and the `seqserve forecast` command against a real server."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from serving.client import Client
from serving.commands import CsvError, read_series_csv
from tests.conftest import ROOT, ServerProcess
from tests.serving.model_factory import add_forecaster

HOUR = np.timedelta64(3600, "s")
T0 = np.datetime64("2024-03-01T00:00:00", "ns")


@pytest.fixture(scope="module")
def fc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("client") / "model_repository"
    add_forecaster(repo)
    server = ServerProcess(repo)
    try:
        server.wait_ready()
        yield server
    finally:
        server.terminate()


def test_client_forecast(fc_server: ServerProcess) -> None:
    series = {"price": [1, 2, 3, 4, 5, 6], "index": [0] * 6, "mentions": [0] * 6}
    stamps = [T0 + i * HOUR for i in range(6)]
    with Client(fc_server.target) as c:
        f = c.forecast(
            "fc", series, timestamps=stamps, future={"promo": [0, 0]}, quantiles=[0.1, 0.9]
        )
        info = c.model_info("fc")
        listed = c.list_forecasters()
    assert f.model_version == "1" and f.timestamps == [T0 + 6 * HOUR, T0 + 7 * HOUR]
    assert len(f.point["price"]) == 2 and sorted(f.quantiles["price"]) == [0.1, 0.9]
    assert f.quantiles["price"][0.1][0] < f.point["price"][0] < f.quantiles["price"][0.9][0]
    assert info.horizon == 2 and [m.name for m in listed] == ["fc"]


def test_client_channel_options_reach_the_channel(fc_server: ServerProcess) -> None:
    """Client-side load balancing over a DNS name (a headless Service in Kubernetes)."""
    port = fc_server.target.rsplit(":", 1)[1]
    with Client(
        f"dns:///localhost:{port}", channel_options=[("grpc.lb_policy_name", "round_robin")]
    ) as c:
        assert [m.name for m in c.list_forecasters()] == ["fc"]
    with (
        Client(
            fc_server.target, channel_options=[("grpc.max_receive_message_length", 10)], retries=0
        ) as c,
        pytest.raises(grpc.RpcError) as err,
    ):
        c.list_forecasters()  # the option is applied: the answer is over 10 bytes
    assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_client_raises_errors_that_must_not_be_retried(fc_server: ServerProcess) -> None:
    with Client(fc_server.target, retries=3) as c, pytest.raises(grpc.RpcError) as err:
        c.forecast("fc", {"price": [1.0]}, timestamps=[T0])
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT


class _Err(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "details", "calls"),
    [
        (grpc.StatusCode.UNAVAILABLE, "model loading", 4),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full (2 requests)", 4),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "message larger than max", 1),
        (grpc.StatusCode.INVALID_ARGUMENT, "bad", 1),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "late", 1),
    ],
)
def test_retry_policy_follows_the_status_table(
    code: grpc.StatusCode, details: str, calls: int
) -> None:
    seen = []

    def fn(request: object, timeout: float) -> None:
        seen.append(timeout)
        raise _Err(code, details)

    client = Client("127.0.0.1:1", retries=3, backoff=0.001)
    with pytest.raises(grpc.RpcError):
        client._call(fn, None, timeout=5)
    client.close()
    assert len(seen) == calls
    assert all(0 < t <= 5 for t in seen)  # every attempt stays inside the one deadline


def _csv(path: Path, rows: int = 8, bad: str | None = None) -> Path:
    lines = ["date,price,index,mentions"]
    for i in range(rows):
        t = str(T0 + i * HOUR)[:19].replace("T", " ")
        lines.append(f"{t},{i},{i * 2},{i * 3}")
    if bad:
        lines.append(bad)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_read_series_csv(tmp_path: Path) -> None:
    stamps, series = read_series_csv(_csv(tmp_path / "a.csv"))
    assert len(stamps) == 8 and list(series) == ["price", "index", "mentions"]
    # rows count from 1, the first data row, as `seqserve train` counts them
    with pytest.raises(CsvError, match=r"row 9, column 'index': 'x' is not a number"):
        read_series_csv(_csv(tmp_path / "b.csv", bad="2024-03-01 08:00:00,1,x,2"))
    with pytest.raises(CsvError, match=r"row 9, column 'date'"):
        read_series_csv(_csv(tmp_path / "c.csv", bad="yesterday,1,2,3"))


def test_only_the_rows_and_columns_the_model_reads_are_parsed(tmp_path: Path) -> None:
    """A bad cell in an old row, or in a column the model does not read, does not matter; an
    empty cell in the rows read is filled from above with --fill ffill, as training does."""
    path = _csv(tmp_path / "a.csv", rows=12)
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace(",1,2,3", ",oops,2,3")  # data row 2: old
    lines[10] = lines[10].rsplit(",", 1)[0] + ","  # data row 10: 'mentions' empty
    lines[11] = lines[11].replace(",20,", ",,")  # data row 11: 'index' empty
    path.write_text("\n".join(lines) + "\n")
    stamps, series = read_series_csv(path, last=4, names=["price"])
    assert (
        len(stamps) == 4 and list(series) == ["price"] and list(series["price"]) == [8, 9, 10, 11]
    )
    with pytest.raises(CsvError, match=r"row 10, column 'mentions': missing value; pass --fill"):
        read_series_csv(path, last=4)
    _, series = read_series_csv(path, last=4, fill="ffill")
    assert list(series["mentions"]) == [24, 24, 30, 33]
    assert list(series["index"]) == [16, 18, 18, 22]
    with pytest.raises(CsvError, match="lacks column 'volume'"):
        read_series_csv(path, names=["price", "volume"])


def test_forecast_command_table_and_json(fc_server: ServerProcess, tmp_path: Path) -> None:
    # The model takes a known-future series 'promo' the CSV cannot give: the command says so.
    csv = _csv(tmp_path / "recent.csv")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "seqserve",
            "forecast",
            "--model",
            "fc",
            "--csv",
            str(csv),
            "-u",
            fc_server.target,
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "INVALID_ARGUMENT" in out.stderr and "promo" in out.stderr


def test_forecast_command_missing_column(fc_server: ServerProcess, tmp_path: Path) -> None:
    csv = tmp_path / "x.csv"
    csv.write_text("date,price\n2024-03-01 00:00:00,1\n")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "seqserve",
            "forecast",
            "--model",
            "fc",
            "--csv",
            str(csv),
            "-u",
            fc_server.target,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "lacks column 'index'" in out.stderr


def test_forecast_command_prints(tmp_path: Path) -> None:
    """A forecaster without known-future inputs: table and JSON output."""
    from tests.serving.model_factory import FORECASTER_CONFIG, add_model, mean_forecaster

    repo = tmp_path / "model_repository"
    config = FORECASTER_CONFIG.replace(
        '[\\"hour\\", \\"weekday\\", \\"promo\\"]', '[\\"hour\\", \\"weekday\\", \\"month\\"]'
    )
    add_model(
        repo,
        "fc",
        config,
        lambda p: mean_forecaster(
            p,
            window=6,
            horizon=2,
            n_in=3,
            targets=[0],
            n_future=3,
            quantile_offsets=[-1.0, 0.0, 1.0],
        ),
    )
    server = ServerProcess(repo)
    try:
        server.wait_ready()
        csv = _csv(tmp_path / "recent.csv")
        base = [
            sys.executable,
            "-m",
            "seqserve",
            "forecast",
            "--model",
            "fc",
            "--csv",
            str(csv),
            "-u",
            server.target,
        ]
        table = subprocess.run(base, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        assert lines[0].split()[:2] == ["timestamp", "price"]
        assert lines[1].startswith("2024-03-01T08:00:00")
        js = subprocess.run([*base, "--json"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        got = json.loads(js.stdout)
        assert got["timestamps"][0].startswith("2024-03-01T08:00:00")
        assert len(got["forecast"]["price"]) == 2 and set(got["quantiles"]["price"]) == {
            "0.1",
            "0.5",
            "0.9",
        }
        # `seqserve forecast ... | head`: a reader that leaves early is not an error.
        piped = subprocess.Popen(base, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert piped.stdout is not None and piped.stderr is not None
        piped.stdout.close()
        assert piped.wait(60) == 0
        assert "Traceback" not in piped.stderr.read().decode()
    finally:
        server.terminate()
