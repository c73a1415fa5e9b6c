"""The exported version folder: config.pbtxt contract, graph signatures with dynamic dims,
an empty first cache, and greedy parity with PyTorch on a trained tiny model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from core.translation import Translator, TranslatorSpec, read_config
from core.translation.graphs import (
    decoder_feeds,
    decoder_inputs,
    decoder_outputs,
    stacked_outputs,
)
from export.verify import graph_dims
from protos.inference import model_config_pb2 as mc
from training.decoding import greedy_decode


def test_training_wrote_checkpoint_metrics_and_examples(
    tiny_checkpoint: Path, tiny_metrics: dict[str, Any]
) -> None:
    assert {p.name for p in tiny_checkpoint.iterdir()} >= {
        "checkpoint.pt",
        "spm.model",
        "metrics.json",
        "examples.txt",
    }
    for key in (
        "bleu",
        "chrf",
        "exact_match",
        "split",
        "beam_size",
        "decode_seconds",
        "parameters",
        "train_seconds",
        "steps",
        "best_val_loss",
    ):
        assert key in tiny_metrics, key
    assert tiny_metrics["split"] == "test" and tiny_metrics["beam_size"] == 2
    assert "HYP" in (tiny_checkpoint / "examples.txt").read_text()


def test_config_declares_the_translator_contract(version_dir: Path) -> None:
    config = read_config(version_dir.parent)
    assert config.name == "translator" and config.backend == "seqserve_translator"
    assert config.platform == "" and config.max_batch_size == 128
    assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
        ("text", mc.TYPE_STRING, [1])
    ]
    assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [
        ("translation", mc.TYPE_STRING, [1]),
        ("score", mc.TYPE_FP32, [1]),
    ]
    params = {k: v.string_value for k, v in config.parameters.items()}
    for key in (
        "seqserve_schema",
        "task",
        "src_lang",
        "tgt_lang",
        "bos_id",
        "eos_id",
        "pad_id",
        "max_source_tokens",
        "max_target_tokens",
        "default_beam_size",
        "tokenizer",
        "num_layers",
        "num_heads",
        "head_dim",
        "metrics",
        "exporter",
        "opset",
    ):
        assert key in params, key
    assert params["seqserve_schema"] == "1" and params["task"] == "translator"
    assert json.loads(params["metrics"])["beam_size"] == 2
    spec = TranslatorSpec.from_config(config)
    assert (spec.src_lang, spec.tgt_lang, spec.max_source_tokens) == ("de", "en", 48)
    assert sorted(p.name for p in version_dir.iterdir()) == [
        "decoder.onnx",
        "encoder.onnx",
        "spm.model",
    ]


def test_graphs_have_dynamic_batch_length_and_cache(version_dir: Path) -> None:
    enc = graph_dims(onnx.load(str(version_dir / "encoder.onnx")))
    dec = graph_dims(onnx.load(str(version_dir / "decoder.onnx")))
    assert all(isinstance(d, str) for d in enc["src_ids"])
    assert enc["cross_k"][0] == 2 and isinstance(enc["cross_k"][3], str)
    for name in ("past_k_0", "past_v_0", "past_k_1", "past_v_1", "present_k_1"):
        assert isinstance(dec[name][0], str) and isinstance(dec[name][2], str), name
    assert isinstance(dec["past_mask"][1], str) and dec["tokens"][1] == 1
    assert not list((version_dir).glob("*.data"))  # single-file ONNX


def test_decoder_accepts_an_empty_cache(version_dir: Path) -> None:
    sess = ort.InferenceSession(
        str(version_dir / "decoder.onnx"), providers=["CPUExecutionProvider"]
    )
    kv = np.zeros((2, 3, 4, 0, 16), np.float32)
    cross = np.random.default_rng(0).standard_normal((2, 3, 4, 5, 16)).astype(np.float32)
    feeds = decoder_feeds(
        np.full((3, 1), 2, np.int64),
        np.zeros((3, 1), np.int64),
        kv,
        kv,
        np.zeros((3, 0), bool),
        cross,
        cross,
        np.ones((3, 5), bool),
    )
    assert sorted(feeds) == sorted(i.name for i in sess.get_inputs())
    log_probs, pk, _ = stacked_outputs(sess.run(decoder_outputs(2), feeds), 2)
    assert log_probs.shape == (3, 96) and pk.shape == (2, 3, 4, 1, 16)
    assert np.allclose(np.exp(log_probs).sum(-1), 1, atol=1e-4)


@pytest.mark.parametrize(("rows", "past", "src"), [(1, 0, 3), (4, 6, 9), (3, 13, 1)])
def test_inference_layout_step_equals_decode_step(
    torch_checkpoint: tuple[Any, ...], rows: int, past: int, src: int
) -> None:
    """decoder.onnx is written from export.decoder_step (fused, pre-transposed weights, additive
    masks): in PyTorch it must compute the training model's decode_step, padded rows included."""
    from export.decoder_step import DecoderStep
    from export.translator import step_inputs, step_reference

    model = torch_checkpoint[0]
    feeds = step_inputs(model, rows, past, src, np.random.default_rng(rows + past))
    names = decoder_inputs(model.config.num_decoder_layers)
    with torch.no_grad():
        got = DecoderStep(model).eval()(*(torch.from_numpy(feeds[n]) for n in names))
    want = step_reference(model)(feeds)  # decode_step, outputs named as decoder.onnx's
    assert list(want) == decoder_outputs(model.config.num_decoder_layers)
    for w, g in zip(want.values(), got, strict=True):
        torch.testing.assert_close(g, torch.from_numpy(w), atol=1e-5, rtol=1e-5)


