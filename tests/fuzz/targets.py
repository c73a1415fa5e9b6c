"""Fuzz targets: the server's request decoding and validation, driven with arbitrary bytes.

Each target takes the bytes of one input and must either accept it or raise the error the
server turns into a status (`ServingError`, a protobuf parse error, `ModelLoadError`): any
other exception is a crash, which would reach a client as INTERNAL. `tests/fuzz/run.py` runs
them under atheris (coverage-guided, with libFuzzer's RSS limit catching over-allocation);
`tests/fuzz/test_corpus.py` replays the committed corpus in `make test`.

    v2_request        V2 ModelInferRequest -> decode_request + validate, on four models
    bytes_tensor      a datatype, a shape and raw bytes -> serving.tensors.from_raw
    forecast_request  typed ForecastRequest -> windows, quantile levels, model inputs
    translate_request typed TranslateRequest and V2 parameters -> tokenized, checked requests
    model_config      config.pbtxt text or a Load override's JSON -> the config validator,
                      and the files it names resolved in a version folder
    rest_request      a KServe V2 REST infer body (JSON, or JSON then binary tensors) ->
                      serving.rest.codec's decode on four models, and encode of its outputs
"""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import sentencepiece as spm
from google.protobuf import json_format, text_format
from google.protobuf.message import DecodeError

from core.config_checks import check_config, version_file
from core.errors import ModelLoadError, ServingError
from core.translation import RequestBuilder, Tokenizer, TranslatorSpec
from protos.inference import grpc_service_pb2 as pb
from protos.inference import model_config_pb2 as mc
from protos.seqserve.forecast.v1 import forecast_service_pb2 as fpb
from protos.seqserve.translate.v1 import translate_service_pb2 as tpb
from serving import tensors
from serving.forecasting import ForecasterSpec, prepare, quantile_indices
from serving.models.base import InferRequest, ServedModel
from serving.models.onnx_model import _utf8, batch_policy
from serving.models.translator import _decode_settings, _text
from serving.rest import codec as rest_codec
from serving.servicers.codec import decode_request
from serving.servicers.forecast import _window
from serving.servicers.translate import _prepare
from tests.serving.model_factory import (
    AFFINE_CONFIG,
    ECHO_CONFIG,
    FORECASTER_CONFIG,
    FRAGILE_CONFIG,
)


class _Model(ServedModel):
    """A model with a config and nothing behind it: decoding and validation only."""

    async def infer(self, request: InferRequest) -> dict[str, np.ndarray]:
        raise NotImplementedError

    async def drain_and_close(self) -> None:
        pass


def _config(text: str, name: str) -> mc.ModelConfig:
    config = text_format.Parse(text, mc.ModelConfig())
    config.name = name
    return config


@cache
def _models() -> list[ServedModel]:
    return [
        _Model("affine", 1, _config(AFFINE_CONFIG.format(scheduling="", extra=""), "affine")),
        _Model(
            "plain",
            1,
            _config(
                AFFINE_CONFIG.format(scheduling="", extra="").replace(
                    "max_batch_size: 8", "max_batch_size: 0"
                ),
                "plain",
            ),
        ),
        _Model("echo", 1, _config(ECHO_CONFIG, "echo")),
        _Model("fragile", 1, _config(FRAGILE_CONFIG, "fragile")),
    ]


@cache
def _native_signatures() -> dict[str, tuple]:
    """The native fast path's view of the models it would serve (no strings, no optional
    inputs), when the front end is built."""
    from serving.native.frontend import _frontend, signature

    if _frontend is None:
        return {}
    return {
        m.name: signature(m, batch_policy(m.config))
        for m in _models()
        if all(s.datatype != "BYTES" for s in (*m.inputs.values(), *m.outputs.values()))
        and not any(s.optional for s in m.inputs.values())
    }


