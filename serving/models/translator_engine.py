"""The translator's engine process: a served translator version decodes in a child process
of its own, as TGI's and vLLM's engines do, and the server process talks to it over a pipe.

Why a process: the decode thread runs Python between two decoder calls (search, cache
bookkeeping), and in the server process it waited for the GIL behind the gRPC event loop two
or three times per step. In a process of its own it shares the GIL only with its encoder
thread, which is almost always inside onnxruntime (docs/benchmarks.md, "The translator's
engine process").

    server process (asyncio)              engine process (spawned)
    EngineProcess.submit / cancel  ---->  reader (main thread) -> Pipeline.submit / cancel
    EngineProcess.receive          <----  Pipeline's deliver / fail, from its two threads
    EngineProcess.counters (shared memory: decoder steps, requests waiting)

Messages are pickled tuples (both ends are seqserve): to the engine ("submit", [(request,
arrival time, queue deadline or None)]), ("cancel", [ids]), ("stop", None); from it ("ready",
providers), ("error", message), ("deliver", Delivery), ("failed", ids), ("expired",
[(id, seconds queued)]). The engine exits on "stop", or when the
server process goes away (end of file on the pipe).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import threading
from collections.abc import Hashable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from protos.inference import model_config_pb2 as mc
from serving.models.onnx_model import (
    ModelLoadError,
    check_providers,
    providers_for,
    session_options,
)
from serving.settings import Settings
from serving.translation import DecodeRequest, GraphError, SpecError, Translator
from serving.translation.pipeline import Pipeline

log = logging.getLogger(__name__)

START_TIMEOUT_S = 300.0  # spawn, imports, sessions and warm-up
STOP_TIMEOUT_S = 10.0


class EngineGone(Exception):
    """The engine process exited (or its pipe broke) while the server still needed it."""


def load_translator(version_dir: Path, config: mc.ModelConfig, settings: Settings
                    ) -> Translator:
    """Sessions on the configured device and threads, warmed up; ModelLoadError naming the
    problem otherwise."""
    wanted, usable = providers_for(config, settings)
    try:
        translator = Translator.load(version_dir, config, session_options(config, settings),
                                     usable)
        for part, session in (("encoder", translator.model.encoder),
                              ("decoder", translator.model.decoder)):
            check_providers(session.get_providers(), wanted, settings, f"{version_dir} {part}")
        translator.translate(["warm up"], beam_size=1, max_length=2)
    except ModelLoadError:
        raise
    except (SpecError, GraphError, OSError) as err:
        raise ModelLoadError(str(err)) from err
    except Exception as err:
        raise ModelLoadError(f"warm-up translation failed: {err}") from err
    return translator


def _engine_main(conn: Connection, version_dir: Path, config_bytes: bytes, settings: Settings,
                 max_rows: int, counters: Any, label: str) -> None:
    """The engine process's entry point."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the server drains, then stops us
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s "
                        f"[{label} engine] %(name)s: %(message)s")
    send_lock = threading.Lock()

    def send(message: tuple) -> None:
        try:
            with send_lock:
                conn.send(message)
        except OSError:  # the server process is gone; the reader below sees the pipe close
            pass

    try:
        translator = load_translator(version_dir, mc.ModelConfig.FromString(config_bytes),
                                     settings)
    except ModelLoadError as err:
        send(("error", str(err)))
        return
    pipeline = Pipeline(translator, max_rows, lambda d: send(("deliver", d)),
                        lambda ids: send(("failed", ids)),
                        lambda expired: send(("expired", expired)), counters)
    pipeline.start()
    send(("ready", translator.model.providers))
    while True:
        try:
            kind, payload = conn.recv()
        except (EOFError, OSError):
            break
        if kind == "submit":
            pipeline.submit(payload)
        elif kind == "cancel":
            pipeline.cancel(payload)
        else:  # "stop"
            break
    pipeline.stop()


class EngineProcess:
    """The server's handle on one engine process. Starting blocks until the engine is ready
    (call it on a worker thread); the rest runs on the event loop."""

    def __init__(self, version_dir: Path, config: mc.ModelConfig, settings: Settings,
                 max_rows: int, label: str) -> None:
        context = mp.get_context("spawn")  # the server has threads: never fork
        self._conn, child = context.Pipe()
        self.counters = context.Array("q", 2, lock=False)  # pipeline.STEPS, pipeline.WAITING
        self.process = context.Process(
            target=_engine_main, name=f"seqserve-engine-{label}", daemon=True,
            args=(child, version_dir, config.SerializeToString(), settings, max_rows,
                  self.counters, label))
        self.process.start()
        child.close()  # so that the engine's exit reads as end of file here
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self) -> None:
        if not self._conn.poll(START_TIMEOUT_S):
            raise ModelLoadError(f"the engine process did not start in {START_TIMEOUT_S:.0f} s")
        try:
            kind, payload = self._conn.recv()
        except (EOFError, OSError):
            self.process.join(STOP_TIMEOUT_S)
            raise ModelLoadError(f"the engine process exited while loading (exit code "
                                 f"{self.process.exitcode})") from None
        if kind == "error":
            raise ModelLoadError(payload)
        self.providers: list[str] = payload
        self.gone: str | None = None  # why the engine exited, once it has

    def fileno(self) -> int:
        """Readable when the engine sent something (or exited): for loop.add_reader."""
        return self._conn.fileno()

    def receive(self) -> list[tuple[str, Any]]:
        """Every message waiting, without blocking. When the engine has exited, `gone` says
        why (after the messages it sent before)."""
        messages = []
        try:
            while self._conn.poll():
                messages.append(self._conn.recv())
        except (EOFError, OSError):
            self.gone = self._exit_reason()
        return messages

    def submit(self, requests: Sequence[tuple[DecodeRequest, float, float | None]]) -> None:
        self._send(("submit", list(requests)))

    def cancel(self, ids: Sequence[Hashable]) -> None:
        self._send(("cancel", list(ids)))

    def _send(self, message: tuple) -> None:
        try:
            self._conn.send(message)
        except OSError:
            raise EngineGone(self._exit_reason()) from None

    def _exit_reason(self) -> str:
        self.process.join(1.0)
        code = self.process.exitcode
        return ("the translation engine process exited" +
                (f" (exit code {code})" if code is not None else ""))

    def stop(self) -> None:
        """Ask the engine to exit once idle and wait for it (blocking: use a thread)."""
        try:
            self._conn.send(("stop", None))
        except OSError:
            pass
        self.process.join(STOP_TIMEOUT_S)
        self.kill()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
            self.process.join(STOP_TIMEOUT_S)
        self._conn.close()
