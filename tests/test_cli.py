"""The `seqserve` command: every subcommand has useful help; flags and env mirrors parse."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from seqserve.cli import build_parser, main
from serving.settings import Device, ModelControlMode, Settings
from tests.conftest import ROOT

SUBCOMMANDS = [
    ["train", "forecaster"],
    ["train", "translator"],
    ["export"],
    ["build-repository"],
    ["serve"],
    ["health"],
    ["forecast"],
    ["translate"],
    ["bench", "serving"],
]


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).parent / "seqserve"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for cmd in ("train", "export", "serve", "health", "forecast", "translate", "bench"):
        assert cmd in out.stdout


@pytest.mark.parametrize("argv", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_has_help(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: seqserve " + " ".join(argv))
    assert len(text.splitlines()) > 4


def test_serve_flags_follow_tritonserver_names() -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "--model-repository",
            "repo",
            "--grpc-port",
            "9001",
            "--metrics-port",
            "9002",
            "--model-control-mode",
            "explicit",
            "--load-model",
            "a",
            "--load-model",
            "b",
            "--repository-poll-secs",
            "2.5",
            "--device",
            "cuda",
        ]
    )
    s = Settings.from_args(args)
    assert s.model_repository == Path("repo")
    assert (s.grpc_address, s.grpc_port, s.metrics_port) == ("127.0.0.1", 9001, 9002)
    assert s.model_control_mode is ModelControlMode.EXPLICIT
    assert s.load_models == ("a", "b")
    assert s.repository_poll_secs == 2.5
    assert s.device is Device.CUDA


def test_defaults_are_loopback_and_triton_ports() -> None:
    s = Settings.from_args(build_parser().parse_args(["serve"]))
    assert (s.grpc_address, s.grpc_port) == ("127.0.0.1", 8001)
    assert (s.metrics_address, s.metrics_port) == ("127.0.0.1", 8002)
    assert s.intra_op_threads == 1


def test_environment_mirrors_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQSERVE_GRPC_PORT", "7001")
    monkeypatch.setenv("SEQSERVE_MODEL_CONTROL_MODE", "poll")
    s = Settings.from_args(build_parser().parse_args(["serve"]))
    assert s.grpc_port == 7001 and s.model_control_mode is ModelControlMode.POLL
    # a flag beats the environment
    s = Settings.from_args(build_parser().parse_args(["serve", "--grpc-port", "7002"]))
    assert s.grpc_port == 7002


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tls-cert", "c.pem"], "--tls-cert and --tls-key go together"),
        (["--grpc-port", "70000"], "--grpc-port must be in 0..65535"),
        (["--repository-poll-secs", "0"], "--repository-poll-secs must be > 0"),
        (["--workers", "0"], "--workers must be >= 1"),
        (
            ["--workers", "2", "--model-control-mode", "explicit"],
            "--workers > 1 needs --model-control-mode none or poll",
        ),
    ],
)
def test_bad_settings_give_a_clear_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    assert main(["serve", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "suite", [["accuracy", "--cells", "", "--translator"], ["serving", "--repository"]]
)
def test_bench_with_a_missing_model_exits_2_with_a_message(
    suite: list[str], tmp_path: Path
) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "seqserve", "bench", *suite, str(tmp_path / "nope")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "nope" in out.stderr or "no model" in out.stderr


def test_health_reports_unreachable_server() -> None:
    from tests.conftest import free_port

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "seqserve",
            "health",
            "--target",
            f"127.0.0.1:{free_port()}",
            "--timeout",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "UNAVAILABLE" in out.stdout or "DEADLINE_EXCEEDED" in out.stdout
