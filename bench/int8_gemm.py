"""onnxruntime's int8 GEMM against Intel MKL's (what CTranslate2 calls on Intel CPUs), on the
Multi30k translator's matrix shapes, one thread each (issue 30, item 4):

    python3.11 -m venv /tmp/mkl && /tmp/mkl/bin/pip install mkl==2026.2.0  # not a dependency
    python -m bench.int8_gemm --mkl /tmp/mkl/lib/libmkl_rt.so.3 [--repeats 500] [--out FILE]

For each [M, K] x [K, N] (M rows: 8 and 32 decoder rows, 160 encoder rows; K x N: the
projections of a 256-wide model with a 1,024-wide FFN and an 8,000-token vocabulary) it times
u8 x s8 -> s32 products, the weights prepared once as each library does for a model:
- onnxruntime `MatMulInteger` with the weight an initializer (MLAS pre-packs it), one session
  per shape; its `run` overhead is timed apart on an Identity graph and included;
- MKL `cblas_gemm_s8u8s32_compute` on a weight packed by `cblas_gemm_s8u8s32_pack`, and the
  unpacked `cblas_gemm_s8u8s32`, called through ctypes.
Every product is checked against numpy's. Medians of `--repeats` calls; the ratio is
onnxruntime's time over MKL's packed time (below 1: onnxruntime faster).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

SHAPES = [
    (m, k, n)
    for m in (8, 32, 160)
    for k, n in ((256, 768), (256, 1024), (1024, 256), (256, 8000))
    if not (m == 160 and n == 8000)  # the encoder has no output projection
]
ROW_MAJOR, NO_TRANS, FIX_OFFSET, B_MATRIX, PACKED = 101, 111, 171, 162, 151  # cblas enums


def _median_us(call: Callable[[], object], repeats: int) -> float:
    for _ in range(20):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def _session(nodes: list, inputs: list, outputs: list, inits: list) -> ort.InferenceSession:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


class Mkl:
    """The three cblas int8 calls this bench needs, through ctypes, on one thread."""

    def __init__(self, path: Path) -> None:
        os.environ.setdefault("MKL_THREADING_LAYER", "SEQUENTIAL")  # read when MKL loads
        lib = ctypes.CDLL(str(path))
        lib.MKL_Set_Num_Threads(1)
        i, f, p = ctypes.c_int, ctypes.c_float, ctypes.c_void_p
        gemm = [i, i, i, i, i, i, i, f, p, i, ctypes.c_int8, p, i, ctypes.c_int8, f, p, i, p]
        lib.cblas_gemm_s8u8s32.argtypes = gemm
        lib.cblas_gemm_s8u8s32_compute.argtypes = gemm
        lib.cblas_gemm_s8u8s32_pack_get_size.argtypes = [i, i, i, i]
        lib.cblas_gemm_s8u8s32_pack_get_size.restype = ctypes.c_size_t
        lib.cblas_gemm_s8u8s32_pack.argtypes = [i, i, i, i, i, i, p, i, p]
        self.lib = lib

    def calls(
        self, a: np.ndarray, b: np.ndarray, c: np.ndarray
    ) -> tuple[Callable[[], None], Callable[[], None]]:
        """(packed, unpacked) products a [M, K] u8 x b [K, N] s8 -> c [M, N] s32."""
        (m, k), n = a.shape, b.shape[1]
        size = self.lib.cblas_gemm_s8u8s32_pack_get_size(B_MATRIX, m, n, k)
        packed = np.zeros(size, np.uint8)
        self.lib.cblas_gemm_s8u8s32_pack(
            ROW_MAJOR, B_MATRIX, NO_TRANS, m, n, k, b.ctypes.data, n, packed.ctypes.data
        )
        offset = np.zeros(n, np.int32)

        def run(fn: Callable[..., None], weights: np.ndarray, layout: int) -> Callable[[], None]:
            return lambda: fn(
                ROW_MAJOR, NO_TRANS, layout, FIX_OFFSET, m, n, k, 1.0, a.ctypes.data, k, 0,
                weights.ctypes.data, n, 0, 0.0, c.ctypes.data, n, offset.ctypes.data,
            )  # fmt: skip

        return (
            run(self.lib.cblas_gemm_s8u8s32_compute, packed, PACKED),
            run(self.lib.cblas_gemm_s8u8s32, b, NO_TRANS),
        )


def measure(mkl: Mkl, repeats: int) -> dict[str, object]:
    rng = np.random.default_rng(0)
    info = helper.make_tensor_value_info
    identity = _session(
        [helper.make_node("Identity", ["a"], ["y"])],
        [info("a", TensorProto.UINT8, ["M", "K"])],
        [info("y", TensorProto.UINT8, None)],
        [],
    )
    small = {"a": np.zeros((8, 256), np.uint8)}
    out: dict[str, object] = {
        "ort_run_overhead_us": _median_us(lambda: identity.run(None, small), repeats)
    }
    for m, k, n in SHAPES:
        a = rng.integers(0, 256, (m, k)).astype(np.uint8)
        b = rng.integers(-127, 128, (k, n)).astype(np.int8)
        want = a.astype(np.int64) @ b.astype(np.int64)
        session = _session(
            [helper.make_node("MatMulInteger", ["a", "b"], ["y"])],
            [info("a", TensorProto.UINT8, ["M", k])],
            [info("y", TensorProto.INT32, None)],
            [numpy_helper.from_array(b, "b")],
        )
        c = np.zeros((m, n), np.int32)
        packed, unpacked = mkl.calls(a, b, c)
        for call in (packed, unpacked):
            c[:] = 0
            call()
            if not np.array_equal(c, want):
                raise SystemExit(f"MKL's product differs from numpy's at {(m, k, n)}")
        if not np.array_equal(session.run(None, {"a": a})[0], want):
            raise SystemExit(f"onnxruntime's product differs from numpy's at {(m, k, n)}")
        row = {
            "ort_us": _median_us(lambda s=session, a=a: s.run(None, {"a": a}), repeats),
            "mkl_packed_us": _median_us(packed, repeats),
            "mkl_unpacked_us": _median_us(unpacked, repeats),
        }
        row["ort_over_mkl_packed"] = row["ort_us"] / row["mkl_packed_us"]
        out[f"{m}x{k}x{n}"] = row
        print(
            f"| {m} x {k} x {n} | {row['ort_us']:.1f} | {row['mkl_packed_us']:.1f} | "
            f"{row['mkl_unpacked_us']:.1f} | {row['ort_over_mkl_packed']:.2f} |",
            flush=True,
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mkl", type=Path, required=True, help="path to libmkl_rt.so")
    parser.add_argument("--repeats", type=int, default=500)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    print("| M x K x N | onnxruntime µs | MKL packed µs | MKL unpacked µs | ort / MKL packed |")
    print("|---|---|---|---|---|")
    result = {"settings": {k: str(v) for k, v in vars(args).items()}}
    result["load_avg_start"] = list(os.getloadavg())
    result["shapes"] = measure(Mkl(args.mkl), args.repeats)
    result["load_avg_end"] = list(os.getloadavg())
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
