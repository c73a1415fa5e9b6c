"""A `seqserve_translator` model: tokenizer, encoder graph and cached decoder-step graph,
served with continuous (in-flight) batching at decoder-step granularity.

Two threads per model version, each with its own onnxruntime session, work as a pipeline:

    event loop --inbox--> encoder thread --ready--> decode thread --call_soon_threadsafe--> loop

The encoder thread takes every sentence waiting in the inbox, encodes them in one call and
hands the group on. The decode thread drives a `DecodeBatch` step after step without waiting
for the event loop: between two decoder steps, encoded groups join the batch (while rows are
free) and finished requests leave it at once, so a short sentence sent during a long one's
decoding finishes first. So the encoder of new sentences runs while the decoder steps the
others, on the second core, instead of stopping every row's decoding for it. Each step's
updates go back to the loop with one `call_soon_threadsafe`, where futures and stream queues
are served. Greedy requests may stream: each step's new text goes to the caller as it is
decoded.

Over the V2 protocol: input `text` BYTES [B, 1]; outputs `translation` BYTES [B, 1] and `score`
FP32 [B, 1]; request parameters `beam_size`, `max_length`, `length_penalty`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Hashable
from dataclasses import dataclass, replace
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
    EncodedSources,
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
    future: asyncio.Future[TranslationResult]  # resolved on the event loop only
    enqueued: float  # time.monotonic()
    pieces: asyncio.Queue | None = None  # streamed text, then _STREAM_END


@dataclass(eq=False)
class _Group:
    """Jobs the encoder thread encoded together, waiting to join the decode batch."""

    jobs: list[_Job]
    encoded: EncodedSources
    queued_ns: list[int]  # each job's time in the inbox
    encode_ns: int


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
        self._inbox: deque[_Job] = deque()  # loop thread appends, encoder thread pops
        self._ready: deque[_Group] = deque()  # encoder thread appends, decode thread pops
        self._ready_rows = 0  # rows of the groups in _ready (under _ready_lock)
        self._ready_lock = threading.Lock()
        self._open: set[_Job] = set()  # submitted and not answered (event loop side)
        self._ids = itertools.count()
        self._encode_work = threading.Event()  # wakes the encoder thread
        self._work = threading.Event()  # wakes the decode thread
        self._closing = False  # no new requests
        self._stopped = False  # every request answered: the threads end
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []
        self.steps = 0  # decoder steps run (tests and metrics read it)

    def start(self) -> None:
        metrics.announce(self)
        self._loop = asyncio.get_running_loop()
        self._threads = [
            threading.Thread(target=target, args=(self._loop,), name=f"{kind}-{self.name}",
                             daemon=True)
            for kind, target in (("encode", self._encoder_thread),
                                 ("decode", self._decode_thread))]
        for thread in self._threads:
            thread.start()

    @property
    def queue_size(self) -> int:
        """Requests not decoding yet: in the inbox, or encoded and waiting for free rows."""
        return len(self._inbox) + sum(len(g.jobs) for g in list(self._ready))

    # -- the API the adapters use ------------------------------------------------------------

    def prepare(self, text: str, beam_size: int | None = None, max_length: int | None = None,
                length_penalty: float | None = None, num_hypotheses: int = 1
                ) -> DecodeRequest:
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

    # -- the decode thread -----------------------------------------------------------------

    def _submit(self, request: DecodeRequest, stream: bool = False) -> _Job:
        if self._closing or not self._threads:
            raise ModelNotReady(f"model '{self.name}' is unloading")
        if stream:
            request = replace(request, stream=True)
        job = _Job(request, asyncio.get_running_loop().create_future(), time.monotonic(),
                   asyncio.Queue() if stream else None)
        self._open.add(job)
        job.future.add_done_callback(lambda _: self._open.discard(job))  # answered or cancelled
        self._inbox.append(job)
        self._encode_work.set()
        return job

    def _take(self) -> list[_Job]:
        """On the encoder thread: the waiting jobs, up to the rows the ready queue has room
        for (at least one job), cancelled ones dropped."""
        jobs: list[_Job] = []
        rows = self._ready_rows
        while self._inbox:
            job = self._inbox[0]
            if job.future.done():  # cancelled while waiting
                self._inbox.popleft()
                continue
            if jobs and rows + job.request.beam_size > self.max_rows:
                break
            self._inbox.popleft()
            rows += job.request.beam_size
            jobs.append(job)
        return jobs

    def _encoder_thread(self, loop: asyncio.AbstractEventLoop) -> None:
        """Encode what arrived, in one call, while the ready queue holds fewer than
        max_rows rows (so that memory stays bounded when the decoder falls behind)."""
        while True:
            if not self._inbox or self._ready_rows >= self.max_rows:
                if self._stopped:
                    return
                self._encode_work.wait()
                self._encode_work.clear()  # a set() after wait() returned is seen: re-read
                continue
            jobs = self._take()
            if not jobs:
                continue
            now = time.monotonic()
            queued = [int((now - j.enqueued) * 1e9) for j in jobs]
            t0 = time.perf_counter_ns()
            try:
                encoded = self.translator.encode([j.request for j in jobs])
            except Exception as exc:
                log.error("model '%s': encoding failed", self.name, exc_info=exc)
                loop.call_soon_threadsafe(self._fail, jobs)
                continue
            group = _Group(jobs, encoded, queued, time.perf_counter_ns() - t0)
            with self._ready_lock:
                self._ready.append(group)
                self._ready_rows += encoded.rows
            self._work.set()

    def _admit(self, batch: DecodeBatch, active: dict[Hashable, _Job]) -> list[_Group]:
        """On the decode thread: join encoded groups while the batch has rows free."""
        joined: list[_Group] = []
        rows = batch.rows
        while self._ready:
            group = self._ready[0]
            if rows and rows + group.encoded.rows > self.max_rows:
                break
            with self._ready_lock:
                self._ready.popleft()
                self._ready_rows -= group.encoded.rows
            self._encode_work.set()  # room in the ready queue again
            batch.join(group.encoded)
            rows += group.encoded.rows
            active.update((j.request.id, j) for j in group.jobs)
            joined.append(group)
        return joined

    def _decode_thread(self, loop: asyncio.AbstractEventLoop) -> None:
        """Admit, step, hand the updates to the event loop; sleep only when idle."""
        batch = self.translator.new_batch()
        active: dict[Hashable, _Job] = {}
        queued: list[int] = []  # queue times (ns) and executions not yet accounted
        executions: list[tuple[int, int, int, int]] = []  # rows, requests, input ns, infer ns
        while True:
            if not self._ready and not len(batch):
                if self._stopped:
                    return
                self._work.wait()
                self._work.clear()  # a set() after wait() returned is seen: the queue is re-read
                continue
            t0 = time.perf_counter_ns()
            try:
                joined = self._admit(batch, active)
                gone = [i for i, j in active.items() if j.future.done()]  # cancelled
                for i in gone:
                    del active[i]
                if gone:
                    batch.remove(gone)
                t1 = time.perf_counter_ns()
                rows = batch.rows
                updates = batch.step()
                t2 = time.perf_counter_ns()
            except Exception as exc:
                log.error("model '%s': decoding failed", self.name, exc_info=exc)
                failed = list(active.values())
                active.clear()
                batch = self.translator.new_batch()
                loop.call_soon_threadsafe(self._fail, failed)
                continue
            for group in joined:
                queued.extend(group.queued_ns)
            if not updates and not rows:
                continue
            self.steps += 1
            encode_ns = sum(g.encode_ns for g in joined)
            executions.append((rows, len(active), t1 - t0 + encode_ns, t2 - t1))
            # Only what a caller waits for wakes the event loop: finished requests and streamed
            # text. Waking it every step makes the two threads trade the GIL every step.
            delivered = [(active[u.id], u) for u in updates if u.id in active
                         and (u.finished or (u.text and active[u.id].pieces is not None))]
            for u in updates:
                if u.finished:
                    active.pop(u.id, None)
            if delivered or not len(batch):
                loop.call_soon_threadsafe(self._deliver, delivered, queued, executions)
                queued, executions = [], []

    def _deliver(self, delivered: list, queued: list[int],
                 executions: list[tuple[int, int, int, int]]) -> None:
        """On the event loop: account the steps, stream their text, answer finished requests."""
        labels = metrics.QUEUE_SECONDS.labels(self.name, str(self.version))
        for ns in queued:
            self.stats.queue.add(ns)
            labels.observe(ns / 1e9)
        for rows, requests, input_ns, infer_ns in executions:
            if rows:
                self.stats.record_execution(rows, requests, input_ns, infer_ns, 0)
        for job, update in delivered:
            if job.pieces is not None and update.text:
                job.pieces.put_nowait(update.text)
            if update.finished:
                if not job.future.done():
                    job.future.set_result(update.result)
                if job.pieces is not None:
                    job.pieces.put_nowait(_STREAM_END)

    def _fail(self, jobs: list[_Job]) -> None:
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(InferenceError("decoding failed"))
            if job.pieces is not None:
                job.pieces.put_nowait(_STREAM_END)

    async def drain_and_close(self) -> None:
        self._closing = True
        while self._open:  # every submitted request answered or cancelled
            await asyncio.sleep(0.01)
        self._stopped = True
        self._encode_work.set()
        self._work.set()
        for thread in self._threads:
            await asyncio.to_thread(thread.join)
        metrics.forget(self)
