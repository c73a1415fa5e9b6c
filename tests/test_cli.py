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
            "-u",
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


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (
            ["train", "translator", "--data", "multi30k", "--d-model", "100", "--heads", "3"],
            "heads",
        ),
        (["train", "translator", "--preset", "tiny", "--max-source-tokens", "500"], "max_len"),
        (["train", "forecaster", "--seg-len", "7"], "seg_len"),
        (["train", "forecaster", "--dropout", "1.5"], "dropout"),
    ],
)
def test_bad_training_settings_stop_before_any_work(
    argv: list[str], named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A setting that cannot work is refused with the field's name, before the corpus is
    loaded or a tokenizer trained (Multi30k here is never read: the check comes first)."""
    out = tmp_path / "run"
    assert main([*argv, "--out", str(out)]) == 2
    assert named in capsys.readouterr().err
    assert not out.exists()


def test_config_checks_hold_under_python_O() -> None:
    """The checks are ValueErrors, not asserts, which `python -O` strips."""
    probe = (
        "from training.config import ForecasterConfig\n"
        "from training.translator_config import TranslatorConfig\n"
        "for make in (lambda: ForecasterConfig(input_len=96, horizon=96, seg_len=7),\n"
        "             lambda: TranslatorConfig(d_model=100, num_heads=3)):\n"
        "    try:\n"
        "        make()\n"
        "    except ValueError:\n"
        "        continue\n"
        "    raise SystemExit('accepted')\n"
    )
    run = subprocess.run(
        [sys.executable, "-O", "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_command_line_reference_is_generated_from_the_parser() -> None:
    """docs/cli.md is `python -m seqserve.cli_reference` (flags, defaults, choices, help and
    the translator presets, all from the config dataclasses): regenerate it after a change."""
    from seqserve.cli_reference import render

    assert (ROOT / "docs" / "cli.md").read_text() == render(), (
        "docs/cli.md is stale: python -m seqserve.cli_reference > docs/cli.md"
    )


def test_every_flag_the_docs_name_exists() -> None:
    """A `--flag` written in the README or docs/ is a flag of some subcommand (or of a tool
    the docs show beside ours), so a renamed flag cannot live on in the docs."""
    import re

    from tests.test_cli_options import _subcommands

    ours = {
        option
        for _, sub in _subcommands(build_parser())
        for action in sub._actions
        for option in action.option_strings
    }
    theirs = {
        "--build", "--build-arg", "--profile", "--rm", "--scale",  # docker, docker compose
        "--check",  # ruff format
        "--gil",  # py-spy
        "--native", "--bare",  # python -m bench.floor_server
        "--mkl",  # python -m bench.int8_gemm
        "--standalone", "--nproc-per-node", "--nnodes",  # torchrun
        "--rdzv-backend", "--rdzv-endpoint", "--rdzv-id",
        "--strict",  # kubernetes-validate
        "--streaming",  # perf_analyzer
    }  # fmt: skip
    mentioned: dict[str, list[str]] = {}
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for name in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9]", path.read_text()):
            mentioned.setdefault(name, []).append(path.name)
    unknown = {n: sorted(set(p)) for n, p in mentioned.items() if n not in ours | theirs}
    assert not unknown, f"flags the docs name that no subcommand has: {unknown}"


def test_no_flag_given_is_the_config_dataclasses_defaults() -> None:
    """The generated flags default to their fields' values (and a preset's, for the
    translator): parsing an empty command line gives back the dataclasses' defaults."""
    from training.config import ForecasterConfig, TrainConfig
    from training.train_forecaster import configs_from_args as forecaster_configs
    from training.train_translator import configs_from_args as translator_configs
    from training.translator_config import TRANSLATOR_PRESETS

    parse = build_parser().parse_args
    assert Settings.from_args(parse(["serve"])) == Settings()
    model, train = forecaster_configs(parse(["train", "forecaster", "--out", "x"]))
    assert train == TrainConfig()
    assert model == ForecasterConfig(n_past=1, target_index=(0,), n_future=0)
    for preset, argv in (("numbers", []), ("multi30k", ["--data", "multi30k"])):
        got = translator_configs(parse(["train", "translator", *argv, "--out", "x"]))
        assert got == (TRANSLATOR_PRESETS[preset].model, TRANSLATOR_PRESETS[preset].train)


def test_a_corpus_without_preset_gets_one_by_its_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A user's corpus is sized by its training pairs (validation and test carved out): below
    SMALL_CORPUS the small preset, else multi30k's; the choice and the rule are printed, and
    --preset still wins."""
    from training.train_translator import configs_from_args as translator_configs
    from training.translator_config import SMALL_CORPUS, TRANSLATOR_PRESETS, preset_for

    corpus = tmp_path / "pairs.tsv"
    corpus.write_text("".join(f"satz {i}\tsentence {i}\n" for i in range(3000)))
    parse = build_parser().parse_args
    model, train = translator_configs(
        parse(["train", "translator", "--data", str(corpus), "--out", "x"])
    )
    assert model == TRANSLATOR_PRESETS["small"].model
    assert train.max_steps == TRANSLATOR_PRESETS["small"].train.max_steps
    assert train.data == str(corpus)
    assert "preset small: 2,880 training pairs, fewer than 20,000" in capsys.readouterr().err
    model, _ = translator_configs(
        parse(["train", "translator", "--data", str(corpus), "--preset", "multi30k",
               "--out", "x"])
    )  # fmt: skip
    assert model == TRANSLATOR_PRESETS["multi30k"].model and not capsys.readouterr().err
    assert preset_for(str(corpus), SMALL_CORPUS) == "multi30k"
    assert preset_for("numbers") == "numbers" and preset_for("multi30k", 10) == "multi30k"


@pytest.mark.parametrize("command", ["health", "forecast", "translate"])
def test_the_server_address_is_url_as_in_tritonclient_and_target_still_works(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """-u/--url, tritonclient's and perf_analyzer's flag; --target stays a while, warned."""
    extra = {"health": [], "forecast": ["--csv", "x.csv"], "translate": ["hallo"]}[command]
    parse = build_parser().parse_args
    assert parse([command, *extra]).url == "127.0.0.1:8001"
    assert parse([command, "-u", "h:1", *extra]).url == "h:1"
    assert parse([command, "--url", "h:2", *extra]).url == "h:2"
    assert parse([command, "--target", "h:3", *extra]).url == "h:3"
    assert "--target is deprecated; use -u/--url" in capsys.readouterr().err
