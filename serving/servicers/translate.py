"""`seqserve.translate.v1.Translator` adapter over the dataplane and the translator model."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from core.errors import InvalidInput
from core.translation import DecodeRequest, TranslationResult
from protos.seqserve.translate.v1 import translate_service_pb2 as pb
from protos.seqserve.translate.v1 import translate_service_pb2_grpc as pb_grpc
from serving.dataplane import DataPlane
from serving.models.base import ServedModel
from serving.models.translator import TranslatorModel

SERVICE_NAME = "seqserve.translate.v1.Translator"
# Sentences one request may carry when the model's queue is unbounded (max_queue_size 0).
# Past the decoder's rows (the config's max_batch_size) a request is not refused: its
# sentences queue as separate requests and decode as rows free up, answered in order.
MAX_SENTENCES = 4096


def _translator(model: ServedModel) -> TranslatorModel:
    if not isinstance(model, TranslatorModel):
        raise InvalidInput(f"model '{model.name}' is not a translator")
    return model


def _prepare(model: TranslatorModel, request: pb.TranslateRequest) -> list[DecodeRequest]:
    if not request.sentences:
        raise InvalidInput("sentences: at least one sentence is needed")
    cap = model.queue_capacity or MAX_SENTENCES
    if len(request.sentences) > cap:
        raise InvalidInput(
            f"sentences: {len(request.sentences)} in one request, at most {cap} (the model's "
            "queue); send them in several requests"
        )
    settings = {
        "beam_size": request.beam_size or None,
        "max_length": request.max_length or None,
        "length_penalty": (request.length_penalty if request.HasField("length_penalty") else None),
        "num_hypotheses": request.num_hypotheses or 1,
    }
    out = []
    for i, text in enumerate(request.sentences):
        try:
            out.append(model.prepare(text, **settings))
        except InvalidInput as err:
            raise InvalidInput(f"sentences[{i}]: {err}") from None
    return out


def _translation(result: TranslationResult) -> pb.Translation:
    return pb.Translation(
        hypotheses=[
            pb.Hypothesis(text=h.text, score=h.score, num_tokens=len(h.token_ids))
            for h in result.hypotheses
        ],
        num_source_tokens=result.num_source_tokens,
    )


class TranslatorServicer(pb_grpc.TranslatorServicer):
    def __init__(self, dataplane: DataPlane) -> None:
        self._dp = dataplane

    async def Translate(
        self, request: pb.TranslateRequest, context: grpc.aio.ServicerContext
    ) -> pb.TranslateResponse:
        async def call(model: ServedModel) -> list[TranslationResult]:
            translator = _translator(model)
            # The deadline bounds the wait for decoder rows too, as V2's timeout does.
            return await translator.translate(
                _prepare(translator, request), context.time_remaining()
            )

        model, results = await self._dp.run(request.model_name, request.model_version, call)
        return pb.TranslateResponse(
            model_name=model.name,
            model_version=str(model.version),
            translations=[_translation(r) for r in results],
        )

    async def TranslateStream(
        self, request: pb.TranslateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.TranslateChunk]:
        """Greedy decoding streamed piece by piece, one sentence after another."""

        async def call(model: ServedModel) -> AsyncIterator[pb.TranslateChunk]:
            translator = _translator(model)
            if request.beam_size > 1:
                raise InvalidInput("beam_size: streaming decodes greedily; use 0 or 1")
            request.beam_size = 1
            for index, prepared in enumerate(_prepare(translator, request)):
                async for item in translator.stream(prepared):
                    if isinstance(item, str):
                        yield pb.TranslateChunk(index=index, text=item)
                    else:
                        yield pb.TranslateChunk(index=index, done=True, score=item.score)

        async for chunk in self._dp.stream(request.model_name, request.model_version, call):
            yield chunk
