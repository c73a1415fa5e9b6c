"""The native int8 decoder step (core/native): its int8 products on every kernel this machine
runs, the step against the PyTorch step it reimplements (pre- and post-norm, each activation,
padded caches and sources, row counts across the 16-row tiles), its errors, and the int8
export that ships it and the translator that loads it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from core.translation import native_step
from core.translation.graphs import GraphError, Layers
from export.decoder_step import DecoderStep
from export.native_step import native_settings, native_weights, write_native_weights
from training.models.transformer import make_model
from training.translator_config import TranslatorConfig

pytestmark = pytest.mark.skipif(native_step.kernel() is None, reason="core/native not built")
decoder = native_step._decoder


@pytest.fixture(params=native_step._decoder.kernels() if native_step._decoder else [])
def kernel(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each int8 kernel this machine can run, in turn; the automatic choice restored after."""
    assert decoder.use_kernel(request.param)
    yield request.param
    decoder.use_kernel("auto")


@pytest.mark.parametrize(
    ("m", "k", "n"),
    [(1, 16, 8), (3, 100, 50), (8, 256, 768), (17, 70, 33), (40, 1024, 96), (16, 64, 32)],
)
def test_int8_product_is_the_float_product_within_int8_error(
    kernel: str, m: int, k: int, n: int
) -> None:
    rng = np.random.default_rng(m * k + n)
    w = rng.standard_normal((k, n)).astype(np.float32) * 0.1
    b = rng.standard_normal(n).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    x[0] = np.abs(x[0])  # a row with no negative value (its zero point is 0)
    if m > 2:
        x[1] = 0.0  # an all-zero row
        x[2, 5 % k] = 40.0  # one outlier: the row's scale follows it
    got = decoder.Int8Matrix(w, b)(x)
    want = x @ w + b
    assert got.shape == (m, n)
    # each factor rounded to 1/255 and 1/254 of its range: a few per cent of |x| |w|
    bound = 0.02 * np.abs(x).max(1, keepdims=True) * np.abs(w).max(0) * np.sqrt(k) + 1e-6
    assert (np.abs(got - want) <= bound).all()
    if m > 2:
        np.testing.assert_array_equal(got[1], b)  # zeros quantise exactly


def test_every_kernel_gives_the_same_products() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((300, 200)).astype(np.float32)
    b = rng.standard_normal(200).astype(np.float32)
    x = rng.standard_normal((37, 300)).astype(np.float32)
    matrix = decoder.Int8Matrix(w, b)
    outputs = {}
    for name in decoder.kernels():
        assert decoder.use_kernel(name)
        outputs[name] = matrix(x)
    decoder.use_kernel("auto")
    assert "portable" in outputs
    for name, out in outputs.items():  # the int32 sums are exact; only the scaling may round
        np.testing.assert_allclose(out, outputs["portable"], rtol=1e-6, atol=1e-5, err_msg=name)
    assert not decoder.use_kernel("no such kernel")


