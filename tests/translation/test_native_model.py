"""The native int8 translator (core/native): its decoder step and encoder, on every int8
kernel this machine runs, against numpy references of the same int8 arithmetic
(native_reference.py) and against the PyTorch modules they reimplement (pre- and post-norm,
each activation, padded caches and sources, row counts across the 16-row tiles); its errors;
the decoding loop's caches read where they lie; and the int8 export that ships it and the
translator that loads it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from core.translation import native_model
from core.translation.graphs import GraphError, Layers
from export.decoder_step import DecoderStep
from export.native_weights import native_settings, native_weights, write_native_weights
from export.translator_graphs import EncoderGraph
from tests.translation import native_reference
from training.models.transformer import make_model
from training.translator_config import TranslatorConfig

pytestmark = pytest.mark.skipif(native_model.kernel() is None, reason="core/native not built")
decoder = native_model._decoder


def _model(
    norm: str, activation: str, layers: int = 2, d_model: int = 64, heads: int = 4
) -> torch.nn.Module:
    torch.manual_seed(0)
    config = TranslatorConfig(
        vocab_size=300,
        d_model=d_model,
        num_heads=heads,
        d_ff=96,
        num_encoder_layers=2,
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
    rows: int,
    past: int,
    src: int,
    layers: int,
    rng: np.random.Generator,
    heads: int = 4,
    head_dim: int = 16,
) -> tuple[np.ndarray, ...]:
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


def _native(model: torch.nn.Module) -> tuple[Any, Any, dict[str, np.ndarray], dict[str, Any]]:
    """The native encoder and decoder step of `model`, its weights and settings."""
    weights, settings = native_weights(model), native_settings(model)
    step_settings = {k: v for k, v in settings.items() if k != "encoder_layers"}
    encoder = decoder.Encoder(
        weights,
        num_layers=settings["encoder_layers"],
        decoder_layers=settings["num_layers"],
        **{k: v for k, v in step_settings.items() if k != "num_layers"},
    )
    return encoder, decoder.Step(weights, **step_settings), weights, settings


def _sources(batch: int, src: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    lengths = rng.integers(1, src + 1, batch)
    lengths[0] = src
    src_mask = np.arange(src)[None, :] < lengths[:, None]  # [B, S], right-padded
    return np.where(src_mask, rng.integers(4, 300, (batch, src)), 0), src_mask


NORMS_AND_ACTIVATIONS = [("pre", "relu"), ("post", "swish"), ("pre", "gelu"), ("post", "relu")]
ROWS_AND_PAST = [(1, 0), (3, 5), (17, 9)]  # 17 rows: past one 16-row tile


@pytest.mark.parametrize(("norm", "activation"), NORMS_AND_ACTIVATIONS)
@pytest.mark.parametrize(("rows", "past"), ROWS_AND_PAST)
def test_native_step_computes_its_reference(
    kernel: str, norm: str, activation: str, rows: int, past: int
) -> None:
    """On every kernel, the native step is the numpy reference of the same int8 arithmetic
    to float rounding: every row, head, mask, norm and activation where it belongs."""
    _, step, weights, settings = _native(_model(norm, activation))
    assert settings["norm_first"] == (norm == "pre") and settings["activation"] == activation
    inputs = _inputs(rows, past, 7, 2, np.random.default_rng(rows + past))
    tokens, positions, pk, pv, past_mask, ck, cv, src_mask = inputs
    log_probs, present_k, present_v = step.step(
        tokens, positions, past_mask, src_mask, [list(pk)], [list(pv)], [list(ck)], [list(cv)]
    )
    want, want_k, want_v = native_reference.reference_step(weights, settings, *inputs)
    assert log_probs.shape == (rows, 300)
    np.testing.assert_allclose(log_probs, want, atol=2e-3)
    for i in range(2):
        assert present_k[i].shape == present_v[i].shape == (rows, 4, past + 1, 16)
        np.testing.assert_array_equal(present_k[i][:, :, :past], pk[i])  # the past as it was
        np.testing.assert_array_equal(present_v[i][:, :, :past], pv[i])
        np.testing.assert_allclose(present_k[i], want_k[i], atol=1e-4)
        np.testing.assert_allclose(present_v[i], want_v[i], atol=1e-4)


@pytest.mark.parametrize(("d_model", "heads"), [(72, 3), (240, 2)])  # head widths 24 and 120
def test_native_step_computes_its_reference_at_other_head_widths(
    kernel: str, d_model: int, heads: int
) -> None:
    """The attention's vector paths cover head widths of 8 N (one block of registers, or two
    past 64); the others the portable loop."""
    _, step, weights, settings = _native(_model("pre", "relu", d_model=d_model, heads=heads))
    inputs = _inputs(5, 6, 7, 2, np.random.default_rng(d_model), heads, d_model // heads)
    tokens, positions, pk, pv, past_mask, ck, cv, src_mask = inputs
    log_probs = step.step(
        tokens, positions, past_mask, src_mask, [list(pk)], [list(pv)], [list(ck)], [list(cv)]
    )[0]
    want = native_reference.reference_step(weights, settings, *inputs)[0]
    np.testing.assert_allclose(log_probs, want, atol=2e-3)


@pytest.mark.parametrize(("norm", "activation"), NORMS_AND_ACTIVATIONS)
@pytest.mark.parametrize(("batch", "src"), [(1, 1), (3, 9), (5, 20)])  # 5 x 20: past 16 rows
def test_native_encoder_computes_its_reference(
    kernel: str, norm: str, activation: str, batch: int, src: int
) -> None:
    """On every kernel, the native encoder is the numpy reference of the same int8
    arithmetic at every real token: padded sources masked, every decoder layer's keys and
    values in place. Padded positions, which it does not compute, are zeros (no decoder row
    reads them; the reference computes them from padding)."""
    encoder, _, weights, settings = _native(_model(norm, activation))
    src_ids, src_mask = _sources(batch, src, np.random.default_rng(batch + src))
    cross_k, cross_v = encoder.encode(src_ids, src_mask)
    want_k, want_v = native_reference.reference_encoder(weights, settings, src_ids, src_mask)
    assert cross_k.shape == cross_v.shape == (2, batch, 4, src, 16)
    real = src_mask[None, :, None, :, None]  # [1, B, 1, S, 1]
    for got, want in ((cross_k, want_k), (cross_v, want_v)):
        assert (np.where(real, 0.0, got) == 0).all()
        got, want = np.where(real, got, 0.0), np.where(real, want, 0.0)
        # float rounding, except where a requantised input lands on the other side of a
        # rounding boundary (a step of 1/255 of its row's range, passed on by later layers)
        error = np.abs(got - want)
        assert (error > 2e-3).mean() < 0.05 and error.max() < 0.05


@pytest.mark.parametrize(("norm", "activation"), NORMS_AND_ACTIVATIONS)
def test_native_translator_is_the_pytorch_model_within_int8_error(
    norm: str, activation: str
) -> None:
    """Against the float modules it reimplements (export's EncoderGraph and DecoderStep), the
    int8 error only: the source keys and values within a few per cent of their size; the same
    best token where it leads by half a nat, the likely tokens within a nat (onnxruntime's
    int8 step is further off on each of these cases; post-norm models carry more of the error
    than pre-norm)."""
    model = _model(norm, activation)
    encoder, native, _, _ = _native(model)
    src_ids, src_mask = _sources(4, 11, np.random.default_rng(0))
    with torch.no_grad():
        _, want_k, want_v = EncoderGraph(model)(
            torch.from_numpy(src_ids), torch.from_numpy(src_mask)
        )
    real = src_mask[None, :, None, :, None]  # [1, B, 1, S, 1]: padding is not compared
    for got, want in zip(encoder.encode(src_ids, src_mask), (want_k, want_v), strict=True):
        error = np.abs(got - want.numpy())[np.broadcast_to(real, got.shape)]
        size = np.abs(want.numpy())[np.broadcast_to(real, got.shape)]
        # measured: mean 1% (pre-norm) and 3% (post-norm) of the mean size, largest 1% and
        # 14% of the largest; a wrong head, position or mask would be off by the whole size
        assert error.mean() < 0.05 * size.mean() and error.max() < 0.25 * size.max()
    step = DecoderStep(model).eval()
    for rows, past in ROWS_AND_PAST:
        inputs = _inputs(rows, past, 7, 2, np.random.default_rng(rows + past))
        tokens, positions, pk, pv, past_mask, ck, cv, src_mask = inputs
        with torch.no_grad():
            want = step(
                *(torch.from_numpy(a) for a in (tokens, positions, past_mask, src_mask)),
                *(torch.from_numpy(layer) for cache in (pk, pv, ck, cv) for layer in cache),
            )[0].numpy()
        log_probs = native.step(
            tokens, positions, past_mask, src_mask, [list(pk)], [list(pv)], [list(ck)], [list(cv)]
        )[0]
        np.testing.assert_allclose(np.exp(log_probs).sum(1), 1.0, rtol=1e-4)
        top2 = np.sort(want, 1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 0.5  # rows whose best token leads by half a nat
        assert (log_probs.argmax(1) == want.argmax(1))[clear].all()
        likely = want >= want.max(1, keepdims=True) - 5
        assert np.abs(log_probs - want)[likely].max() < 1.0


def test_native_translator_refuses_bad_inputs_with_the_field_named() -> None:
    encoder, native, weights, settings = _native(_model("pre", "relu"))
    tokens, positions, pk, pv, past_mask, ck, cv, src_mask = _inputs(
        2, 3, 4, 2, np.random.default_rng(0)
    )
    args = [tokens, positions, past_mask, src_mask, [list(pk)], [list(pv)], [list(ck)], [list(cv)]]
    for index, bad, field in [
        (0, np.array([[300], [0]]), "tokens"),
        (0, np.array([[-1], [0]]), "tokens"),
        (1, np.array([[64], [0]]), "positions"),
        (4, [list(pk)[:1]], "one cache array per layer"),
        (5, [[layer[:, :, :2] for layer in pv]], "past_v"),
        (6, [[layer[:1] for layer in ck]], "cross_k"),
        (6, [list(ck), list(ck)], "cross_k, cross_v: as many parts"),
    ]:
        with pytest.raises(ValueError, match=field):
            native.step(*(bad if i == index else a for i, a in enumerate(args)))
    # where the caches lie: rows of parts, slots of rows
    src_mask[:] = True
    for layout, field in [
        ({"past_rows": np.zeros(2, np.int64)}, "past rows: .part, row. for each row"),
        ({"cross_rows": np.array([[1, 0], [0, 1]])}, r"cross rows: \(1, 0\) is not a row"),
        ({"cross_rows": np.array([[0, 0], [0, 2]])}, r"cross rows: \(0, 2\) is not a row"),
        ({"past_slots": [(0, 3, 1)]}, "past_k: slots 1..4 of its 3"),
        ({"past_slots": [(1, 3, 0)]}, "past_k: slots 0..3 of its 3 as slots 1.. of 3"),
        ({"past_slots": [(2**31 - 1, 1, 0)]}, "past_k: slots 0..1 of its 3 as slots 2147483647"),
        ({"cross_slots": [(0, 2**31 - 1, 2**31 - 1)]}, "cross_k: slots 2147483647..4294967294"),
        ({"past_slots": [(0, 3, 0), (0, 3, 0)]}, "past slots: one .first, count, start. per part"),
        ({"cross_slots": [(0, 2, 0)]}, "src_mask: row 0 is real at 2, outside its source"),
    ]:
        with pytest.raises(ValueError, match=field):
            native.step(*args, **layout)
    src_ids, src_mask = _sources(2, 5, np.random.default_rng(0))
    for ids, mask, field in [
        (np.full((2, 5), 300), src_mask, "src_ids"),
        (np.full((1, 65), 4), np.ones((1, 65), bool), "src_ids: 65 tokens"),
        (src_ids, src_mask[:, :3], "src_mask"),
    ]:
        with pytest.raises(ValueError, match=field):
            encoder.encode(ids, mask)
    # nothing to compute is not an error: no rows, no real tokens
    empty = np.zeros((2, 0, 4, 3, 16), np.float32)
    out = native.step(
        np.zeros((0, 1), np.int64),
        np.zeros((0, 1), np.int64),
        np.zeros((0, 3), bool),
        np.zeros((0, 4), bool),
        [list(empty)],
        [list(empty)],
        [list(empty[:, :, :, :1].repeat(4, 3))],
        [list(empty[:, :, :, :1].repeat(4, 3))],
    )
    assert out[0].shape == (0, 300)
    k, v = encoder.encode(np.full((2, 5), 4), np.zeros((2, 5), bool))
    assert k.shape == (2, 2, 4, 5, 16) and not k.any() and not v.any()
    del weights["layers.1.w_ff_2"]
    step_settings = {k: v for k, v in settings.items() if k != "encoder_layers"}
    with pytest.raises(ValueError, match=r"layers\.1\.w_ff_2"):
        decoder.Step(weights, **step_settings)


def test_a_broken_weights_file_is_a_graph_error(tmp_path: Path) -> None:
    with pytest.raises(GraphError, match="not found"):
        native_model.NativeModel(tmp_path / native_model.FILE)
    path = write_native_weights(_model("pre", "relu"), tmp_path)
    with np.load(path) as npz:
        arrays = {name: npz[name] for name in npz.files}
    settings = json.loads(str(arrays["settings"]))
    for key, value, message in (
        ("num_layers", -1, "layers: -1"),
        ("encoder_layers", 100000, "layers: 100000"),
        ("num_heads", 0, "num_heads"),
        ("activation", "tanh", "activation"),
    ):
        tampered = tmp_path / key / native_model.FILE
        tampered.parent.mkdir()
        np.savez(tampered, **(arrays | {"settings": np.array(json.dumps(settings | {key: value}))}))
        with pytest.raises(GraphError, match=message):
            native_model.NativeModel(tampered)
    for missing in ("w_out", "cross.w_kv"):
        with np.load(path) as npz:
            arrays = {name: npz[name] for name in npz.files if name != missing}
        broken = tmp_path / "broken" / native_model.FILE
        broken.parent.mkdir(exist_ok=True)
        np.savez(broken, **arrays)
        with pytest.raises(GraphError, match=missing):
            native_model.NativeModel(broken)


def test_native_model_keeps_the_step_contract(tmp_path: Path) -> None:
    """Through `NativeModel`: sources in, stacked source keys/values out; stacked caches in,
    per-layer `Layers` out, which the next step takes as they are."""
    model = native_model.NativeModel(write_native_weights(_model("pre", "relu"), tmp_path))
    assert (model.num_layers, model.num_heads, model.head_dim) == (2, 4, 16)
    src_ids, src_mask = _sources(3, 5, np.random.default_rng(1))
    ck, cv = model.encode(src_ids, src_mask)
    assert ck.shape == (2, 3, 4, 5, 16)
    empty = np.zeros((2, 3, 4, 0, 16), np.float32)
    tokens, positions = np.full((3, 1), 2), np.zeros((3, 1), np.int64)
    _, k, v = model.step(tokens, positions, empty, empty, np.ones((3, 0), bool), ck, cv, src_mask)
    assert isinstance(k, Layers) and k.shape == (2, 3, 4, 1, 16)
    lp, k2, _ = model.step(tokens, positions + 1, k, v, np.ones((3, 1), bool), ck, cv, src_mask)
    assert k2.shape == (2, 3, 4, 2, 16) and np.isfinite(lp).all()


def test_runtime_setting_chooses_the_runtime() -> None:
    assert native_model.chosen("native", on_cpu=True)
    assert native_model.chosen("native", on_cpu=False)
    assert not native_model.chosen("onnx", on_cpu=True)
    assert native_model.chosen("auto", on_cpu=True) == native_model.fast_here()
    assert not native_model.chosen("auto", on_cpu=False)  # on a GPU the graphs keep the caches


@pytest.mark.slow
def test_int8_export_ships_the_native_translator_measured(
    tiny_checkpoint: Path, tmp_path: Path, sample_sources: list[str], translator: Any
) -> None:
    """`seqserve export --quantize int8` writes native.npz, records its BLEU change like the
    graphs', and lets serving choose it; the translator loaded with it runs natively, as
    faithfully to fp32 (`translator`: the same checkpoint's fp32 export) as the int8 graphs."""
    import onnxruntime as ort

    from core.translation import DecodeRequest
    from core.translation.spec import read_config
    from export.translator import TranslatorExportOptions, export_translator
    from protos.inference import model_config_pb2 as mc
    from serving.models.onnx_step_model import OnnxStepModel, load_translator

    options = TranslatorExportOptions(quantize="int8")
    out = export_translator(tiny_checkpoint, tmp_path, "t8", options)
    assert (out / native_model.FILE).is_file()
    config = read_config(tmp_path / "t8")
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["runtime"] == "auto"
    q = json.loads(params["quantization"])["native"]
    assert q["checked_with_kernel"] == native_model.kernel()
    assert abs(q["bleu_change"]) < 5  # the tiny model: a loose bound; Multi30k's is measured
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    loaded = {"fp32": translator}
    for setting in ("native", "onnx"):
        config.parameters["runtime"].string_value = setting
        loaded[setting] = load_translator(out, config, opts, ["CPUExecutionProvider"])
    assert isinstance(loaded["native"].model, native_model.NativeModel)
    assert isinstance(loaded["onnx"].model, OnnxStepModel)
    wrong = mc.ModelConfig()
    wrong.CopyFrom(config)
    wrong.parameters["runtime"].string_value = "native"
    wrong.parameters["num_heads"].string_value = "2"  # not what native.npz holds
    with pytest.raises(GraphError, match=r"config\.pbtxt says"):
        load_translator(out, wrong, opts, ["CPUExecutionProvider"])
    tok = translator.tokenizer
    texts = {}
    for name, model in loaded.items():
        requests = [
            DecodeRequest(i, tok.encode_source(s), 1, 40) for i, s in enumerate(sample_sources)
        ]
        texts[name] = [r.text for r in model.run(requests)]

    def agree(name: str) -> int:
        return sum(a == b for a, b in zip(texts[name], texts["fp32"], strict=True))

    # the tiny model is weak, so near ties flip under either int8; a broken model would agree
    # on next to nothing
    assert agree("native") >= agree("onnx") - 3, texts


def test_windows_read_in_place_decode_as_the_copies(tmp_path: Path) -> None:
    """The decoding loop hands the native step its beam reorders, dropped rows and trims as
    windows on the arrays they came from, and joins as parts side by side (no copy); the
    results are the very ones the copies give: requests joining mid-batch, twice in a row,
    beams of 1 to 3, one cancelled, rows leaving."""
    from core.translation.batch import DecodeBatch, DecodeRequest

    weights = write_native_weights(_model("pre", "relu"), tmp_path)
    results = {}
    for windows in (True, False):
        model = native_model.NativeModel(weights)
        model.reads_windows = windows  # type: ignore[misc]
        batch = DecodeBatch(model, bos_id=2, eos_id=3, pad_id=0)
        assert batch.windows == windows
        rng = np.random.default_rng(5)

        def request(
            i: int, beam: int, length: int, rng: np.random.Generator = rng
        ) -> DecodeRequest:
            source = [*rng.integers(4, 300, int(rng.integers(2, 9))).tolist(), 3]
            return DecodeRequest(i, source, beam, length)

        batch.add([request(0, 1, 12), request(1, 3, 9), request(2, 2, 5)])
        done: dict[int, list[tuple[list[int], float]]] = {}
        kinds = set()
        for step in range(40):
            if step == 2:
                batch.add([request(3, 3, 7), request(4, 1, 4)])
            if step == 3:  # onto a join: parts of three encodings
                batch.add([request(5, 2, 6)])
            if step == 4:
                batch.remove([1])
            for update in batch.step():
                if update.finished:
                    done[update.id] = [(h.token_ids, h.score) for h in update.result.hypotheses]
            kinds |= {type(batch.cache.past_k).__name__, type(batch.cache.cross_k).__name__}
            if not len(batch):
                break
        results[windows] = done
        assert ("Window" in kinds) == ("Joined" in kinds) == windows, kinds
    assert set(results[True]) == {0, 2, 3, 4, 5}
    assert results[True] == results[False]


def _held_rows(cache: Any) -> int:
    """Rows of the arrays a stacked cache keeps alive (each array once)."""
    from core.translation.graphs import Joined, Window

    if isinstance(cache, Joined):
        bases = {id(part.base): part.base.shape[1] for part in cache.parts}
        return sum(bases.values())
    if isinstance(cache, Window):
        return cache.base.shape[1]
    return cache.shape[1]


def test_joins_keep_at_most_twice_the_live_rows(tmp_path: Path) -> None:
    """Served, requests join, finish and are cancelled at every step; the source keys and
    values the batch keeps alive stay within twice its live rows (and 16), however long it
    runs, while each join costs no copy: here groups of 12 sentences join, of which one runs
    long and the others stop within 3 tokens, so each group's arrays would stay alive for one
    row."""
    from core.translation.batch import DecodeBatch, DecodeRequest
    from core.translation.search import SearchRules

    model = native_model.NativeModel(write_native_weights(_model("pre", "relu"), tmp_path))
    # EOS never generated: each request runs to its max_length
    batch = DecodeBatch(model, bos_id=2, eos_id=3, pad_id=0, rules=SearchRules(suppress_ids=(3,)))
    rng = np.random.default_rng(11)
    next_id, kinds = 0, set()
    for step in range(120):
        requests = []
        for j in range(12 if step % 4 == 0 else 0):
            source = [*rng.integers(4, 300, int(rng.integers(1, 12))).tolist(), 3]
            beam = int(rng.integers(1, 3))
            length = 40 if j == 0 else int(rng.integers(1, 4))
            requests.append(DecodeRequest(next_id, source, beam, length))
            next_id += 1
        batch.add(requests)
        if len(batch) and rng.random() < 0.1:  # a client goes away
            batch.remove([batch.ids[int(rng.integers(0, len(batch)))]])
        batch.step()
        kinds.add(type(batch.cache.cross_k).__name__)
        live = batch.cache.rows
        assert _held_rows(batch.cache.cross_k) <= 2 * live + 16, (step, live)
        assert _held_rows(batch.cache.cross_v) <= 2 * live + 16
    assert "Joined" in kinds, kinds
