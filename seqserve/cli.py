"""The `seqserve` command. Flags are parsed in `main()`; each subcommand imports its code only
when it runs, so `serve`, `health`, `forecast` and `translate` work without torch installed."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

DEFAULT_TARGET = "127.0.0.1:8001"

Handler = Callable[[argparse.Namespace], int]
TRAINING_ONLY = {
    "torch",
    "onnx",
    "onnxscript",
    "onnx_ir",
    "matplotlib",
    "sacrebleu",
    "num2words",
    "transformers",
}


class NotAvailable(Exception):
    """A subcommand whose implementation is not in this installation or version."""


def _lazy(module: str, func: str = "run") -> Handler:
    """A handler that imports `module` only when the subcommand runs."""

    def handler(args: argparse.Namespace) -> int:
        try:
            return getattr(importlib.import_module(module), func)(args)
        except ModuleNotFoundError as err:  # at import, or when the command reaches training
            if err.name in TRAINING_ONLY:
                raise NotAvailable(
                    f"`seqserve {args.command}` needs {err.name}, which serving-only installs "
                    "leave out: pip install 'seqserve[train]'"
                ) from err
            raise

    return handler


def _serve(args: argparse.Namespace) -> int:
    from serving.server import main as serve_main
    from serving.settings import Settings

    try:
        settings = Settings.from_args(args)
    except ValueError as err:
        raise NotAvailable(f"seqserve serve: {err}") from err
    return serve_main(settings)


class _DeprecatedTarget(argparse.Action):
    """`--target` of the client commands: the server address, now `-u/--url` as in
    tritonclient and perf_analyzer. Still taken, with a warning."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        print(f"{parser.prog}: --target is deprecated; use -u/--url", file=sys.stderr)
        namespace.url = values


def _server_address(parser: argparse.ArgumentParser) -> None:
    """-u/--url, the server's host:port (tritonclient's and perf_analyzer's flag)."""
    parser.add_argument(
        "-u",
        "--url",
        default=DEFAULT_TARGET,
        help="server address host:port (default: %(default)s)",
    )
    parser.add_argument(
        "--target", action=_DeprecatedTarget, help="deprecated spelling of -u/--url"
    )


