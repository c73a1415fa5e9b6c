"""Translation with a seqserve translator over any step backend: numpy and sentencepiece only.

A translator version folder (`<repo>/translator/<N>/`) holds `encoder.onnx`, `decoder.onnx`
and `spm.model`; `config.pbtxt` (backend "seqserve_translator") carries the special ids, limits
and cache geometry (`TranslatorSpec`).

Whole sentences:

    translator = Translator(step_model, tokenizer, spec)  # serving: `load_translator`
    [result] = translator.translate(["dreihundertzweiundvierzig"], beam_size=4)
    result.text, result.score, result.hypotheses  # n-best with scores

Step by step, for continuous batching and streaming (a server loop; see `batch.py`):

    batch = translator.new_batch()
    batch.add([translator.request(text, id=request_id, beam_size=1)])  # any time
    updates = batch.step()  # one decoder call for all rows; finished requests leave
    batch.remove([cancelled_id])
    batch.join(translator.encode(requests))  # encode on one thread, join on the batch's

Errors: `SourceTooLong` and `BadDecodingSetting` are `core.errors.InvalidInput`;
`SpecError` / `GraphError` mean the version folder cannot be served (a load error).
"""

from core.translation.batch import (
    DecodeBatch,
    DecodeRequest,
    EncodedSources,
    StepUpdate,
    TranslationResult,
)
from core.translation.errors import BadDecodingSetting, SourceTooLong
from core.translation.graphs import GraphError, StepModel
from core.translation.search import Hypothesis
from core.translation.spec import BACKEND, SpecError, TranslatorSpec, read_config
from core.translation.tokenizer import Tokenizer
from core.translation.translator import RequestBuilder, Translator

__all__ = [
    "BACKEND",
    "BadDecodingSetting",
    "DecodeBatch",
    "DecodeRequest",
    "EncodedSources",
    "GraphError",
    "Hypothesis",
    "RequestBuilder",
    "SourceTooLong",
    "SpecError",
    "StepModel",
    "StepUpdate",
    "Tokenizer",
    "TranslationResult",
    "Translator",
    "TranslatorSpec",
    "read_config",
]