def v2_request(data: bytes) -> None:
    """The Python dataplane's rule, and the native fast path's beside it (accept.h): a request
    the fast path takes as it is must be one Python takes."""
    taken: set[str] = set()
    if signatures := _native_signatures():
        from serving.native.frontend import _frontend

        taken = {n for n, s in signatures.items() if _frontend.v2_accepts(*s, data)}
    try:
        msg = pb.ModelInferRequest.FromString(data)
    except DecodeError:
        assert not taken, "the fast path took a request that does not parse"
        return
    for model in _models():
        try:
            request = decode_request(msg, model)
            model.validate(request)
            for name, array in request.inputs.items():
                if array.dtype == object:
                    _utf8(array, name)
        except ServingError as err:
            assert model.name not in taken, (
                f"{model.name}: the fast path took what Python refuses: {err}"
            )
            continue


DATATYPES = [*sorted(tensors.DTYPES), "BF16", ""]


def bytes_tensor(data: bytes) -> None:
    """Byte 0 picks the datatype, byte 1 the rank, then 8 bytes per dimension (signed, little
    endian); the rest is the raw payload."""
    if len(data) < 2:
        return
    datatype = DATATYPES[data[0] % len(DATATYPES)]
    rank = data[1] % 5
    head = 2 + 8 * rank
    if len(data) < head:
        return
    shape = [
        int.from_bytes(data[2 + 8 * i : 10 + 8 * i], "little", signed=True) for i in range(rank)
    ]
    try:
        array = tensors.from_raw(data[head:], datatype, shape, "x")
    except ServingError:
        return
    assert array.shape == tuple(shape)
    if datatype != "BYTES":
        assert array.nbytes == len(data) - head


@cache
def _forecaster() -> ForecasterSpec:
    return ForecasterSpec.of(_Model("fc", 1, _config(FORECASTER_CONFIG, "fc")))


@cache
def _native_forecaster() -> object | None:
    """The native fast path's view of the same forecaster, when the front end is built."""
    from serving.native.frontend import _frontend, forecast_spec

    if _frontend is None:
        return None
    return forecast_spec(_Model("fc", 1, _config(FORECASTER_CONFIG, "fc")))


def forecast_request(data: bytes) -> None:
    """The Python servicer's rule, and the native fast path's beside it (forecast.h): a
    request the fast path takes must be one Python takes, with the same tensors bit for bit."""
    native = _native_forecaster()
    taken = None
    if native is not None:
        from serving.native.frontend import _frontend

        infer = _frontend.forecast_to_infer(native, data, max_batch_size=4)
        taken = None if infer is None else pb.ModelInferRequest.FromString(infer)
    try:
        msg = fpb.ForecastRequest.FromString(data)
    except DecodeError:
        assert taken is None, "the fast path took a request that does not parse"
        return
    spec = _forecaster()
    try:
        quantile_indices(spec, list(msg.quantile_levels))
        prepared = prepare(spec, [_window(w, i) for i, w in enumerate(msg.windows)])
    except ServingError as err:
        assert taken is None, f"the fast path took a request Python refuses: {err}"
        return
    past = prepared.inputs["past"]
    assert past.shape == (len(msg.windows), spec.input_window, len(spec.past_features))
    assert np.isfinite(past).all()
    if taken is not None:
        assert [t.name for t in taken.inputs] == list(prepared.inputs)
        for t, raw in zip(taken.inputs, taken.raw_input_contents, strict=True):
            array = prepared.inputs[t.name]
            assert list(t.shape) == list(array.shape) and t.datatype == "FP32"
            assert raw == array.tobytes(), f"input {t.name} differs from Python's"


TRANSLATOR_PARAMETERS = {
    "seqserve_schema": "1",
    "src_lang": "de",
    "tgt_lang": "en",
    "bos_id": "2",
    "eos_id": "3",
    "pad_id": "0",
    "max_source_tokens": "48",
    "max_target_tokens": "64",
    "default_beam_size": "4",
    "tokenizer": "spm.model",
    "num_layers": "1",
    "num_heads": "1",
    "head_dim": "4",
}


