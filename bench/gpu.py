"""CUDA against CPU for the served models, side by side in one run on a GPU host with
onnxruntime-gpu (`seqserve[serve-gpu]`):

    python -m bench.gpu --model-repository model_repository [--translator DIR/translator/1]
        [--sentences FILE] [--clients 8] [--seconds 8] [--out FILE.json]

1. Every `onnxruntime_onnx` model, in process, on sessions made by the server's own code
   (`create_session`) for --device cpu and --device cuda: median latency at batch 1 and 64,
   CUDA through `run` and through IO binding (`run_bound`, what the server uses on CUDA), and
   the largest difference between the devices.
2. Translators (the repository's `translator`, and each `--translator`): translations of the
   sentences, greedy and beam 4, on the CPU, on CUDA as served (the caches kept on the GPU
   between steps) and on CUDA through `run`, texts compared and timed; and a bare decoder-step
   loop at R rows: CPU `run`, CUDA `run` (the self-attention and source caches cross to the
   GPU and back at every step) and CUDA with the caches kept on the GPU.
3. The server: `seqserve serve --device cuda` on the repository, one V2 ModelInfer per model,
   compared with the CPU results; the providers it logged; its /metrics.
4. Each `--translator` served alone with --device cpu, then cuda: `--clients` closed-loop
   V2 clients for `--seconds`; requests and words per second, median latency.

Calls of the things compared take turns, so the host's slow spells hit all of them alike.
With `--cpu-only` the "cuda" side runs on the CPU provider (`--device-fallback warn`): a dry
run of this script on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort

from core.translation.graphs import decoder_feeds, decoder_outputs
from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc as pb_grpc
from serving import tensors
from serving.models.onnx_model import create_session, run_bound
from serving.models.translator_engine import load_translator
from serving.probe import check
from serving.repository import read_config
from serving.settings import Device, FallbackPolicy, Settings

ROOT = Path(__file__).resolve().parent.parent
BATCHES = (1, 64)
ROWS = (1, 8, 64)


def _median_ms(times: list[float]) -> float:
    return round(statistics.median(times) * 1e3, 4)


def _turns(
    calls: dict[str, Callable[[], object]], repeats: int, warmup: int = 5
) -> dict[str, float]:
    """Median milliseconds of each call, the calls taking turns."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: _median_ms(t) for name, t in times.items()}


