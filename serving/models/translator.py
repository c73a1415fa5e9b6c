"""A `seqserve_translator` model: tokenizer, encoder graph and cached decoder-step graph,
served with continuous (in-flight) batching at decoder-step granularity.

One decode loop per model version drives a `DecodeBatch` on a worker thread. Between two
decoder steps, newly arrived sentences join the batch (their encoder runs then) and finished
ones leave it at once, so a short sentence sent during a long one's decoding finishes first.
Greedy requests may stream: each step's new text goes to the caller as it is decoded.

Over the V2 protocol: input `text` BYTES [B, 1]; outputs `translation` BYTES [B, 1] and `score`
FP32 [B, 1]; request parameters `beam_size`, `max_length`, `length_penalty`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protos.inference import model_config_pb2 as mc
from serving import metrics
from serving.errors import InferenceError, InvalidInput, ModelNotReady
from serving.models.base import InferRequest, ServedModel
from serving.models.onnx_model import PROVIDERS, ModelLoadError, device_for, session_options
from serving.settings import Settings
from serving.translation import (
    DecodeBatch,
    DecodeRequest,
    GraphError,
    SpecError,
    TranslationResult,
    Translator,
)

log = logging.getLogger(__name__)

_STREAM_END = object()


@dataclass(eq=False)
class _Job:
    request: DecodeRequest
    future: asyncio.Future[TranslationResult]
    enqueued: float
    pieces: asyncio.Queue | None = None  # streamed text, then _STREAM_END


def _decode_settings(params: dict) -> dict:
    out: dict = {}
    for key, kind in (("beam_size", int), ("max_length", int), ("length_penalty", float)):
        if key not in params:
            continue
        value = params[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or (
                kind is int and not float(value).is_integer()):
            raise InvalidInput(f"parameter '{key}': expected a number, got {value!r}")
        out[key] = kind(value)
    return out


def _text(item: object, where: str) -> str:
    if isinstance(item, str):
        return item
    try:
        return bytes(item).decode("utf-8")  # type: ignore[call-overload]
    except UnicodeDecodeError as err:
        raise InvalidInput(f"{where}: not valid UTF-8 (byte {err.start})") from None


class TranslatorModel(ServedModel):
    """Loads `<version>/{encoder.onnx, decoder.onnx, tokenizer}`."""

    def __init__(self, name: str, version: int, config: mc.ModelConfig, version_dir: Path,
                 settings: Settings) -> None:
        super().__init__(name, version, config)
        providers = PROVIDERS[device_for(config, settings)]
        try:
            self.translator = Translator.load(version_dir, config,
                                              session_options(config, settings), providers)
            self.translator.translate(["warm up"], beam_size=1, max_length=2)
        except (SpecError, GraphError, OSError) as err:
            raise ModelLoadError(str(err)) from err
        except Exception as err:
            raise ModelLoadError(f"warm-up translation failed: {err}") from err
        spec = self.translator.spec
        self.max_rows = spec.max_batch_size or 64
        self._waiting: deque[_Job] = deque()
        self._jobs: dict[Hashable, _Job] = {}
        self._ids = itertools.count()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"decode-{name}")
        self._closing = False
        self._wake: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None
        self.steps = 0  # decoder steps run (tests and metrics read it)

    def start(self) -> None:
        metrics.announce(self)
        self._wake = asyncio.Event()
        self._loop_task = asyncio.get_running_loop().create_task(
            self._decode_loop(), name=f"decode-{self.name}")

    @property
    def queue_size(self) -> int:
        return len(self._waiting)

    # -- the API the adapters use ------------------------------------------------------------

    def prepare(self, text: str, beam_size: int | None = None, max_length: int | None = None,
                length_penalty: float = 0.0, num_hypotheses: int = 1) -> DecodeRequest:
        """Tokenize and check one sentence (InvalidInput naming the limit when it is not ok)."""
        return self.translator.request(text, next(self._ids), beam_size, max_length,
                                       length_penalty, num_hypotheses)

    async def translate(self, requests: list[DecodeRequest]) -> list[TranslationResult]:
        jobs = [self._submit(r) for r in requests]
        try:
            return list(await asyncio.gather(*(j.future for j in jobs)))
        except BaseException:
            for j in jobs:
                j.future.cancel()
            raise

    async def stream(self, request: DecodeRequest) -> AsyncIterator[str | TranslationResult]:
        """Yield text pieces as they are decoded, then the final result."""
        job = self._submit(request, stream=True)
        assert job.pieces is not None
        try:
            while (piece := await job.pieces.get()) is not _STREAM_END:
                yield piece
            yield await job.future
        finally:
            job.future.cancel()

    async def infer(self, request: InferRequest) -> dict[str, np.ndarray]:
        batch = self.validate(request)
        texts = request.inputs["text"].reshape(-1)
        settings = _decode_settings(request.parameters)
        prepared = [self.prepare(_text(t, f"input 'text' element {i}"), **settings)
                    for i, t in enumerate(texts)]
        results = await self.translate(prepared)
        translation = np.empty((batch, 1), dtype=object)
        translation[:, 0] = [r.text.encode("utf-8") for r in results]
        score = np.array([[r.score] for r in results], np.float32)
        outputs = {"translation": translation, "score": score}
        return {n: outputs[n] for n in request.outputs} if request.outputs else outputs

    # -- the decode loop -------------------------------------------------------------------

    def _submit(self, request: DecodeRequest, stream: bool = False) -> _Job:
        if self._closing or self._wake is None:
            raise ModelNotReady(f"model '{self.name}' is unloading")
        loop = asyncio.get_running_loop()
        job = _Job(request, loop.create_future(), loop.time(),
                   asyncio.Queue() if stream else None)
        self._waiting.append(job)
        self._wake.set()
        return job

    def _admit(self, batch: DecodeBatch, now: float) -> list[DecodeRequest]:
        joining, rows = [], batch.rows
        while self._waiting:
            job = self._waiting[0]
            if job.future.done():  # cancelled while waiting
                self._waiting.popleft()
                continue
            if rows and rows + job.request.beam_size > self.max_rows:
                break
            self._waiting.popleft()
            rows += job.request.beam_size
            joining.append(job.request)
            self._jobs[job.request.id] = job
            queued = int((now - job.enqueued) * 1e9)
            self.stats.queue.add(queued)
            metrics.QUEUE_SECONDS.labels(self.name, str(self.version)).observe(queued / 1e9)
        return joining

    def _step(self, batch: DecodeBatch, joining: list[DecodeRequest], gone: list[Hashable]
              ) -> tuple[list, int, int, int]:
        """On the decode thread: drop cancelled rows, add new ones (encoder), one step."""
        t0 = time.perf_counter_ns()
        if gone:
            batch.remove(gone)
        batch.add(joining)
        t1 = time.perf_counter_ns()
        rows = batch.rows
        updates = batch.step()
        return updates, rows, t1 - t0, time.perf_counter_ns() - t1

    async def _decode_loop(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        batch = self.translator.new_batch()
        while True:
            if not self._waiting and not len(batch):
                self._wake.clear()
                await self._wake.wait()
            joining = self._admit(batch, loop.time())
            gone = [i for i, j in self._jobs.items() if j.future.done()]
            for i in gone:
                del self._jobs[i]
            if not joining and not len(batch) and not gone:
                continue
            try:
                updates, rows, input_ns, infer_ns = await loop.run_in_executor(
                    self._pool, self._step, batch, joining, gone)
            except Exception as exc:
                log.error("model '%s': decoding failed", self.name, exc_info=exc)
                for job in self._jobs.values():
                    if not job.future.done():
                        job.future.set_exception(InferenceError("decoding failed"))
                self._jobs.clear()
                batch = self.translator.new_batch()
                continue
            self.steps += 1
            if rows:
                self.stats.record_execution(rows, len(self._jobs), input_ns, infer_ns, 0)
            for update in updates:
                job = self._jobs.get(update.id)
                if job is None:
                    continue
                if job.pieces is not None and update.text:
                    job.pieces.put_nowait(update.text)
                if update.finished:
                    del self._jobs[update.id]
                    if not job.future.done():
                        job.future.set_result(update.result)
                    if job.pieces is not None:
                        job.pieces.put_nowait(_STREAM_END)

    async def drain_and_close(self) -> None:
        self._closing = True
        while self._waiting or self._jobs:
            await asyncio.sleep(0.01)
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        self._pool.shutdown(wait=True)
        metrics.forget(self)
