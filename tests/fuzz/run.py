"""Fuzz one Python target with atheris (coverage-guided, libFuzzer underneath).

    python -m tests.fuzz.run TARGET [libFuzzer flags] [corpus folders]
    python -m tests.fuzz.run --seed        # write the seed inputs into tests/fuzz/corpus/

`make fuzz` runs every target this way (and the native one), for FUZZ_SECONDS each, then
merges what added coverage into the committed corpus. The serving modules are instrumented;
libFuzzer's RSS limit (`-rss_limit_mb`) catches an input that makes the code over-allocate,
`-timeout` one that hangs it.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "corpus"


def seeds() -> dict[str, list[bytes]]:
    """Valid inputs of every kind each target takes: where the fuzzer starts."""
    import json

    import numpy as np
    from google.protobuf import json_format, text_format
    from google.protobuf.timestamp_pb2 import Timestamp

    from protos.inference import grpc_service_pb2 as pb
    from protos.inference import model_config_pb2 as mc
    from protos.seqserve.forecast.v1 import forecast_service_pb2 as fpb
    from protos.seqserve.translate.v1 import translate_service_pb2 as tpb
    from tests.fuzz.targets import DATATYPES
    from tests.serving import model_factory as mf
    from tests.serving.v2 import request

    DATATYPE_FP64 = DATATYPES.index("FP64")  # noqa: N806 - a byte the target reads

    v2 = [
        request("affine", x=np.ones((2, 4), np.float32)),
        request("plain", x=np.ones(4, np.float32)),
        request("echo", text=np.array([[b"hallo"], [b"welt"]], dtype=object)),
        request("fragile", x=np.ones((1, 7), np.float32)),
    ]
    typed = pb.ModelInferRequest(model_name="affine")
    typed.inputs.add(name="x", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend(
        [1, 2, 3, 4]
    )
    timed = request("affine", x=np.ones((1, 4), np.float32))
    timed.parameters["timeout"].int64_param = 1000
    window = fpb.Window(
        past=[fpb.Series(name=n, values=[1.0] * 6) for n in ("price", "index", "mentions")],
        future=[fpb.Series(name="promo", values=[0.0, 1.0])],
    )
    window.timestamps.extend(Timestamp(seconds=1_700_000_000 + 3600 * i) for i in range(6))
    started = fpb.Window(
        past=window.past, future=window.future, start=Timestamp(seconds=1_700_000_000)
    )
    started.frequency.seconds = 3600
    config = mf.AFFINE_CONFIG.format(
        scheduling="dynamic_batching { max_queue_delay_microseconds: 100 }", extra=""
    )
    parsed = text_format.Parse(config, mc.ModelConfig())

    def claim(name: str, datatype: str, shape: list[int], raw: bytes = b"") -> pb.ModelInferRequest:
        msg = pb.ModelInferRequest(model_name="m")
        msg.inputs.add(name=name, datatype=datatype, shape=shape)
        msg.raw_input_contents.append(raw)
        return msg

    # The shapes of tests/serving/test_hostile_input.py: sizes that overflow or claim more than
    # was sent. Accepted by an unchecked multiplication, they wrapped to the bytes received.
    hostile = [
        claim("x", "FP32", [4, 2**60]),
        claim("x", "FP32", [1, 2**62]),
        claim("x", "FP32", [2**62, 4]),
        claim("text", "BYTES", [1, 50_000_000]),
        claim("text", "BYTES", [2**40]),
        claim("a", "INT64", [1, 2**32, 2**32]),
    ]
    native = [
        *hostile,
        request("affine", x=np.ones((3, 4), np.float32)),
        request("fragile", x=np.ones((2, 5), np.float32)),
        request("plain", x=np.ones(4, np.float32)),
        request("fc", past=np.zeros((2, 6, 3), np.float32), future=np.zeros((2, 2, 3), np.float32)),
        request(
            "mixed",
            a=np.zeros((1, 2, 3), np.int64),
            b=np.zeros((1, 2)),
            c=np.zeros((1, 4), bool),
            d=np.zeros((1, 3), np.uint8),
        ),
        timed,
    ]
    raw = np.arange(8, dtype=np.float32).tobytes()
    binary = json.dumps(
        {
            "id": "r1",
            "inputs": [
                {"name": "x", "shape": [2, 4], "datatype": "FP32"}
                | {"parameters": {"binary_data_size": len(raw)}}
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    ).encode()
    rest = [
        b"\0" + json.dumps(body).encode()
        for body in (
            {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [[1] * 4] * 2}]},
            {"inputs": [{"name": "x", "shape": [4], "datatype": "FP32", "data": [0.5] * 4}]},
            {
                "inputs": [
                    {"name": "text", "shape": [2, 1], "datatype": "BYTES"} | {"data": ["grüß", "x"]}
                ],
                "parameters": {"binary_data_output": True, "timeout": 1000},
            },
            {"inputs": [{"name": "x", "shape": [1, 2**40], "datatype": "FP32", "data": []}]},
        )
    ] + [b"\1" + len(binary).to_bytes(2, "little") + binary + raw]
    return {
        "rest_request": rest,
        "native_accept": [m.SerializeToString() for m in native],
        "v2_request": [m.SerializeToString() for m in (*v2, typed, timed, *hostile)],
        "bytes_tensor": [
            bytes([0, 2]) + (2).to_bytes(8, "little") + (4).to_bytes(8, "little") + b"\0" * 32,
            # The campaign's first finding: no element, yet a shape numpy refuses
            # ("array is too big"), which reached a client as INTERNAL.
            bytes([DATATYPE_FP64, 4])
            + b"".join(d.to_bytes(8, "little") for d in (1330597711, 1157627904, 0, 0)),
            bytes([1, 1]) + (2).to_bytes(8, "little") + b"\x01\0\0\0a\x02\0\0\0bc",
        ],
        "forecast_request": [
            fpb.ForecastRequest(
                model_name="fc", windows=[w], quantile_levels=[0.1, 0.9]
            ).SerializeToString()
            for w in (window, started)
        ],
        "translate_request": [
            tpb.TranslateRequest(
                model_name="t", sentences=s, beam_size=b, num_hypotheses=n
            ).SerializeToString()
            for s, b, n in ((["eins zwei"], 4, 2), (["", "hundert"], 1, 1))
        ],
        "model_config": [
            config.encode(),
            mf.ECHO_CONFIG.encode(),
            json_format.MessageToJson(parsed).encode(),
        ],
    }


def write_seeds() -> None:
    """Seeds are kept whatever a merge minimises away: the hostile ones are regressions."""
    for name, inputs in seeds().items():
        folder = CORPUS / name
        folder.mkdir(parents=True, exist_ok=True)
        for data in inputs:
            (folder / hashlib.sha1(data).hexdigest()).write_bytes(data)


def main(argv: list[str]) -> None:
    if argv[1:] == ["--seed"]:
        write_seeds()
        return
    import atheris

    with atheris.instrument_imports(include=["serving", "tests.fuzz"]):
        from tests.fuzz.targets import TARGETS
    # libFuzzer runs argv[0] again for -merge (and -fork), with its own flags after it: give
    # it this command, and the target through the environment.
    if argv[1:] and argv[1] in TARGETS:
        os.environ["SEQSERVE_FUZZ_TARGET"], flags = argv[1], argv[2:]
    else:
        flags = argv[1:]
    target = TARGETS[os.environ["SEQSERVE_FUZZ_TARGET"]]
    atheris.Setup([f"{sys.executable} -m tests.fuzz.run", *flags], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