def _inputs(config: Any, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {i.name: rng.standard_normal((batch, *i.dims)).astype(np.float32) for i in config.input}


def onnx_models(repository: Path, cpu: Settings, cuda: Settings, repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rng = np.random.default_rng(0)
    for model_dir in sorted(p for p in repository.iterdir() if (p / "config.pbtxt").is_file()):
        config = read_config(model_dir)
        if config.platform != "onnxruntime_onnx":
            continue
        path = max(
            (p for p in model_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
        ) / (config.default_model_filename or "model.onnx")
        sessions = {
            "cpu": create_session(path, config, cpu),
            "cuda": create_session(path, config, cuda),
        }
        result: dict[str, Any] = {
            "providers": {k: s.get_providers()[0] for k, s in sessions.items()}
        }
        names = [o.name for o in sessions["cpu"].get_outputs()]
        for batch in BATCHES:
            feeds = _inputs(config, batch, rng)
            ref, got = (s.run(None, feeds) for s in sessions.values())
            result[f"max_abs_diff_b{batch}"] = float(
                max(np.abs(a - b).max() for a, b in zip(ref, got, strict=True))
            )
            result[f"median_ms_b{batch}"] = _turns(
                {
                    "cpu_run": lambda f=feeds, s=sessions["cpu"]: s.run(None, f),
                    "cuda_run": lambda f=feeds, s=sessions["cuda"]: s.run(None, f),
                    "cuda_iobinding": lambda f=feeds, s=sessions["cuda"], n=names: run_bound(
                        s, f, n
                    ),
                },
                repeats,
            )
        out[model_dir.name] = result
        print(model_dir.name, json.dumps(result), flush=True)
    return out


def _step_inputs(
    session: ort.InferenceSession, rows: int, past: int, source: int, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], int]:
    names = {i.name: i.shape for i in session.get_inputs()}
    layers = sum(n.startswith("past_k_") for n in names)
    _, heads, _, head_dim = names["past_k_0"]
    kv, cross = (layers, rows, heads, past, head_dim), (layers, rows, heads, source, head_dim)
    vocab = session.get_outputs()[0].shape[-1]  # log_probs [R, V]
    top = min(100, vocab) if isinstance(vocab, int) else 100
    feeds = decoder_feeds(
        tokens=rng.integers(4, top, (rows, 1)),
        positions=np.full((rows, 1), past),
        past_k=rng.standard_normal(kv, np.float32),
        past_v=rng.standard_normal(kv, np.float32),
        past_mask=np.ones((rows, past), bool),
        cross_k=rng.standard_normal(cross, np.float32),
        cross_v=rng.standard_normal(cross, np.float32),
        src_mask=np.ones((rows, source), bool),
    )
    return {k: np.ascontiguousarray(v) for k, v in feeds.items()}, layers


def _decode_run(
    session: ort.InferenceSession, feeds: dict[str, np.ndarray], layers: int, steps: int
) -> Callable[[], None]:
    """`steps` decoder steps through `run`: each step's present cache is the next past."""
    names = decoder_outputs(layers)

    def call() -> None:
        f = dict(feeds)
        for _ in range(steps):
            out = session.run(names, f)
            f["past_mask"] = np.ones((f["past_mask"].shape[0], f["past_mask"].shape[1] + 1), bool)
            f["positions"] = f["positions"] + 1
            f["tokens"] = out[0].argmax(-1)[:, None]
            for i in range(layers):
                f[f"past_k_{i}"], f[f"past_v_{i}"] = out[1 + i], out[1 + layers + i]

    return call


def _decode_iobinding(
    session: ort.InferenceSession,
    feeds: dict[str, np.ndarray],
    layers: int,
    steps: int,
    device: str,
) -> Callable[[], None]:
    """The same steps with the caches on `device` between steps: the source keys/values go up
    once, each step's present cache is bound as the next past without leaving the device, and
    only the log-probabilities come back."""
    cross = {
        k: ort.OrtValue.ortvalue_from_numpy(v, device, 0)
        for k, v in feeds.items()
        if k.startswith("cross_")
    }
    presents = decoder_outputs(layers)[1:]

    def call() -> None:
        past = {
            k: ort.OrtValue.ortvalue_from_numpy(v, device, 0)
            for k, v in feeds.items()
            if k.startswith("past_") and k != "past_mask"
        }
        tokens, positions, mask = feeds["tokens"], feeds["positions"], feeds["past_mask"]
        for _ in range(steps):
            binding = session.io_binding()
            binding.bind_cpu_input("tokens", tokens)
            binding.bind_cpu_input("positions", positions)
            binding.bind_cpu_input("past_mask", mask)
            binding.bind_cpu_input("src_mask", feeds["src_mask"])
            for name, value in (*cross.items(), *past.items()):
                binding.bind_ortvalue_input(name, value)
            binding.bind_output("log_probs", "cpu")
            for name in presents:
                binding.bind_output(name, device)
            session.run_with_iobinding(binding)
            out = binding.get_outputs()
            log_probs = out[0].numpy()
            tokens = log_probs.argmax(-1)[:, None]
            positions = positions + 1
            mask = np.ones((mask.shape[0], mask.shape[1] + 1), bool)
            for i in range(layers):
                past[f"past_k_{i}"], past[f"past_v_{i}"] = out[1 + i], out[1 + layers + i]

    return call


def translator(
    version_dir: Path,
    sentences: list[str],
    cpu: Settings,
    cuda: Settings,
    cuda_device: str,
    repeats: int,
) -> dict[str, Any]:
    config = read_config(version_dir.parent)
    models = {
        "cpu": load_translator(version_dir, config, cpu),
        "cuda": load_translator(version_dir, config, cuda),  # as served: IO binding
        "cuda_run": load_translator(version_dir, config, cuda),
    }
    models["cuda_run"].model.io_binding = False  # `run`: the caches cross at every step
    models["cuda"].model.io_binding = True  # on by itself on CUDA; forced for --cpu-only
    result: dict[str, Any] = {
        "providers": {k: m.model.providers[0] for k, m in models.items()},
        "io_binding": {k: m.model.io_binding for k, m in models.items()},
        "sentences": len(sentences),
    }
    for beam in (1, 4):
        texts = {
            k: [r.text for r in m.translate(sentences, beam_size=beam)] for k, m in models.items()
        }
        result[f"same_text_beam{beam}"] = {
            k: sum(a == b for a, b in zip(texts["cpu"], t, strict=True))
            for k, t in texts.items()
            if k != "cpu"
        }
    result["examples"] = list(zip(sentences[:3], texts["cuda"][:3], strict=True))
    for beam in (1, 4):
        result[f"translate_all_beam{beam}_ms"] = _turns(
            {k: lambda m=m, b=beam: m.translate(sentences, beam_size=b) for k, m in models.items()},
            max(3, repeats // 100),
            warmup=1,
        )
    rng = np.random.default_rng(0)
    sessions = {k: m.model.decoder for k, m in models.items()}
    steps = {}
    for rows in ROWS:
        feeds, layers = _step_inputs(sessions["cuda"], rows, 16, 18, rng)
        calls = {
            "cpu_run": _decode_run(sessions["cpu"], feeds, layers, 16),
            "cuda_run": _decode_run(sessions["cuda"], feeds, layers, 16),
            "cuda_iobinding": _decode_iobinding(sessions["cuda"], feeds, layers, 16, cuda_device),
        }
        per_16 = _turns(calls, max(5, repeats // 20))
        steps[f"R{rows}"] = {k: round(v / 16, 4) for k, v in per_16.items()}  # ms per step
    result["decoder_step_ms"] = steps
    print(version_dir, json.dumps(result), flush=True)
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _serving(
    repository: Path, device_args: list[str], log_path: Path, result: dict[str, Any]
) -> Iterator[tuple[str, int]]:
    """`seqserve serve` on the repository until the block ends, then SIGTERM: yields the gRPC
    target and the metrics port; puts the command, exit code and logged providers in result."""
    port, metrics_port = _free_port(), _free_port()
    cmd = [
        sys.executable,
        "-m",
        "seqserve",
        "serve",
        "--model-repository",
        str(repository),
        "--http-port",
        "0",
        "--grpc-port",
        str(port),
        "--metrics-port",
        str(metrics_port),
        *device_args,
    ]
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    target = f"127.0.0.1:{port}"
    result["command"] = " ".join(cmd[1:])
    try:
        deadline = time.monotonic() + 180
        while check(target, timeout=0.5)[0] != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server not ready:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield target, metrics_port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            result["exit_code"] = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            result["exit_code"] = "killed"
        result["providers_logged"] = re.findall(
            r"(?:session\(s\) on|engine process \d+ on) ([\w, ]+)", log_path.read_text()
        )


def _infer(
    stub: pb_grpc.GRPCInferenceServiceStub, name: str, feeds: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    msg = pb.ModelInferRequest(model_name=name)
    if "text" in feeds:  # a translator: greedy, as the in-process references are
        msg.parameters["beam_size"].int64_param = 1
    for key, array in feeds.items():
        datatype = tensors.v2_datatype(array)
        msg.inputs.add(name=key, datatype=datatype, shape=array.shape)
        msg.raw_input_contents.append(tensors.to_raw(array, datatype))
    reply = stub.ModelInfer(msg, timeout=60)
    return {
        o.name: tensors.from_raw(raw, o.datatype, list(o.shape), o.name)
        for o, raw in zip(reply.outputs, reply.raw_output_contents, strict=True)
    }


def server(
    repository: Path, device_args: list[str], reference: dict[str, Any], log_path: Path
) -> dict[str, Any]:
    """One ModelInfer per model of the repository, compared with the CPU results; /metrics."""
    result: dict[str, Any] = {}
    with _serving(repository, device_args, log_path, result) as (target, metrics_port):
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for name, (feeds, outputs) in reference.items():
                got = _infer(stub, name, feeds)
                if "translation" in outputs:
                    result[name] = {
                        "same_text": int(
                            sum(
                                a == b
                                for a, b in zip(
                                    got["translation"].reshape(-1).tolist(),
                                    outputs["translation"],
                                    strict=True,
                                )
                            )
                        ),
                        "sentences": len(outputs["translation"]),
                    }
                else:
                    result[name] = {
                        "max_abs_diff": float(
                            max(np.abs(got[k] - v).max() for k, v in outputs.items())
                        )
                    }
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        result["metrics"] = [
            line
            for line in text.splitlines()
            if re.match(
                r"(seqserve_model_ready|nv_inference_request_success)"
                r"\{",
                line,
            )
        ]
    print("server", json.dumps(result), flush=True)
    return result


def served_load(
    version_dir: Path,
    sentences: list[str],
    device_args: list[str],
    log_path: Path,
    clients: int,
    seconds: float,
) -> dict[str, Any]:
    """A translator version served alone; `clients` closed-loop clients (one channel each)
    send greedy V2 requests for `seconds` after a warm-up; requests and words per second."""
    with tempfile.TemporaryDirectory(prefix="seqserve-gpu-") as tmp:
        repository = Path(tmp)
        (repository / "translator").mkdir()
        (repository / "translator" / "config.pbtxt").write_bytes(
            (version_dir.parent / "config.pbtxt").read_bytes()
        )
        (repository / "translator" / "1").symlink_to(version_dir.resolve())
        result: dict[str, Any] = {}
        with _serving(repository, device_args, log_path, result) as (target, _):

            def client(i: int, stop_at: float, out: list[tuple[float, int]]) -> None:
                with grpc.insecure_channel(target) as channel:
                    stub = pb_grpc.GRPCInferenceServiceStub(channel)
                    k = i
                    while time.perf_counter() < stop_at:
                        text = np.array([[sentences[k % len(sentences)].encode()]], object)
                        k += clients
                        start = time.perf_counter()
                        got = _infer(stub, "translator", {"text": text})
                        words = len(got["translation"].reshape(-1)[0].split())
                        out.append((time.perf_counter() - start, words))

            for length in (2.0, seconds):  # a warm-up, then the measured window
                outs: list[list[tuple[float, int]]] = [[] for _ in range(clients)]
                stop_at = time.perf_counter() + length
                threads = [
                    threading.Thread(target=client, args=(i, stop_at, outs[i]))
                    for i in range(clients)
                ]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
            done = [x for o in outs for x in o]
            result.update(
                clients=clients,
                seconds=seconds,
                requests_per_s=round(len(done) / seconds, 1),
                words_per_s=round(sum(w for _, w in done) / seconds, 1),
                median_latency_ms=_median_ms([t for t, _ in done]),
            )
    print("load", device_args, json.dumps(result), flush=True)
    return result


def _reference(repository: Path, sentences: list[str], cpu: Settings) -> dict[str, Any]:
    """Inputs and CPU outputs for one request per model of the repository."""
    out: dict[str, Any] = {}
    rng = np.random.default_rng(1)
    for model_dir in sorted(p for p in repository.iterdir() if (p / "config.pbtxt").is_file()):
        config = read_config(model_dir)
        version = max(
            (p for p in model_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
        )
        if config.platform == "onnxruntime_onnx":
            path = version / (config.default_model_filename or "model.onnx")
            feeds = _inputs(config, 4, rng)
            session = create_session(path, config, cpu)
            names = [o.name for o in session.get_outputs()]
            out[model_dir.name] = (feeds, dict(zip(names, session.run(names, feeds), strict=True)))
        elif config.parameters["task"].string_value == "translator":
            texts = [
                r.text
                for r in load_translator(version, config, cpu).translate(sentences[:8], beam_size=1)
            ]
            text = np.array([[s.encode()] for s in sentences[:8]], dtype=object)
            out[model_dir.name] = ({"text": text}, {"translation": [t.encode() for t in texts]})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument(
        "--translator",
        type=Path,
        action="append",
        default=[],
        help="a further translator version folder to measure in process",
    )
    parser.add_argument(
        "--sentences",
        type=Path,
        help="source sentences for --translator, "
        "one per line (default: the German number words given to the "
        "repository's translator)",
    )
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--clients", type=int, default=8, help="served load: clients")
    parser.add_argument("--seconds", type=float, default=8.0, help="served load: window")
    parser.add_argument("--cpu-only", action="store_true", help="dry run without a GPU")
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu.json"))
    args = parser.parse_args(argv)

    cpu = Settings(model_repository=args.model_repository)
    fallback = FallbackPolicy.WARN if args.cpu_only else FallbackPolicy.FAIL
    cuda = dataclasses.replace(cpu, device=Device.CUDA, device_fallback=fallback)
    cuda_device = "cpu" if args.cpu_only else "cuda"
    device_args = ["--device", "cuda", "--device-fallback", fallback.value]
    numbers = [
        "dreihundertzweiundvierzig",
        "siebentausendeinhundertelf",
        "neunzehn",
        "achtundneunzigtausendsechshundertvierundfünfzig",
    ] * 16  # default translator
    sentences = args.sentences.read_text().splitlines() if args.sentences else numbers
    report: dict[str, Any] = {
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
        "gpu": None
        if args.cpu_only
        else subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, check=False
        ).stdout.strip(),
        "command": " ".join(["python -m bench.gpu", *(argv or sys.argv[1:])]),
    }
    print(json.dumps(report), flush=True)
    report["onnx_models"] = onnx_models(args.model_repository, cpu, cuda, args.repeats)
    jobs = [
        (args.model_repository / "translator" / "1", numbers),
        *((d, sentences) for d in args.translator),
    ]
    report["translators"] = {
        str(d): translator(d, texts, cpu, cuda, cuda_device, args.repeats)
        for d, texts in jobs
        if d.is_dir()
    }
    report["served_load"] = {
        str(d): {
            device: served_load(
                d,
                sentences,
                ["--device", device, "--device-fallback", fallback.value],
                args.out.with_suffix(f".load-{device}.log"),
                args.clients,
                args.seconds,
            )
            for device in ("cpu", "cuda")
        }
        for d in args.translator
    }
    reference = _reference(args.model_repository, numbers, cpu)
    report["server"] = server(
        args.model_repository, device_args, reference, args.out.with_suffix(".server.log")
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print("wrote", args.out, flush=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