def _torch_greedy(
    torch_checkpoint: tuple[Any, ...], translator: Translator, sources: list[str]
) -> list[list[int]]:
    model = torch_checkpoint[0]
    ids = [translator.tokenizer.encode_source(s) for s in sources]
    src = torch.zeros(len(ids), max(map(len, ids)), dtype=torch.long)
    for i, s in enumerate(ids):
        src[i, : len(s)] = torch.tensor(s)
    return greedy_decode(model, src, translator.spec.max_target_tokens)


def test_onnx_greedy_equals_torch_greedy_on_real_sentences(
    translator: Translator, torch_checkpoint: tuple[Any, ...], sample_sources: list[str]
) -> None:
    want = _torch_greedy(torch_checkpoint, translator, sample_sources)
    got = translator.translate(
        sample_sources, beam_size=1, max_length=translator.spec.max_target_tokens
    )
    assert [r.token_ids for r in got] == want
    assert max(map(len, want)) >= 10  # trained outputs, not an untrained model's trivia
    assert sum(len(w) >= 10 for w in want) >= len(want) // 2


def test_export_recorded_its_verification(version_dir: Path) -> None:
    params = {k: v.string_value for k, v in read_config(version_dir.parent).parameters.items()}
    verification = json.loads(params["verification"])
    assert verification["greedy_equal"]["sentences"] == 32
    assert verification["greedy_equal"]["longest_output_tokens"] >= 10
    assert verification["step_max_abs_diff"] < 1e-4
    assert params["exporter"].startswith("torch.onnx.export(dynamo=True)")


def test_export_refuses_to_overwrite_before_exporting(
    tiny_checkpoint: Path, tiny_repository: Path, capsys: pytest.CaptureFixture
) -> None:
    from seqserve.cli import main

    code = main(
        [
            "export",
            "--checkpoint",
            str(tiny_checkpoint),
            "--repository",
            str(tiny_repository),
            "--name",
            "translator",
            "--version",
            "1",
        ]
    )
    assert code == 2 and "exists" in capsys.readouterr().err


def test_a_stacked_cache_export_is_refused_with_a_reason(version_dir: Path, tmp_path: Path) -> None:
    """decoder.onnx files of earlier seqserve versions took one stacked past_k [L, R, H, P, K]:
    loading one names the problem and the fix instead of failing on a missing feed later."""
    from onnx import TensorProto, helper

    from core.translation.graphs import GraphError
    from serving.models.onnx_step_model import OnnxStepModel

    old = helper.make_model(
        helper.make_graph(
            [helper.make_node("Identity", ["past_k"], ["present_k"])],
            "old_decoder",
            [helper.make_tensor_value_info("past_k", TensorProto.FLOAT, [2, None, 4, None, 16])],
            [helper.make_tensor_value_info("present_k", TensorProto.FLOAT, [2, None, 4, None, 16])],
        ),
        opset_imports=[helper.make_opsetid("", 20)],
        ir_version=10,
    )
    (tmp_path / "encoder.onnx").write_bytes((version_dir / "encoder.onnx").read_bytes())
    onnx.save(old, str(tmp_path / "decoder.onnx"))
    with pytest.raises(GraphError, match=r"stacked .* export the checkpoint again"):
        OnnxStepModel(tmp_path, num_layers=2, num_heads=4, head_dim=16)


def test_numbers_training_scores_small_numbers_apart_and_by_digit_count(
    tiny_metrics: dict[str, Any],
) -> None:
    small = tiny_metrics["small_numbers"]
    assert small["range"] == "0-1000, hundert, tausend" and small["sentences"] == 1003
    assert 0 <= small["exact_match"] <= 1 and len(small["wrong"]) <= 20
    by_digits = tiny_metrics["exact_match_by_digits"]
    assert sorted(by_digits) == ["1", "2", "3", "4", "5", "6"]
    mean = sum(by_digits.values()) / len(by_digits)
    assert tiny_metrics["exact_match_uniform_digits"] == pytest.approx(mean, abs=1e-4)


def test_case_folding_is_the_models_setting_in_training_and_serving(
    version_dir: Path, translator: Translator
) -> None:
    params = {k: v.string_value for k, v in read_config(version_dir.parent).parameters.items()}
    assert params["source_normalization"] == "casefold"  # the numbers presets
    assert translator.spec.source_normalization == "casefold"
    for forms in (("eins", "Eins", "EINS"), ("dreißig", "Dreißig", "DREISSIG")):
        results = translator.translate(list(forms), beam_size=2)
        assert len({(r.text, tuple(r.hypotheses[0].token_ids)) for r in results}) == 1, forms


def test_source_normalization_in_a_config(version_dir: Path) -> None:
    from core.translation import RequestBuilder, SpecError

    config = read_config(version_dir.parent)
    config.parameters["source_normalization"].string_value = "shout"
    with pytest.raises(SpecError, match="source_normalization"):
        TranslatorSpec.from_config(config)  # a load error, not one per request
    del config.parameters["source_normalization"]  # an export from before the setting
    builder = RequestBuilder.load(version_dir, config)
    assert builder.spec.source_normalization == "none"
    assert builder.tokenizer.encode_source("EINS") != builder.tokenizer.encode_source("eins")


def test_corpora_of_users_keep_their_case() -> None:
    from training.translator_config import TRANSLATOR_PRESETS, TranslatorTrainConfig, preset_for

    assert TranslatorTrainConfig().source_normalization == "none"
    for pairs in (100, 100_000):
        name = preset_for("my.tsv", pairs)
        assert TRANSLATOR_PRESETS[name].train.source_normalization == "none", name
    assert TRANSLATOR_PRESETS["numbers"].train.source_normalization == "casefold"
