"""`seqserve import marian`: a tiny MarianMT folder built here (random weights, SentencePiece
models trained on generated text; nothing downloaded) imported, served by seqserve's engine, and
compared token for token with transformers' `generate()`, greedy and beam 4."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from google.protobuf import text_format

from bench.marian import marian_tokenizer, save_marian
from core.translation import read_config
from export.errors import ExportError
from export.marian import import_marian
from export.translator import TranslatorExportOptions
from seqserve.marian_import import check_parity
from serving.models.onnx_step_model import load_translator

transformers = pytest.importorskip("transformers")

WORDS_DE = (
    "der die das Haus Hund Katze läuft schnell über die Straße im Garten spielt ein Kind".split()
)
EMBED_STD, EOS_BIAS = 0.3, 7.0
WORDS_EN = "the house dog cat runs fast across street in garden plays a child".split()


def _sentences(words: list[str], n: int, rng: random.Random) -> list[str]:
    return [" ".join(rng.choice(words) for _ in range(rng.randint(2, 7))) for _ in range(n)]


def build_marian(folder: Path, seed: int = 0) -> dict[str, Any]:
    """A MarianMT folder as Hugging Face writes one: config, weights, generation config, two
    SentencePiece models and one shared vocabulary (</s> 0, <unk> 1, ..., <pad> last)."""
    rng = random.Random(seed)
    source, target, vocab = marian_tokenizer(
        _sentences(WORDS_DE, 300, rng), _sentences(WORDS_EN, 300, rng), (60, 50)
    )
    v = len(vocab)
    config = transformers.MarianConfig(
        vocab_size=v,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        activation_function="swish",
        scale_embedding=True,
        pad_token_id=v - 1,
        decoder_start_token_id=v - 1,
        eos_token_id=0,
        forced_eos_token_id=0,
        dropout=0.0,
    )
    torch.manual_seed(seed)
    model = transformers.MarianMTModel(config).eval()
    with torch.no_grad():  # separated logits: random ones near-tie and make argmax fragile
        for name, p in model.named_parameters():
            if "embed_positions" in name:
                continue  # sinusoids, not weights
            if p.dim() > 1:
                p.normal_(0.0, EMBED_STD if "shared" in name or "embed" in name else 0.5)
            elif "layer_norm" not in name:
                p.normal_(0.0, 0.2)
        model.final_logits_bias.normal_(0.0, 1.0)
        model.final_logits_bias[0, 0] += (
            EOS_BIAS  # EOS now and then, so that beams finish early too
        )
    model.generation_config = transformers.GenerationConfig(
        num_beams=4,
        max_length=64,
        bad_words_ids=[[v - 1]],
        decoder_start_token_id=v - 1,
        eos_token_id=0,
        pad_token_id=v - 1,
        forced_eos_token_id=0,
    )
    save_marian(folder, model, source, target, vocab)
    return {"vocab": vocab, "pad": v - 1}


@pytest.fixture(scope="module")
def marian(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("marian")
    folder = root / "opus-mt-tiny"
    info = build_marian(folder)
    sentences = _sentences(WORDS_DE, 12, random.Random(7))
    version = import_marian(
        folder, root / "repo", "opus", TranslatorExportOptions(), "de", "en", sentences
    )
    return {**info, "folder": folder, "version": version, "sentences": sentences}


def test_the_import_writes_a_translator_the_engine_serves(marian: dict[str, Any]) -> None:
    version = marian["version"]
    assert sorted(p.name for p in version.iterdir()) == [
        "decoder.onnx",
        "encoder.onnx",
        "source.spm",
        "target.spm",
        "vocab.json",
    ]
    params = {k: v.string_value for k, v in read_config(version.parent).parameters.items()}
    assert params["source_normalization"] == "none"  # Marian's text is cased
    assert params["length_penalty_form"] == "length"
    assert json.loads(params["suppress_ids"]) == [marian["pad"]]
    assert json.loads(params["bos_id"]) == marian["pad"]  # the decoder starts from pad
    assert json.loads(params["default_beam_size"]) == 4
    imported = json.loads(params["imported"])
    assert imported["logits_max_abs_diff"] <= 1e-3
    translator = load_translator(version, providers=["CPUExecutionProvider"])
    results = translator.translate(marian["sentences"][:4], beam_size=4, max_length=20)
    assert any(r.hypotheses[0].token_ids for r in results)
    for r in results:
        assert marian["pad"] not in r.hypotheses[0].token_ids
    assert translator.translate(["Haus"])[0].text == translator.translate(["Haus"])[0].text
    assert translator.requests.tokenizer.encode_source("Haus") != (
        translator.requests.tokenizer.encode_source("HAUS")
    )  # never case-folded


def test_greedy_and_beam_4_equal_transformers_generate(marian: dict[str, Any]) -> None:
    report = check_parity(marian["folder"], marian["version"], marian["sentences"])
    for beam in ("beam_1", "beam_4"):
        assert report[beam]["sentences"] == len(marian["sentences"]), report
        assert report[beam]["equal"] == report[beam]["sentences"], report[beam]["differ"]


def test_a_folder_that_is_not_marian_is_refused(tmp_path: Path, marian: dict[str, Any]) -> None:
    with pytest.raises(ExportError, match=r"not a MarianMT folder, missing config\.json"):
        import_marian(tmp_path, tmp_path / "repo", "x", TranslatorExportOptions())
    bad = tmp_path / "separate"
    bad.mkdir()
    for f in marian["folder"].iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "target_vocab.json").write_text("{}")
    with pytest.raises(ExportError, match=r"separate source and target vocabularies"):
        import_marian(bad, tmp_path / "repo", "x", TranslatorExportOptions())


@pytest.mark.slow
def _served_as_in_process(version: Path, name: str, sentences: list[str]) -> None:
    """The server's engine, over gRPC: the typed API (beam 4 and streaming) and V2 BYTES give
    what the model gives in process."""
    import grpc
    import numpy as np

    from protos.seqserve.translate.v1 import translate_service_pb2 as tpb
    from protos.seqserve.translate.v1 import translate_service_pb2_grpc as tgrpc
    from tests.conftest import ServerProcess
    from tests.serving.v2 import outputs, request, stub

    local = load_translator(version, providers=["CPUExecutionProvider"])
    want = [r.text for r in local.translate(sentences, beam_size=4)]
    greedy = local.translate(sentences[:1], beam_size=1)[0].text
    srv = ServerProcess(version.parent.parent)
    try:
        srv.wait_ready()
        with grpc.insecure_channel(srv.target) as ch:
            api = tgrpc.TranslatorStub(ch)
            reply = api.Translate(
                tpb.TranslateRequest(model_name=name, sentences=sentences, beam_size=4),
                timeout=60,
            )
            assert [t.hypotheses[0].text for t in reply.translations] == want
            chunks = api.TranslateStream(
                tpb.TranslateRequest(model_name=name, sentences=sentences[:1]), timeout=60
            )
            assert "".join(c.text for c in chunks) == greedy
        channel, s = stub(srv.target)
        with channel:
            text = np.array([[t.encode()] for t in sentences], dtype=object)
            msg = request(name, text=text)
            msg.parameters["beam_size"].int64_param = 4
            got = outputs(s.ModelInfer(msg, timeout=60))
            assert [t.decode() for t in got["translation"].reshape(-1)] == want
    finally:
        assert srv.terminate() == 0, srv.output()[-2000:]


def test_the_imported_model_is_served_over_every_api(marian: dict[str, Any]) -> None:
    _served_as_in_process(marian["version"], "opus", marian["sentences"][:3])


@pytest.mark.slow
def test_an_int8_import_is_served_by_the_native_translator(
    marian: dict[str, Any], tmp_path: Path
) -> None:
    """`--quantize int8` on a Marian folder ships the native translator (post-norm, swish,
    scaled shared embeddings, the bias on the logits, the decoder starting from pad); with
    `runtime: native` the server runs it, over every API, as it runs in process."""
    from core.translation import native_model
    from serving.models.onnx_step_model import OnnxStepModel

    if native_model.kernel() is None:
        pytest.skip("core/native not built")
    version = import_marian(
        marian["folder"],
        tmp_path / "repo",
        "opus8",
        TranslatorExportOptions(quantize="int8"),
        "de",
        "en",
        marian["sentences"],
    )
    config_path = version.parent / "config.pbtxt"
    config = read_config(version.parent)
    quantization = json.loads(config.parameters["quantization"].string_value)
    assert quantization["native"]["checked_with_kernel"] == native_model.kernel()
    config.parameters["runtime"].string_value = "native"  # on any CPU, fast or not
    config_path.write_text(text_format.MessageToString(config))
    native = load_translator(version, providers=["CPUExecutionProvider"])
    assert isinstance(native.model, native_model.NativeModel)
    config.parameters["runtime"].string_value = "onnx"
    graphs = load_translator(version, config, providers=["CPUExecutionProvider"])
    assert isinstance(graphs.model, OnnxStepModel)
    sentences = marian["sentences"]
    for result in native.translate(sentences, beam_size=4, max_length=20):
        assert marian["pad"] not in result.hypotheses[0].token_ids  # pad is never generated
    fp32 = load_translator(marian["version"], providers=["CPUExecutionProvider"])
    want = [r.token_ids for r in fp32.translate(sentences)]

    def agree(model: Any) -> int:
        return sum(r.token_ids == w for r, w in zip(model.translate(sentences), want, strict=True))

    # random weights nearly tie, so either int8 flips some greedy choices; a broken native
    # translator would agree with fp32 on next to nothing
    assert agree(native) >= agree(graphs) - 2, (agree(native), agree(graphs))
    _served_as_in_process(version, "opus8", sentences[:3])


@pytest.mark.slow
def test_bench_compares_the_import_with_ctranslate2(marian: dict[str, Any], tmp_path: Path) -> None:
    """`seqserve bench translator --marian`: the same folder through both converters, every
    engine decoding the same fixed length."""
    pytest.importorskip("ctranslate2")
    from seqserve.cli import main

    argv = ["bench", "translator", "--marian", str(marian["folder"]), "--sentences", "4"]
    argv += ["--repeats", "1", "--length", "5", "--batches", "1,2", "--results-dir", str(tmp_path)]
    assert main(argv) == 0
    [out] = tmp_path.glob("translator-marian-*.json")
    result = json.loads(out.read_text())
    assert {tuple(v) for v in result["decoded_lengths"].values()} == {(5,)}
    assert set(result["ratios"]) == {
        f"seqserve_{k}_vs_ct2_{k}_beam{b}_b{n}"
        for k in ("fp32", "int8")
        for b in (1, 4)
        for n in (1, 2)
    }
    assert all(v > 0 for v in result["tokens_per_second"].values())


def test_a_config_with_suppressed_ids_outside_the_vocabulary_fails_to_load(
    marian: dict[str, Any],
) -> None:
    from core.translation import SpecError, TranslatorSpec

    config = read_config(marian["version"].parent)
    config.parameters["suppress_ids"].string_value = json.dumps([len(marian["vocab"]) + 5])
    with pytest.raises(SpecError, match="outside the vocabulary"):
        TranslatorSpec.from_config(config)
    del config.parameters["target_tokenizer"]
    config.parameters["suppress_ids"].string_value = "[]"
    with pytest.raises(SpecError, match="come together"):
        TranslatorSpec.from_config(config)


@pytest.mark.parametrize("early_stopping", ["true", "never"])
def test_beam_4_follows_the_generation_configs_early_stopping(
    marian: dict[str, Any], tmp_path: Path, early_stopping: str
) -> None:
    """transformers' other two stopping rules, set as the import would from a generation
    config that names them, against generate() with the same setting."""

    version = tmp_path / "repo" / "opus" / "1"
    shutil.copytree(marian["version"], version)
    config = read_config(marian["version"].parent)
    config.parameters["early_stopping"].string_value = early_stopping
    (version.parent / "config.pbtxt").write_text(text_format.MessageToString(config))
    report = check_parity(marian["folder"], version, marian["sentences"], beams=(4,))
    assert report["beam_4"]["equal"] == len(marian["sentences"]), report["beam_4"]["differ"]


def test_a_decoder_that_does_not_start_from_pad_is_refused(
    marian: dict[str, Any], tmp_path: Path
) -> None:
    folder = tmp_path / "start"
    shutil.copytree(marian["folder"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["decoder_start_token_id"] = 0
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="decoder_start_token_id 0 is not pad"):
        import_marian(folder, tmp_path / "repo", "x", TranslatorExportOptions())
