"""The `seqserve` command. Flags are parsed in `main()`; each subcommand imports its code only
when it runs, so `serve`, `health`, `forecast` and `translate` work without torch installed."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

DEFAULT_TARGET = "127.0.0.1:8001"

Handler = Callable[[argparse.Namespace], int]


class NotAvailable(Exception):
    """A subcommand whose implementation is not in this installation or version."""


def _lazy(module: str, func: str = "run") -> Handler:
    """A handler that imports `module` only when the subcommand runs."""

    def handler(args: argparse.Namespace) -> int:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name in {"torch", "onnx", "onnxscript"}:
                raise NotAvailable(
                    f"`seqserve {args.command}` needs {err.name}, which serving-only installs "
                    "leave out: pip install 'seqserve[train]'"
                ) from err
            raise
        return getattr(mod, func)(args)

    return handler


def _not_yet(issue: str) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        raise NotAvailable(f"`seqserve {args.command}` is not in this version yet ({issue}).")

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqserve",
        description="Train sequence models in PyTorch, export them to ONNX, and serve them over "
        "gRPC (KServe V2 / Triton protocol) with Prometheus metrics.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # train
    train = sub.add_parser("train", help="train a forecaster or a translator (needs torch)",
                           description="Train a model and write a self-describing checkpoint.")
    kinds = train.add_subparsers(dest="kind", required=True, metavar="KIND")
    fc = kinds.add_parser("forecaster", help="LSTM/GRU forecaster from a CSV or a benchmark",
                          description="Train an LSTM or GRU forecaster.")
    fc.add_argument("--data", default="synthetic",
                    help="synthetic, ETTh1/ETTh2/ETTm1/ETTm2, or a CSV path (default: synthetic)")
    fc.add_argument("--cell", choices=["lstm", "gru"], default="gru", help="recurrent cell")
    fc.add_argument("--out", required=True, help="checkpoint folder to write")
    fc.add_argument("--device", default="cpu", help="cpu or cuda")
    fc.add_argument("--seed", type=int, default=0, help="random seed")
    fc.set_defaults(handler=_not_yet("the forecaster issue adds it"))
    tr = kinds.add_parser("translator", help="Transformer translator (Multi30k, numbers, files)",
                          description="Train an encoder-decoder Transformer translator.")
    tr.add_argument("--data", default="numbers", help="multi30k, numbers, or a corpus path")
    tr.add_argument("--src", default="de", help="source language")
    tr.add_argument("--tgt", default="en", help="target language")
    tr.add_argument("--out", required=True, help="checkpoint folder to write")
    tr.add_argument("--device", default="cpu", help="cpu or cuda")
    tr.add_argument("--seed", type=int, default=0, help="random seed")
    tr.set_defaults(handler=_not_yet("the translator issue adds it"))

    # export
    ex = sub.add_parser("export", help="export a checkpoint into a model repository (needs torch)",
                        description="Export a checkpoint to ONNX in a Triton-style model "
                        "repository: <repo>/<name>/config.pbtxt and <repo>/<name>/<N>/model.onnx.")
    ex.add_argument("--checkpoint", required=True, help="checkpoint folder from `seqserve train`")
    ex.add_argument("--repository", default="model_repository", help="model repository folder")
    ex.add_argument("--name", required=True, help="model name in the repository")
    ex.add_argument("--version", type=int, help="version number (default: next free one)")
    ex.add_argument("--force", action="store_true", help="overwrite an existing version")
    ex.add_argument("--quantize", choices=["int8"], help="dynamic int8 quantisation")
    ex.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    ex.set_defaults(handler=_not_yet("the export issue adds it"))

    # build-repository
    br = sub.add_parser("build-repository",
                        help="build the default model repository (what `make serve` serves)",
                        description="Train and export the default models into a repository.")
    br.add_argument("--repository", default="model_repository", help="folder to write")
    br.add_argument("--preset", choices=["default", "tiny"], default="default",
                    help="tiny: seconds, for tests; default: what `make serve` serves")
    br.set_defaults(handler=_lazy("training.defaults"))

    # serve
    sv = sub.add_parser("serve", help="serve a model repository over gRPC",
                        description="Serve a model repository over gRPC (KServe V2 / Triton "
                        "protocol, grpc.health.v1, reflection) with Prometheus metrics.")
    from serving.settings import add_arguments  # stdlib-only module: cheap

    add_arguments(sv)
    sv.set_defaults(handler=_serve)

    # health
    he = sub.add_parser("health", help="grpc.health.v1 check (exit 0 serving, 1 not, 2 down)",
                        description="Ask a server's grpc.health.v1 service. Exit code 0 when "
                        "SERVING, 1 when not serving, 2 when unreachable.")
    he.add_argument("--target", default=DEFAULT_TARGET, help="server address host:port")
    he.add_argument("--service", default="",
                    help="service or model name ('' = whole server)")
    he.add_argument("--timeout", type=float, default=3.0, help="seconds")
    he.add_argument("--tls-ca", help="PEM CA bundle: connect with TLS")
    he.set_defaults(handler=_health)

    # forecast
    fo = sub.add_parser("forecast", help="forecast from a CSV with a served forecaster",
                        description="Send the recent history in a CSV (timestamp column plus "
                        "the series) to a served forecaster and print the forecast.")
    fo.add_argument("--model", default="forecaster_gru", help="model name")
    fo.add_argument("--csv", required=True, help="CSV with a timestamp column and the series")
    fo.add_argument("--json", action="store_true", help="print JSON instead of a table")
    fo.add_argument("--target", default=DEFAULT_TARGET, help="server address host:port")
    fo.set_defaults(handler=_not_yet("the typed API issue adds it"))

    # translate
    tl = sub.add_parser("translate", help="translate text with a served translator",
                        description="Translate sentences with a served translator.")
    tl.add_argument("text", nargs="+", help="sentences to translate")
    tl.add_argument("--model", default="translator", help="model name")
    tl.add_argument("--beam-size", type=int, default=4, help="beam width (1 = greedy)")
    tl.add_argument("--stream", action="store_true", help="print text as it is decoded")
    tl.add_argument("--target", default=DEFAULT_TARGET, help="server address host:port")
    tl.set_defaults(handler=_not_yet("the typed API issue adds it"))

    # bench
    be = sub.add_parser("bench", help="run a benchmark and write JSON under bench/results/",
                        description="Serving, translator or accuracy benchmarks.")
    be.add_argument("suite", choices=["serving", "translator", "accuracy"], help="what to measure")
    be.set_defaults(handler=_not_yet("the benchmarks issue adds it"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except NotAvailable as err:
        print(err, file=sys.stderr)
        return 2