class _Translator:
    """What the Translate adapter needs of a translator model: its queue's capacity and
    `prepare`."""

    def __init__(self, builder: RequestBuilder) -> None:
        self.builder, self.queue_capacity = builder, 16

    def prepare(
        self,
        text: str,
        beam_size: int | None = None,
        max_length: int | None = None,
        length_penalty: float | None = None,
        num_hypotheses: int = 1,
    ) -> object:
        return self.builder.request(
            text, None, beam_size, max_length, length_penalty, num_hypotheses
        )


@cache
def _translator() -> _Translator:
    words = (
        "eins zwei drei vier fünf sechs sieben acht neun zehn hundert tausend und "
        "zwanzig dreißig vierzig fünfzig"
    ).split()
    sentences = [
        " ".join(words[(i * 7 + j) % len(words)] for j in range(i % 5 + 1)) for i in range(400)
    ]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=40,
        pad_id=0,
        unk_id=1,
        bos_id=2,
        eos_id=3,
        minloglevel=2,
    )
    config = mc.ModelConfig(backend="seqserve_translator", max_batch_size=16)
    for key, value in TRANSLATOR_PARAMETERS.items():
        config.parameters[key].string_value = value
    tokenizer = Tokenizer.from_bytes(model.getvalue())
    return _Translator(RequestBuilder(tokenizer, TranslatorSpec.from_config(config)))


def translate_request(data: bytes) -> None:
    """A TranslateRequest as the typed API gets it; its sentences also as V2 BYTES elements
    with V2 parameters made of its fields (what the V2 translator checks)."""
    try:
        msg = tpb.TranslateRequest.FromString(data)
    except DecodeError:
        return
    model = _translator()
    try:
        _prepare(model, msg)  # type: ignore[arg-type]
    except ServingError:
        pass
    params = {
        "beam_size": msg.beam_size,
        "max_length": msg.max_length,
        "length_penalty": msg.length_penalty,
        "n": msg.num_hypotheses,
    }
    try:
        settings = _decode_settings(params)
        for i, sentence in enumerate(msg.sentences):
            model.prepare(
                _text(sentence.encode("utf-8", "surrogatepass"), f"element {i}"), **settings
            )
    except ServingError:
        pass


@cache
def _version_folder() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="fuzz-config-")) / "m" / "1"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"")
    return folder


def model_config(data: bytes) -> None:
    """The bytes as config.pbtxt text and as a Load override's JSON."""
    text = data.decode("utf-8", "replace")
    folder = _version_folder()
    for parse in (
        lambda: text_format.Parse(text, mc.ModelConfig()),
        lambda: json_format.Parse(text, mc.ModelConfig()),
    ):
        try:
            config = parse()
        except (text_format.ParseError, json_format.ParseError, json.JSONDecodeError):
            continue
        try:
            check_config(config)
            path = version_file(folder, config.default_model_filename or "model.onnx", "file")
        except ModelLoadError:
            continue
        assert path.resolve().parent == folder.resolve()


def rest_request(data: bytes) -> None:
    """Byte 0 odd: bytes 1-2 (little endian) are the Inference-Header-Content-Length header,
    the rest the body; even: the rest is the body, without the header. Each model decodes it;
    what one takes is answered: its first input as its first output, JSON or binary."""
    if not data:
        return
    if data[0] & 1 and len(data) >= 3:
        header_length, body = str(int.from_bytes(data[1:3], "little")), data[3:]
    else:
        header_length, body = None, data[1:]
    for model in _models():
        try:
            decoded = rest_codec.decode(body, header_length, model)
            model.validate(decoded.request)
        except ServingError:
            continue
        first = next(iter(decoded.request.inputs.values()))
        try:
            rest_codec.encode(
                model, decoded.request.id, {next(iter(model.outputs)): first}, decoded
            )
        except ServingError:  # BYTES that are not UTF-8, asked for as JSON
            continue


TARGETS: dict[str, Callable[[bytes], None]] = {
    "v2_request": v2_request,
    "bytes_tensor": bytes_tensor,
    "forecast_request": forecast_request,
    "translate_request": translate_request,
    "model_config": model_config,
    "rest_request": rest_request,
}