def _model(norm: str, activation: str, layers: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    config = TranslatorConfig(
        vocab_size=300,
        d_model=64,
        num_heads=4,
        d_ff=96,
        num_encoder_layers=1,
        num_decoder_layers=layers,
        dropout=0.0,
        max_len=64,
        norm=norm,
        activation=activation,
    )
    model = make_model(config).eval()
    with torch.no_grad():  # a trained model's peaked outputs, not random logits that nearly tie
        model.generator.proj.weight.mul_(8.0)
    return model


def _inputs(
    rows: int, past: int, src: int, layers: int, rng: np.random.Generator
) -> tuple[np.ndarray, ...]:
    heads, head_dim = 4, 16
    own = rng.integers(0, past + 1, rows)  # each row's real cache slots, left-padded
    past_mask = np.arange(past)[None, :] >= (past - own)[:, None]  # [R, P]
    src_len = rng.integers(1, src + 1, rows)
    src_mask = np.arange(src)[None, :] < src_len[:, None]  # [R, S]
    kv = (layers, rows, heads, past, head_dim)
    cross = (layers, rows, heads, src, head_dim)
    return (
        rng.integers(0, 300, (rows, 1)),
        own[:, None].astype(np.int64),
        rng.standard_normal(kv).astype(np.float32),
        rng.standard_normal(kv).astype(np.float32),
        past_mask,
        rng.standard_normal(cross).astype(np.float32),
        rng.standard_normal(cross).astype(np.float32),
        src_mask,
    )


def _qmatmul(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The native step's int8 product in numpy (core/native/src/gemm.h): int8 weights, one
    symmetric scale per output column; uint8 inputs, one scale and zero point per row whose
    range holds 0; exact integer sums; the scales applied last."""
    amax = np.abs(w).max(0)
    sw = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
    qw = np.clip(np.rint(w / sw), -127, 127).astype(np.int64)
    lo, hi = np.minimum(x.min(1), 0), np.maximum(x.max(1), 0)
    sx = ((hi - lo) / np.float32(255)).astype(np.float32)
    sx = np.where(sx > 0, sx, np.float32(1)).astype(np.float32)
    inv = (np.float32(1) / sx).astype(np.float32)
    zx = np.rint(-lo * inv).astype(np.float32)
    qx = np.clip(np.rint(x * inv[:, None]) + zx[:, None], 0, 255).astype(np.int64)
    acc = qx @ qw - zx.astype(np.int64)[:, None] * qw.sum(0)[None, :]
    return (sx[:, None] * sw[None, :] * acc.astype(np.float32) + b).astype(np.float32)


def _layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(1, keepdims=True)
    return (x - mean) / np.sqrt(((x - mean) ** 2).mean(1, keepdims=True) + eps) * gamma + beta


def _attend(q: np.ndarray, k: np.ndarray, v: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """q [R, H, K] over k/v [R, H, T, K], valid [R, T] -> [R, H, K]."""
    scores = np.einsum("rhk,rhtk->rht", q, k) / np.sqrt(q.shape[-1])
    scores = np.where(valid[:, None, :], scores, -1e9)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    return np.einsum("rht,rhtk->rhk", p / p.sum(-1, keepdims=True), v)


ACTIVATIONS = {
    "relu": lambda x: np.maximum(x, 0),
    "gelu": lambda x: 0.5 * x * (1 + torch.erf(torch.from_numpy(x / np.sqrt(2))).numpy()),
    "swish": lambda x: x / (1 + np.exp(-x)),
}


def _reference_step(
    w: dict[str, np.ndarray], settings: dict[str, Any], *inputs: np.ndarray
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """What the native step computes, in numpy on the same names: its test oracle."""
    tokens, positions, past_k, past_v, past_mask, cross_k, cross_v, src_mask = inputs
    heads, act, eps = settings["num_heads"], ACTIVATIONS[settings["activation"]], settings["eps"]
    x = w["embed"][tokens[:, 0]] + w["positions"][positions[:, 0]]  # [R, D]
    rows, d = x.shape
    valid = np.concatenate([past_mask, np.ones((rows, 1), bool)], 1)  # [R, P+1]
    present_k, present_v = [], []
    for i in range(settings["num_layers"]):
        p = f"layers.{i}."

        def sub(x: np.ndarray, j: int, f: Any, p: str = p) -> np.ndarray:
            g, b = w[f"{p}norm{j}.weight"], w[f"{p}norm{j}.bias"]
            if settings["norm_first"]:
                return x + f(_layer_norm(x, g, b, eps))
            return _layer_norm(x + f(x), g, b, eps)

        def linear(x: np.ndarray, name: str, p: str = p) -> np.ndarray:
            return _qmatmul(x, w[f"{p}w_{name}"], w[f"{p}b_{name}"])

        def self_attention(h: np.ndarray, i: int = i) -> np.ndarray:
            qkv = linear(h, "qkv").reshape(rows, 3, heads, d // heads)
            k = np.concatenate([past_k[i], qkv[:, 1, :, None]], 2)
            v = np.concatenate([past_v[i], qkv[:, 2, :, None]], 2)
            present_k.append(k)
            present_v.append(v)
            return linear(_attend(qkv[:, 0], k, v, valid).reshape(rows, d), "self_out")

        def cross_attention(h: np.ndarray, i: int = i) -> np.ndarray:
            q = linear(h, "cross_q").reshape(rows, heads, d // heads)
            return linear(
                _attend(q, cross_k[i], cross_v[i], src_mask).reshape(rows, d), "cross_out"
            )

        x = sub(x, 0, self_attention)
        x = sub(x, 1, cross_attention)
        x = sub(x, 2, lambda h: linear(act(linear(h, "ff_1")), "ff_2"))
    if "norm.weight" in w:
        x = _layer_norm(x, w["norm.weight"], w["norm.bias"], eps)
    logits = _qmatmul(x, w["w_out"], w["b_out"])  # [R, V]
    top = logits.max(1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(1, keepdims=True)), present_k, present_v


NORMS_AND_ACTIVATIONS = [("pre", "relu"), ("post", "swish"), ("pre", "gelu"), ("post", "relu")]
ROWS_AND_PAST = [(1, 0), (3, 5), (17, 9)]  # 17 rows: past one 16-row tile


@pytest.mark.parametrize(("norm", "activation"), NORMS_AND_ACTIVATIONS)
@pytest.mark.parametrize(("rows", "past"), ROWS_AND_PAST)
def test_native_step_computes_its_reference(
    kernel: str, norm: str, activation: str, rows: int, past: int
) -> None:
    """On every kernel, the native step is the numpy reference of the same int8 arithmetic
    to float rounding: every row, head, mask, norm and activation where it belongs."""
    step = DecoderStep(_model(norm, activation)).eval()
    weights, settings = native_weights(step), native_settings(step)
    assert settings["norm_first"] == (norm == "pre") and settings["activation"] == activation
    inputs = _inputs(rows, past, 7, 2, np.random.default_rng(rows + past))
    tokens, positions, pk, pv, past_mask, ck, cv, src_mask = inputs
    log_probs, present_k, present_v = decoder.Step(weights, **settings).step(
        tokens, positions, past_mask, src_mask, list(pk), list(pv), list(ck), list(cv)
    )
    want, want_k, want_v = _reference_step(weights, settings, *inputs)
    assert log_probs.shape == (rows, 300)
    np.testing.assert_allclose(log_probs, want, atol=2e-3)
    for i in range(2):
        assert present_k[i].shape == present_v[i].shape == (rows, 4, past + 1, 16)
        np.testing.assert_array_equal(present_k[i][:, :, :past], pk[i])  # the past as it was
        np.testing.assert_array_equal(present_v[i][:, :, :past], pv[i])
        np.testing.assert_allclose(present_k[i], want_k[i], atol=1e-4)
        np.testing.assert_allclose(present_v[i], want_v[i], atol=1e-4)


@pytest.mark.parametrize(("norm", "activation"), NORMS_AND_ACTIVATIONS)
def test_native_step_is_the_pytorch_step_within_int8_error(norm: str, activation: str) -> None:
    """Against the float step it reimplements (export's DecoderStep), the int8 error only:
    the same best token where it leads by half a nat, the likely tokens within a nat
    (onnxruntime's int8 step is further off on each of these cases; post-norm models carry
    more of the error than pre-norm)."""
    model = _model(norm, activation)
    step = DecoderStep(model).eval()
    native = decoder.Step(native_weights(step), **native_settings(step))
    for rows, past in ROWS_AND_PAST:
        inputs = _inputs(rows, past, 7, 2, np.random.default_rng(rows + past))
        tokens, positions, pk, pv, past_mask, ck, cv, src_mask = inputs
        with torch.no_grad():
            want = step(
                *(torch.from_numpy(a) for a in (tokens, positions, past_mask, src_mask)),
                *(torch.from_numpy(layer) for cache in (pk, pv, ck, cv) for layer in cache),
            )[0].numpy()
        log_probs = native.step(
            tokens, positions, past_mask, src_mask, list(pk), list(pv), list(ck), list(cv)
        )[0]
        np.testing.assert_allclose(np.exp(log_probs).sum(1), 1.0, rtol=1e-4)
        top2 = np.sort(want, 1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 0.5  # rows whose best token leads by half a nat
        assert (log_probs.argmax(1) == want.argmax(1))[clear].all()
        likely = want >= want.max(1, keepdims=True) - 5
        assert np.abs(log_probs - want)[likely].max() < 1.0


def test_native_step_refuses_bad_inputs_with_the_field_named() -> None:
    step = DecoderStep(_model("pre", "relu")).eval()
    native = decoder.Step(native_weights(step), **native_settings(step))
    tokens, positions, pk, pv, past_mask, ck, cv, src_mask = _inputs(
        2, 3, 4, 2, np.random.default_rng(0)
    )
    args = [tokens, positions, past_mask, src_mask, list(pk), list(pv), list(ck), list(cv)]
    for index, bad, field in [
        (0, np.array([[300], [0]]), "tokens"),
        (0, np.array([[-1], [0]]), "tokens"),
        (1, np.array([[64], [0]]), "positions"),
        (4, list(pk)[:1], "one cache array per layer"),
        (5, [layer[:, :, :2] for layer in pv], "past_v"),
        (6, [layer[:1] for layer in ck], "cross_k"),
    ]:
        with pytest.raises(ValueError, match=field):
            native.step(*(bad if i == index else a for i, a in enumerate(args)))
    weights = native_weights(step)
    del weights["layers.1.w_ff_2"]
    with pytest.raises(ValueError, match=r"layers\.1\.w_ff_2"):
        decoder.Step(weights, **native_settings(step))


def test_a_broken_weights_file_is_a_graph_error(tmp_path: Path) -> None:
    with pytest.raises(GraphError, match="not found"):
        native_step.load_step(tmp_path / native_step.FILE)
    step = DecoderStep(_model("pre", "relu")).eval()
    path = write_native_weights(step, tmp_path)
    with np.load(path) as npz:
        arrays = {name: npz[name] for name in npz.files if name != "w_out"}
    np.savez(path, **arrays)
    with pytest.raises(GraphError, match="w_out"):
        native_step.load_step(path)


def test_native_step_model_keeps_the_step_contract(tmp_path: Path) -> None:
    """Through `NativeStepModel`: stacked caches in, per-layer `Layers` out, which the next step
    takes as they are."""
    model = _model("pre", "relu")
    weights = write_native_weights(DecoderStep(model).eval(), tmp_path)

    class Encoder:  # the encoder side is not the native step's: any StepModel's
        num_layers, num_heads, head_dim = 2, 4, 16

    steps = native_step.NativeStepModel(Encoder(), weights)  # type: ignore[arg-type]
    tokens, positions, pk, pv, past_mask, ck, cv, src_mask = _inputs(
        3, 4, 5, 2, np.random.default_rng(1)
    )
    _, k, v = steps.step(tokens, positions, pk, pv, past_mask, ck, cv, src_mask)
    assert isinstance(k, Layers) and k.shape == (2, 3, 4, 5, 16)
    grown = np.concatenate([past_mask, np.ones((3, 1), bool)], axis=1)
    lp2, k2, _ = steps.step(tokens, positions + 1, k, v, grown, ck, cv, src_mask)
    assert k2.shape == (2, 3, 4, 6, 16) and np.isfinite(lp2).all()
    Encoder.num_heads = 2
    with pytest.raises(GraphError, match="heads"):
        native_step.NativeStepModel(Encoder(), weights)  # type: ignore[arg-type]


def test_decoder_step_setting_chooses_the_step() -> None:
    assert native_step.chosen("native", on_cpu=True)
    assert native_step.chosen("native", on_cpu=False)
    assert not native_step.chosen("onnx", on_cpu=True)
    assert native_step.chosen("auto", on_cpu=True) == native_step.fast_here()
    assert not native_step.chosen("auto", on_cpu=False)  # on a GPU the graphs keep the caches


@pytest.mark.slow
def test_int8_export_ships_the_native_step_measured(
    tiny_checkpoint: Path, tmp_path: Path, sample_sources: list[str], translator: Any
) -> None:
    """`seqserve export --quantize int8` writes decoder_step.npz, records its BLEU change like
    the graphs', and lets serving choose it; the translator loaded with it decodes with it, as
    faithfully to fp32 (`translator`: the same checkpoint's fp32 export) as the int8 graphs."""
    import onnxruntime as ort

    from core.translation import DecodeRequest
    from core.translation.spec import read_config
    from export.translator import TranslatorExportOptions, export_translator
    from serving.models.onnx_step_model import OnnxStepModel, load_translator

    options = TranslatorExportOptions(quantize="int8")
    out = export_translator(tiny_checkpoint, tmp_path, "t8", options)
    assert (out / native_step.FILE).is_file()
    config = read_config(tmp_path / "t8")
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["decoder_step"] == "auto"
    q = json.loads(params["quantization"])["native_step"]
    assert q["checked_with_kernel"] == native_step.kernel()
    assert abs(q["bleu_change"]) < 5  # the tiny model: a loose bound; Multi30k's is measured
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    loaded = {"fp32": translator}
    for setting in ("native", "onnx"):
        config.parameters["decoder_step"].string_value = setting
        loaded[setting] = load_translator(out, config, opts, ["CPUExecutionProvider"])
    assert isinstance(loaded["native"].model, native_step.NativeStepModel)
    assert isinstance(loaded["onnx"].model, OnnxStepModel)
    tok = translator.tokenizer
    texts = {}
    for name, model in loaded.items():
        requests = [
            DecodeRequest(i, tok.encode_source(s), 1, 40) for i, s in enumerate(sample_sources)
        ]
        texts[name] = [r.text for r in model.run(requests)]

    def agree(name: str) -> int:
        return sum(a == b for a, b in zip(texts[name], texts["fp32"], strict=True))

    # the tiny model is weak, so near ties flip under either int8; a broken step would agree
    # on next to nothing
    assert agree("native") >= agree("onnx") - 3, texts
