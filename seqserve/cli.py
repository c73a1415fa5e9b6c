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
TRAINING_ONLY = {"torch", "onnx", "onnxscript", "onnx_ir", "matplotlib", "sacrebleu", "num2words"}


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


def _health(args: argparse.Namespace) -> int:
    import grpc

    from serving.probe import check

    creds = None
    if args.tls_ca:
        with open(args.tls_ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    code, status = check(args.target, args.service, args.timeout, creds)
    print(status)
    return code


def _forecaster_arguments(fc: argparse.ArgumentParser) -> None:
    """`train forecaster` flags; defaults come from the config dataclasses (no torch import)."""
    from training.config import LOSSES, ForecasterConfig, TrainConfig

    m, t = ForecasterConfig(), TrainConfig()
    data = fc.add_argument_group("data")
    data.add_argument(
        "--data",
        default=t.data,
        help="synthetic, etth1/etth2/ettm1/ettm2 (downloaded and checked, or from "
        "SEQSERVE_DATA_DIR), or a CSV path (default: %(default)s)",
    )
    data.add_argument(
        "--features",
        choices=["M", "S", "MS"],
        default=t.features,
        help="M: all columns in and out; S: target in and out; MS: all in, target "
        "out (default: %(default)s)",
    )
    data.add_argument(
        "--target",
        default=",".join(t.target),
        help="target column(s), comma-separated (default: OT for ETT, price for "
        "synthetic, else the first column)",
    )
    data.add_argument(
        "--covariates",
        default=None,
        help="past covariate columns, comma-separated (default: all other columns)",
    )
    data.add_argument("--date-col", default=t.date_col, help="timestamp column of a CSV")
    data.add_argument(
        "--fill",
        choices=["none", "ffill"],
        default=t.fill,
        help="empty CSV cells: none = error naming row and column, ffill = carry "
        "the previous value forward (default: %(default)s)",
    )
    data.add_argument(
        "--future-features",
        default=",".join(t.future_features) or "none",
        help="known-future calendar features of the horizon steps, from hour, "
        "weekday, month, day_of_month, day_of_year, or none (default: %(default)s)",
    )
    data.add_argument(
        "--synthetic-rows",
        type=int,
        default=t.synthetic_rows,
        help="hourly rows of the built-in generator (default: %(default)s)",
    )
    model = fc.add_argument_group("model")
    model.add_argument(
        "--arch",
        choices=["segrnn", "rnn"],
        default=m.arch,
        help="segrnn: segment-recurrent (default); rnn: last hidden state -> "
        "linear head (baseline)",
    )
    model.add_argument(
        "--cell",
        choices=["lstm", "gru"],
        default=m.cell,
        help="recurrent cell (default: %(default)s)",
    )
    model.add_argument(
        "--input-len", type=int, default=m.input_len, help="L (default: %(default)s)"
    )
    model.add_argument("--horizon", type=int, default=m.horizon, help="H (default: %(default)s)")
    model.add_argument(
        "--seg-len",
        type=int,
        default=m.seg_len,
        help="segrnn segment length; divides L and H (default: %(default)s)",
    )
    model.add_argument(
        "--d-model", type=int, default=m.d_model, help="hidden size (default: %(default)s)"
    )
    model.add_argument("--layers", type=int, default=m.layers, help="recurrent layers")
    model.add_argument("--dropout", type=float, default=m.dropout, help="(default: %(default)s)")
    model.add_argument(
        "--quantiles",
        default=",".join(f"{q:g}" for q in m.quantiles) or "none",
        help="quantile levels with pinball-loss heads, e.g. 0.1,0.5,0.9, or none "
        "(default: %(default)s)",
    )
    opt = fc.add_argument_group("training")
    opt.add_argument("--epochs", type=int, default=t.epochs, help="at most (default: %(default)s)")
    opt.add_argument("--batch-size", type=int, default=t.batch_size, help="(default: %(default)s)")
    opt.add_argument("--lr", type=float, default=t.lr, help="Adam (default: %(default)s)")
    opt.add_argument(
        "--lr-decay",
        type=float,
        default=t.lr_decay,
        help="per-epoch factor after --warm-epochs (default: %(default)s)",
    )
    opt.add_argument(
        "--warm-epochs",
        type=int,
        default=t.warm_epochs,
        help="epochs at the full learning rate (default: %(default)s)",
    )
    opt.add_argument(
        "--patience",
        type=int,
        default=t.patience,
        help="early stopping: epochs without a better validation loss (default: %(default)s)",
    )
    opt.add_argument("--clip", type=float, default=t.clip, help="gradient-norm clip")
    opt.add_argument(
        "--loss",
        choices=list(LOSSES),
        default=t.loss,
        help="point-forecast loss; early stopping compares its validation value "
        "(default: %(default)s)",
    )
    opt.add_argument(
        "--quantile-weight",
        type=float,
        default=t.quantile_weight,
        help="pinball loss weight next to the point loss (default: %(default)s)",
    )
    opt.add_argument("--seed", type=int, default=t.seed, help="random seed")
    opt.add_argument("--device", default=t.device, help="cpu or cuda (default: %(default)s)")
    opt.add_argument(
        "--threads", type=int, default=t.threads, help="torch CPU threads (default: torch's choice)"
    )
    opt.add_argument("--quiet", action="store_true", help="no progress bar")
    fc.add_argument("--out", required=True, help="checkpoint folder to write")


def _translator_arguments(tr: argparse.ArgumentParser) -> None:
    """`train translator` flags. Unset flags take the preset's value (training/translator_config.py
    lists the presets; no torch import here)."""
    from training.translator_config import PRESETS, SCHEDULES, SELECT_BY, TranslatorTrainConfig

    t, n = TranslatorTrainConfig(), PRESETS["numbers"]
    tr.add_argument(
        "--data",
        help="numbers (built-in German->English number words), multi30k (checked "
        "download or SEQSERVE_DATA_DIR), or a corpus path: X.tsv, a prefix X with "
        "X.<src>/X.<tgt>, or a folder with train/val/test.<lang> (default: numbers)",
    )
    tr.add_argument("--src", default=t.src, help="source language (default: %(default)s)")
    tr.add_argument("--tgt", default=t.tgt, help="target language (default: %(default)s)")
    tr.add_argument("--out", required=True, help="checkpoint folder to write")
    tr.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="model and training settings; default: numbers for --data numbers, "
        "multi30k otherwise; tiny trains in seconds (tests)",
    )
    model = tr.add_argument_group("model (default: the preset's)")
    model.add_argument("--d-model", type=int, help=f"model width (numbers: {n.model['d_model']})")
    model.add_argument("--heads", type=int, help="attention heads")
    model.add_argument("--ff", type=int, help="feed-forward width")
    model.add_argument("--encoder-layers", type=int, help="encoder layers")
    model.add_argument("--decoder-layers", type=int, help="decoder layers")
    model.add_argument("--dropout", type=float, help="dropout on residual outputs, embeddings")
    model.add_argument(
        "--attention-dropout",
        type=float,
        help="dropout on attention probabilities (default: --dropout)",
    )
    model.add_argument(
        "--activation-dropout",
        type=float,
        help="dropout inside the feed-forward (default: --dropout)",
    )
    model.add_argument("--max-len", type=int, help="positions: longest source/target sequence")
    model.add_argument(
        "--no-tie-embeddings",
        action="store_true",
        help="separate source, target and output embedding matrices",
    )
    data = tr.add_argument_group("data and tokenizer (default: the preset's)")
    data.add_argument("--test-split", help="multi30k test file (default: test_2016_flickr)")
    data.add_argument("--vocab-size", type=int, help="joint SentencePiece vocabulary (upper bound)")
    data.add_argument("--spm-model", choices=["unigram", "bpe"], help="SentencePiece model type")
    data.add_argument(
        "--max-source-tokens",
        type=int,
        help="longest source (EOS included); longer training pairs are dropped, "
        "the served model rejects longer inputs",
    )
    data.add_argument("--numbers-train", type=int, help="numbers corpus: training pairs")
    data.add_argument(
        "--numbers-heldout", type=int, help="numbers corpus: validation and test pairs, each"
    )
    opt = tr.add_argument_group("training (default: the preset's)")
    opt.add_argument("--max-tokens", type=int, help="tokens per batch, padding included")
    opt.add_argument("--max-steps", type=int, help="optimizer steps at most")
    opt.add_argument("--max-minutes", type=float, help="training time budget (0 = none)")
    opt.add_argument("--lr", type=float, help="peak learning rate (AdamW)")
    opt.add_argument("--warmup", type=int, help="linear warm-up steps")
    opt.add_argument(
        "--schedule",
        choices=list(SCHEDULES),
        help="after warm-up: inverse_sqrt decay, or linear decay to 0 at the end "
        "of the run (--max-steps or --max-minutes, whichever comes first)",
    )
    opt.add_argument("--label-smoothing", type=float, help="(default: 0.1)")
    opt.add_argument(
        "--subword-alpha",
        type=float,
        help="subword regularization: resample each training sentence's "
        "segmentation every epoch (unigram: smoothing alpha; bpe: dropout "
        "probability; default: 0 = off)",
    )
    opt.add_argument(
        "--extra-sources",
        type=_words,
        metavar="LANG,...",
        help="--data multi30k: also train on these source languages into the same "
        "targets (e.g. fr: Multi30k's captions in French; default: none)",
    )
    opt.add_argument(
        "--rdrop-alpha",
        type=float,
        help="R-Drop: run each batch twice and add this weight times the "
        "symmetric KL between the two dropout samples; a step then costs "
        "about twice the tokens, so halve --max-tokens to keep its cost "
        "(default: 0 = off)",
    )
    opt.add_argument("--weight-decay", type=float, help="AdamW weight decay (default: 0)")
    opt.add_argument("--clip", type=float, help="gradient-norm clip (default: 1.0)")
    opt.add_argument("--eval-every", type=int, help="steps between validation losses")
    opt.add_argument(
        "--patience", type=int, help="early stopping: evaluations without a better validation loss"
    )
    opt.add_argument("--average-last", type=int, help="checkpoint averaging over the last N")
    opt.add_argument(
        "--select-by",
        choices=list(SELECT_BY),
        help="what chooses between the averaged and the best snapshot: greedy "
        "validation BLEU, or validation loss (default: bleu)",
    )
    opt.add_argument("--bf16", action="store_true", help="bf16 autocast (CPU AMX or CUDA)")
    opt.add_argument("--seed", type=int, help="random seed (default: 0)")
    opt.add_argument("--device", help="cpu or cuda (default: cpu)")
    opt.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    opt.add_argument("--quiet", action="store_true", help="no progress bar")
    ev = tr.add_argument_group("evaluation (default: the preset's)")
    ev.add_argument("--beam-size", type=int, help="beam width on the test split")
    ev.add_argument("--length-penalty", type=float, help="GNMT alpha (0 = none)")
    ev.add_argument(
        "--length-penalty-grid",
        type=_floats,
        metavar="A,B,...",
        help="alphas tried on the validation split after training; the best by "
        "BLEU replaces --length-penalty ('' = none; multi30k: 0.6,0.8,1.0,1.2)",
    )
    ev.add_argument("--eval-batch-rows", type=int, help="decoder rows while evaluating")
    ev.add_argument("--examples", type=int, help="example translations in examples.txt")


def _words(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of numbers: {text!r}"
        ) from None


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
    he.add_argument("--target", default=DEFAULT_TARGET, help="server address host:port")
    he.add_argument("--service", default="", help="service or model name ('' = whole server)")
    he.add_argument("--timeout", type=float, default=3.0, help="seconds")
    he.add_argument("--tls-ca", help="PEM CA bundle: connect with TLS")
    he.set_defaults(handler=_health)

    # forecast
    fo = sub.add_parser(
        "forecast",
        help="forecast from a CSV with a served forecaster",
        description="Send the recent history in a CSV (timestamp column plus "
        "the series) to a served forecaster and print the forecast.",
    )
    fo.add_argument("--model", default="forecaster_gru", help="model name")
    fo.add_argument("--csv", required=True, help="CSV with a timestamp column and the series")
    fo.add_argument("--json", action="store_true", help="print JSON instead of a table")
    fo.add_argument(
        "--date-col", help="timestamp column (default: date/timestamp/time or the first column)"
    )
    fo.add_argument("--target", default=DEFAULT_TARGET, help="server address host:port")
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
    tl.add_argument("--target", default=DEFAULT_TARGET, help="server address host:port")
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
