"""A `seqserve_translator` model: the server-process side of a translator version.

Requests are tokenized and checked here (`RequestBuilder`). Decoding runs in the version's
engine process (`translator_engine.py`), whose encoder and decode threads batch continuously
at decoder-step granularity (`core.translation.pipeline`): a request joins the running
batch at the next step and leaves it as soon as it is finished. This side keeps the asyncio
futures and stream queues, accounts statistics and metrics from what the engine delivers, and
cancels requests whose callers went away. Greedy requests may stream: each step's new text
comes back as it is decoded.

If the engine process dies, or a watchdog thread kills it because it stopped (no heartbeat) or
wedged (requests held, no decoder step) for `--engine-stall-secs`, the requests it held fail
with UNAVAILABLE (retry; counted as BACKEND failures) and a new engine starts; requests that
arrive meanwhile get UNAVAILABLE too. Nothing here blocks the event loop on the engine.

Over the V2 protocol: input `text` BYTES [B, 1]; outputs `translation` BYTES [B, 1] and `score`
FP32 [B, 1]; request parameters `beam_size`, `max_length`, `length_penalty`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Hashable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from core.errors import (
    DeadlineExceeded,
    EngineFailed,
    InferenceError,
    InvalidInput,
    ModelNotReady,
    QueueFull,
)
from core.translation import (
    DecodeRequest,
    RequestBuilder,
    SpecError,
    TranslationResult,
)
from core.translation.pipeline import STEPS, WAITING, Delivery
from protos.inference import model_config_pb2 as mc
from serving import metrics
from serving.models.base import InferRequest, ServedModel
from serving.models.onnx_model import ModelLoadError
from serving.models.translator_engine import HEARTBEAT, EngineGone, EngineProcess
from serving.settings import Settings

log = logging.getLogger(__name__)

_STREAM_END = object()


@dataclass(eq=False)
class _Job:
    request: DecodeRequest
    future: asyncio.Future[TranslationResult]
    enqueued: float  # time.monotonic()
    pieces: asyncio.Queue | None = None  # streamed text, then _STREAM_END


def _decode_settings(params: dict) -> dict:
    out: dict = {}
    for key, kind in (("beam_size", int), ("max_length", int), ("length_penalty", float)):
        if key not in params:
            continue
        value = params[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (kind is int and not float(value).is_integer())
        ):
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
    """Loads `<version>/{encoder.onnx, decoder.onnx, tokenizer}` into an engine process."""

    def __init__(
        self, name: str, version: int, config: mc.ModelConfig, version_dir: Path, settings: Settings
    ) -> None:
        super().__init__(name, version, config)
        try:
            self.requests = RequestBuilder.load(version_dir, config)
        except (SpecError, OSError) as err:
            raise ModelLoadError(str(err)) from err
        self.max_rows = self.requests.spec.max_batch_size or 64
        # config.pbtxt `dynamic_batching { default_queue_policy { max_queue_size } }`: requests
        # allowed to wait for decoder rows (0 = unbounded, Triton's default).
        self.max_queue = config.dynamic_batching.default_queue_policy.max_queue_size
        self._engine_args = (version_dir, config, settings, self.max_rows, f"{name}-{version}")
        self.engine: EngineProcess | None = EngineProcess(*self._engine_args)
        log.info(
            "model '%s' version %d: engine process %d on %s",
            name,
            version,
            self.engine.process.pid,
            ", ".join(self.engine.providers),
        )
        self._jobs: dict[Hashable, _Job] = {}  # submitted, not answered or cancelled
        self._ids = itertools.count()
        self._closing = False  # no new requests
        self._loop: asyncio.AbstractEventLoop | None = None
        self._restart: asyncio.Task | None = None
        self._engine_state = "is restarting"  # what UNAVAILABLE says while there is none
        self._stall_s = settings.engine_stall_secs
        self._watchdog: threading.Thread | None = None
        self._watchdog_stop = threading.Event()
        self._stalled_pid: int | None = None  # the engine the watchdog killed
        self._restarts = {"exited": 0, "stalled": 0}

    def start(self) -> None:
        metrics.announce(self)
        self._loop = asyncio.get_running_loop()
        self._watch()
        if self._stall_s > 0:
            self._watchdog = threading.Thread(
                target=self._watch_for_stalls,
                daemon=True,
                name=f"watchdog-{self.name}-{self.version}",
            )
            self._watchdog.start()

    @property
    def steps(self) -> int:
        """Decoder steps the current engine has run (tests read it)."""
        return self.engine.counters[STEPS] if self.engine else 0

    @property
    def unavailable(self) -> str | None:
        if self.engine is None and not self._closing:
            return f"its engine process {self._engine_state}"
        return None

    @property
    def engine_pid(self) -> int | None:
        return self.engine.process.pid if self.engine else None

    @property
    def engine_restarts(self) -> dict[str, int]:
        return self._restarts

    @property
    def queue_size(self) -> int:
        """Requests not decoding yet: waiting to be encoded, or for free rows."""
        return self.engine.counters[WAITING] if self.engine else 0

    @property
    def queue_capacity(self) -> int:
        return self.max_queue

    def _waiting(self, new: Sequence[DecodeRequest]) -> int:
        """Requests that would wait for decoder rows with `new` added: those in flight beyond
        what the decode batch holds, in arrival order (the engine admits first come, first
        served). Counted here, not read from the engine, so that a burst is judged before the
        engine has seen it."""
        rows, waiting = 0, 0
        for request in itertools.chain((j.request for j in self._jobs.values()), new):
            rows += request.beam_size
            waiting += rows > self.max_rows
        return waiting

    # -- the API the adapters use ------------------------------------------------------------

    def prepare(
        self,
        text: str,
        beam_size: int | None = None,
        max_length: int | None = None,
        length_penalty: float | None = None,
        num_hypotheses: int = 1,
    ) -> DecodeRequest:
        """Tokenize and check one sentence (InvalidInput naming the limit when it is not ok)."""
        return self.requests.request(
            text, next(self._ids), beam_size, max_length, length_penalty, num_hypotheses
        )

    async def translate(
        self, requests: list[DecodeRequest], timeout_s: float | None = None
    ) -> list[TranslationResult]:
        """Decode requests; `timeout_s` is the longest each may wait before it starts decoding
        (V2 `timeout`, else the gRPC deadline): a request still waiting then fails with
        DeadlineExceeded, undecoded."""
        jobs = self._submit(requests, timeout_s)
        try:
            return list(await asyncio.gather(*(j.future for j in jobs)))
        except BaseException:
            for j in jobs:
                j.future.cancel()
            raise

    async def stream(self, request: DecodeRequest) -> AsyncIterator[str | TranslationResult]:
        """Yield text pieces as they are decoded, then the final result."""
        [job] = self._submit([replace(request, stream=True)])
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
        prepared = [
            self.prepare(_text(t, f"input 'text' element {i}"), **settings)
            for i, t in enumerate(texts)
        ]
        results = await self.translate(prepared, request.timeout_s)
        translation = np.empty((batch, 1), dtype=object)
        translation[:, 0] = [r.text.encode("utf-8") for r in results]
        score = np.array([[r.score] for r in results], np.float32)
        outputs = {"translation": translation, "score": score}
        return {n: outputs[n] for n in request.outputs} if request.outputs else outputs

    # -- talking to the engine ---------------------------------------------------------------

    def _submit(self, requests: list[DecodeRequest], timeout_s: float | None = None) -> list[_Job]:
        if self._closing:
            raise ModelNotReady(f"model '{self.name}' is unloading")
        if self.engine is None:
            raise ModelNotReady(f"model '{self.name}': its engine process {self._engine_state}")
        if self.max_queue and self._waiting(requests) > self.max_queue:
            raise QueueFull(
                f"model '{self.name}': queue full ({self.max_queue} requests "
                "waiting for decoder rows); retry after a back-off"
            )
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        deadline = now + timeout_s if timeout_s else None
        jobs = [
            _Job(r, loop.create_future(), now, asyncio.Queue() if r.stream else None)
            for r in requests
        ]
        try:
            self.engine.submit([(j.request, j.enqueued, deadline) for j in jobs])
        except EngineGone as err:
            raise ModelNotReady(f"model '{self.name}': {err}; it is restarting") from None
        for job in jobs:
            self._jobs[job.request.id] = job
            job.future.add_done_callback(lambda future, job=job: self._done(job, future))
        return jobs

    def _done(self, job: _Job, future: asyncio.Future) -> None:
        """Answered or cancelled: forget it, and when cancelled, tell the engine."""
        self._jobs.pop(job.request.id, None)
        if future.cancelled() and self.engine is not None:
            self.engine.cancel([job.request.id])

    def _watch(self) -> None:
        assert self._loop is not None and self.engine is not None
        self.engine.start_io(self._loop, self._on_message, self._on_gone)

    def _on_message(self, message: tuple[str, object]) -> None:
        """On the event loop: one message the engine sent (the reader thread received it)."""
        kind, payload = message
        if kind == "deliver":
            self._deliver(payload)  # type: ignore[arg-type]
        elif kind == "failed":
            self._fail(payload, InferenceError("decoding failed"))  # type: ignore[arg-type]
        elif kind == "expired":
            self._expire(payload)  # type: ignore[arg-type]

    def _on_gone(self, engine: EngineProcess) -> None:
        """On the event loop, once the engine's pipe has ended: fail what it held (UNAVAILABLE:
        the caller may retry), and start a new engine."""
        if engine is not self.engine:
            return
        self.engine = None
        lost = list(self._jobs)
        stalled = engine.process.pid == self._stalled_pid
        log.error(
            "model '%s' version %d: %s%s with %d request(s) in flight; they fail, and a "
            "new engine starts",
            self.name,
            self.version,
            engine.gone,
            " (killed: it stalled)" if stalled else "",
            len(lost),
        )
        self._fail(
            lost,
            EngineFailed(
                f"model '{self.name}': its engine process {'stalled' if stalled else 'exited'} "
                "with this request in flight and is restarting; retry"
            ),
        )
        if not self._closing:
            self._restarts["stalled" if stalled else "exited"] += 1
            self._engine_state = "is restarting"
            self._restart = asyncio.ensure_future(self._restart_engine())
            self.availability_changed()

    def _watch_for_stalls(self) -> None:
        """A thread (the event loop may be what is stuck): kill an engine that stops beating
        (the process is stopped or frozen) or that holds requests but runs no decoder step
        for `engine_stall_secs` (onnxruntime stuck). Its pipe then ends, and `_on_gone`
        fails what it held and starts a new one, as when it dies."""
        engine: EngineProcess | None = None
        beat = steps = -1
        beat_at = step_at = time.monotonic()
        while not self._watchdog_stop.wait(min(1.0, self._stall_s / 4)):
            now = time.monotonic()
            if self.engine is not engine:  # a new engine (or none): start over
                engine, beat, steps, beat_at, step_at = self.engine, -1, -1, now, now
            if engine is None or engine.gone is not None:
                continue
            if engine.counters[HEARTBEAT] != beat:
                beat, beat_at = engine.counters[HEARTBEAT], now
            if engine.counters[STEPS] != steps or not self._jobs:
                steps, step_at = engine.counters[STEPS], now
            silent, idle = now - beat_at, now - step_at
            if silent > self._stall_s or idle > self._stall_s:
                log.error(
                    "model '%s' version %d: engine process %d %s for %.0f s; killing it",
                    self.name,
                    self.version,
                    engine.process.pid,
                    "stopped beating"
                    if silent > self._stall_s
                    else f"ran no decoder step with {len(self._jobs)} request(s) in flight",
                    max(silent, idle),
                )
                self._stalled_pid = engine.process.pid
                engine.kill()
                beat_at = step_at = now

    async def _restart_engine(self) -> None:
        try:
            engine = await asyncio.to_thread(EngineProcess, *self._engine_args)
        except ModelLoadError as err:
            self._engine_state = f"did not restart ({err}); load the model again"
            log.error(
                "model '%s' version %d: the engine %s", self.name, self.version, self._engine_state
            )
            self.availability_changed()
            return
        if self._closing:
            await asyncio.to_thread(engine.stop)
            return
        self.engine = engine
        self._watch()
        log.info("model '%s' version %d: engine restarted", self.name, self.version)
        self.availability_changed()

    def _deliver(self, delivery: Delivery) -> None:
        """Account the steps, stream their text, answer finished requests."""
        labels = metrics.QUEUE_SECONDS.labels(self.name, str(self.version))
        for ns in delivery.queued_ns:
            self.stats.record_queue(ns)
            labels.observe(ns / 1e9)
        for rows, requests, input_ns, infer_ns in delivery.executions:
            if rows:
                self.stats.record_execution(rows, requests, input_ns, infer_ns, 0)
        for request_id, text, result in delivery.updates:
            job = self._jobs.get(request_id)
            if job is None:  # cancelled meanwhile
                continue
            if job.pieces is not None and text:
                job.pieces.put_nowait(text)
            if result is not None:
                if not job.future.done():
                    job.future.set_result(result)
                if job.pieces is not None:
                    job.pieces.put_nowait(_STREAM_END)

    def _fail(self, ids: list[Hashable], error: Exception) -> None:
        for request_id in ids:
            job = self._jobs.get(request_id)
            if job is None:
                continue
            if not job.future.done():
                job.future.set_exception(error)
            if job.pieces is not None:
                job.pieces.put_nowait(_STREAM_END)

    def _expire(self, expired: list[tuple[Hashable, float]]) -> None:
        for request_id, queued_s in expired:
            job = self._jobs.get(request_id)
            if job is None:
                continue
            if not job.future.done():
                job.future.set_exception(
                    DeadlineExceeded(
                        f"model '{self.name}': request timed out after {queued_s * 1e3:.1f} ms "
                        "in the queue"
                    )
                )
            if job.pieces is not None:
                job.pieces.put_nowait(_STREAM_END)

    def kill(self) -> None:
        self._watchdog_stop.set()
        if self.engine is not None:
            self.engine.kill()

    async def drain_and_close(self) -> None:
        self._closing = True
        while self._jobs:  # every submitted request answered or cancelled
            await asyncio.sleep(0.01)
        self._watchdog_stop.set()  # it watched the drain too
        if self._restart is not None:
            await self._restart
        engine, self.engine = self.engine, None
        if engine is not None:
            await asyncio.to_thread(engine.stop)
        metrics.forget(self)