def _health(args: argparse.Namespace) -> int:
    import grpc

    from serving.probe import check

    creds = None
    if args.tls_ca:
        with open(args.tls_ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    code, status = check(args.url, args.service, args.timeout, creds)
    print(status)
    return code


def _forecaster_arguments(fc: argparse.ArgumentParser) -> None:
    """`train forecaster` flags, generated from the config dataclasses (no torch import)."""
    from core.flags import add_flags
    from training.config import ForecasterConfig, TrainConfig

    groups = {name: fc.add_argument_group(name) for name in ("data", "model", "training")}
    add_flags(fc, TrainConfig, groups=groups)
    add_flags(fc, ForecasterConfig, groups=groups)
    groups["training"].add_argument("--quiet", action="store_true", help="no progress bar")
    fc.add_argument("--out", required=True, help="checkpoint folder to write")


def _translator_arguments(tr: argparse.ArgumentParser) -> None:
    """`train translator` flags, generated from the config dataclasses; an unset flag takes
    the preset's value, and each help text says what that is (no torch import here)."""
    from core.flags import add_flags, preset_help
    from training.translator_config import (
        DATA,
        EVALUATION,
        MODEL,
        TRAINING,
        TRANSLATOR_PRESETS,
        TranslatorConfig,
        TranslatorTrainConfig,
    )

    tr.add_argument("--out", required=True, help="checkpoint folder to write")
    tr.add_argument(
        "--preset",
        choices=sorted(TRANSLATOR_PRESETS),
        help="model and training settings; default: numbers for --data numbers, "
        "multi30k otherwise; tiny trains in seconds (tests)",
    )
    groups = {name: tr.add_argument_group(name) for name in (MODEL, DATA, TRAINING, EVALUATION)}
    models = {name: p.model for name, p in TRANSLATOR_PRESETS.items()}
    add_flags(tr, TranslatorConfig, preset_help(TranslatorConfig, models), groups)
    trains = {name: p.train for name, p in TRANSLATOR_PRESETS.items()}
    # --src and --tgt are the corpus's languages, not a preset's: they keep their own default.
    texts = preset_help(TranslatorTrainConfig, trains)
    texts = {name: text for name, text in texts.items() if name not in ("src", "tgt")}
    add_flags(tr, TranslatorTrainConfig, texts, groups)
    groups[TRAINING].add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqserve",
        description="Train sequence models in PyTorch, export them to ONNX, and serve them over "
        "gRPC (KServe V2 / Triton protocol) with Prometheus metrics.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # train
    train = sub.add_parser(
        "train",
        help="train a forecaster or a translator (needs torch)",
        description="Train a model and write a self-describing checkpoint.",
    )
    kinds = train.add_subparsers(dest="kind", required=True, metavar="KIND")
    fc = kinds.add_parser(
        "forecaster",
        help="LSTM/GRU forecaster from a CSV or a benchmark",
        description="Train an LSTM or GRU forecaster.",
    )
    _forecaster_arguments(fc)
    fc.set_defaults(handler=_lazy("training.train_forecaster"))
    tr = kinds.add_parser(
        "translator",
        help="Transformer translator (Multi30k, numbers, files)",
        description="Train an encoder-decoder Transformer translator.",
    )
    _translator_arguments(tr)
    tr.set_defaults(handler=_lazy("training.train_translator"))

    # export
    ex = sub.add_parser(
        "export",
        help="export a checkpoint into a model repository (needs torch)",
        description="Export a checkpoint to ONNX in a Triton-style model "
        "repository: <repo>/<name>/config.pbtxt and <repo>/<name>/<N>/model.onnx.",
    )
    ex.add_argument("--checkpoint", required=True, help="checkpoint folder from `seqserve train`")
    ex.add_argument("--repository", default="model_repository", help="model repository folder")
    ex.add_argument("--name", required=True, help="model name in the repository")
    ex.add_argument("--version", type=int, help="version number (default: next free one)")
    ex.add_argument("--force", action="store_true", help="overwrite an existing version")
    ex.add_argument(
        "--quantize",
        choices=["int8", "fp16"],
        help="int8: dynamic int8 quantisation (CPU); fp16: half-precision network "
        "with FP32 inputs and outputs, for GPU serving (forecasters)",
    )
    ex.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    ex.add_argument(
        "--max-mse-increase",
        type=float,
        default=0.05,
        metavar="FRACTION",
        help="--quantize fails when the forecaster's validation MSE grows by more than "
        "this "
        "fraction (default 0.05 = 5%%); raise it to accept the loss",
    )
    ex.set_defaults(handler=_lazy("export.__main__"))

    # import
    im = sub.add_parser(
        "import",
        help="import a pretrained model into a model repository (needs torch, transformers)",
        description="Import a pretrained model into a model repository.",
    )
    formats = im.add_subparsers(dest="format", required=True, metavar="FORMAT")
    mi = formats.add_parser(
        "marian",
        help="a Hugging Face MarianMT folder (OPUS-MT) as a translator",
        description="Convert a Hugging Face MarianMT folder (config.json, weights, "
        "source.spm, target.spm, vocab.json) into a seqserve translator: the network's "
        "logits are checked against transformers' before anything is written.",
    )
    mi.add_argument("folder", help="the MarianMT folder")
    mi.add_argument("--repository", default="model_repository", help="model repository folder")
    mi.add_argument("--name", required=True, help="model name in the repository")
    mi.add_argument("--version", type=int, help="version number (default: next free one)")
    mi.add_argument("--force", action="store_true", help="overwrite an existing version")
    mi.add_argument(
        "--quantize",
        choices=["int8"],
        help="int8: dynamic int8 quantisation (CPU); the BLEU of its greedy output against "
        "fp32's is recorded",
    )
    mi.add_argument("--src", default="", help="source language code, for clients (e.g. de)")
    mi.add_argument("--tgt", default="", help="target language code, for clients (e.g. en)")
    mi.add_argument(
        "--check",
        metavar="SENTENCES",
        help="a text file, one source per line: after writing, decode each through the "
        "written version and through transformers' generate() (greedy and beam 4) and "
        "compare the tokens; exit 1 if any differs",
    )
    mi.set_defaults(handler=_lazy("seqserve.marian_import"))

    # build-repository
    br = sub.add_parser(
        "build-repository",
        help="build the default model repository (what `make serve` serves)",
        description="Train and export the default models into a repository.",
    )
    br.add_argument("--repository", default="model_repository", help="folder to write")
    br.add_argument(
        "--preset",
        choices=["default", "tiny"],
        default="default",
        help="tiny: seconds, for tests; default: what `make serve` serves",
    )
    br.set_defaults(handler=_lazy("seqserve.defaults"))

    # serve
    sv = sub.add_parser(
        "serve",
        help="serve a model repository over gRPC",
        description="Serve a model repository over gRPC (KServe V2 / Triton "
        "protocol, grpc.health.v1, reflection) with Prometheus metrics.",
    )
    from serving.settings import add_arguments  # stdlib-only module: cheap

    add_arguments(sv)
    sv.set_defaults(handler=_serve)

    # health
    he = sub.add_parser(
        "health",
        help="grpc.health.v1 check (exit 0 serving, 1 not, 2 down)",
        description="Ask a server's grpc.health.v1 service. Exit code 0 when "
        "SERVING, 1 when not serving, 2 when unreachable.",
    )
    _server_address(he)
    he.add_argument("--service", default="", help="service or model name ('' = whole server)")
    he.add_argument("--timeout", type=float, default=3.0, help="seconds")
    he.add_argument("--tls-ca", help="PEM CA bundle: connect with TLS")
    he.set_defaults(handler=_health)

    # forecast
    fo = sub.add_parser(
        "forecast",
        help="forecast from a CSV with a served forecaster",
        description="Send the recent history in a CSV (timestamp column plus "
        "the series) to a served forecaster and print the forecast. Only the last rows the "
        "model reads are parsed; rows are numbered from 1, the first data row.",
    )
    fo.add_argument("--model", default="forecaster_gru", help="model name")
    fo.add_argument("--csv", required=True, help="CSV with a timestamp column and the series")
    fo.add_argument("--json", action="store_true", help="print JSON instead of a table")
    fo.add_argument(
        "--plot",
        metavar="FILE",
        help="also draw the history, the forecast and its quantile band into FILE (a PNG; "
        "needs matplotlib)",
    )
    fo.add_argument(
        "--fill",
        choices=["none", "ffill"],
        default="none",
        help="empty cells: none = error naming row and column, ffill = carry the value above "
        "forward, as `seqserve train forecaster --fill` (default: %(default)s)",
    )
    fo.add_argument(
        "--date-col", help="timestamp column (default: date/timestamp/time or the first column)"
    )
    fo.add_argument(
        "--id-col",
        help="series id column of a long-format CSV, many series in one file (default: "
        "unique_id when the header has it): each series is forecast",
    )
    fo.add_argument("--id", help="forecast only this series of a long-format CSV")
    _server_address(fo)
    fo.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds")
    fo.set_defaults(handler=_lazy("serving.commands", "run_forecast"))

    # translate
    tl = sub.add_parser(
        "translate",
        help="translate text with a served translator",
        description="Translate sentences with a served translator.",
    )
    tl.add_argument("text", nargs="+", help="sentences to translate")
    tl.add_argument("--model", default="translator", help="model name")
    tl.add_argument("--beam-size", type=int, default=4, help="beam width (1 = greedy)")
    tl.add_argument("--stream", action="store_true", help="print text as it is decoded")
    _server_address(tl)
    tl.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds")
    tl.set_defaults(handler=_lazy("serving.commands", "run_translate"))

    # bench
    be = sub.add_parser(
        "bench",
        help="run a benchmark and write JSON under bench/results/",
        description="Serving, translator or accuracy benchmarks.",
    )
    suites = be.add_subparsers(dest="suite", required=True, metavar="SUITE")
    bs = suites.add_parser(
        "serving",
        help="in-process onnxruntime vs served (perf_analyzer)",
        description="In-process onnxruntime ceiling and the served model "
        "through perf_analyzer, batching on and off, in one run.",
    )
    from bench.serving import add_arguments as add_serving_bench  # stdlib-only at import

    add_serving_bench(bs)
    bs.set_defaults(handler=_lazy("bench.serving"))
    bt = suites.add_parser(
        "translator",
        help="served translator vs PyTorch and CTranslate2",
        description="The served translator (tritonclient load generator), "
        "seqserve in process, PyTorch eager (with and without a key/value "
        "cache) and CTranslate2 on the same weights, in one run.",
    )
    from bench.translator import add_arguments as add_translator_bench  # stdlib-only at import

    add_translator_bench(bt)
    bt.set_defaults(handler=_lazy("bench.translator"))
    ba = suites.add_parser(
        "accuracy",
        help="forecasters on ETT, translator on Multi30k",
        description="Forecasters trained on the ETT files over several "
        "seeds beside the published figures; an exported translator scored "
        "on Multi30k test splits (sacreBLEU, chrF).",
    )
    from bench.accuracy import add_arguments as add_accuracy_bench  # stdlib-only at import

    add_accuracy_bench(ba)
    ba.set_defaults(handler=_lazy("bench.accuracy"))
    bk = suites.add_parser(
        "soak",
        help="mixed load for a long time, with faults injected",
        description="V2, Forecast, Translate and TranslateStream clients "
        "on one server for --minutes while its translator engine is killed "
        "and stopped and new versions (corrupt, then good) are dropped in: "
        "errors by status, memory and p99 over time, ServerLive's p99.",
    )
    from bench.soak import add_arguments as add_soak_bench  # stdlib-only at import

    add_soak_bench(bk)
    bk.set_defaults(handler=_lazy("bench.soak"))
    bd = suites.add_parser(
        "training",
        help="translator training: one process against several (torchrun)",
        description="Trains the same global batches under torchrun with "
        "each PROCESSESxTHREADS layout in turn: training target tokens/s, "
        "and each layout's median ratio to the first.",
    )
    from bench.training import add_arguments as add_training_bench  # stdlib-only at import

    add_training_bench(bd)
    bd.set_defaults(handler=_lazy("bench.training"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except NotAvailable as err:
        print(err, file=sys.stderr)
        return 2
    except BrokenPipeError:  # `seqserve forecast ... | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
