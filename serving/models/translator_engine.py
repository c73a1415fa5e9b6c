"""The translator's engine process: a served translator version decodes in a child process
of its own, as TGI's and vLLM's engines do, and the server process talks to it over a pipe.

Why a process: the decode thread runs Python between two decoder calls (search, cache
bookkeeping), and in the server process it waited for the GIL behind the gRPC event loop two
or three times per step. In a process of its own it shares the GIL only with its encoder
thread, which is almost always inside onnxruntime (docs/benchmarks.md, "The translator's
engine process").

    server process (asyncio)                     engine process (spawned)
    EngineProcess.submit / cancel -> writer thread  ---->  reader (main thread) -> Pipeline
    on_message (event loop) <- reader thread       <----  Pipeline's deliver / fail, threads
    EngineProcess.counters (shared memory: decoder steps, requests waiting, heartbeat)

The event loop never touches the pipe: a stopped engine fills it, and a blocking send or a
half-written message read on the loop would stall every RPC of the server. The writer thread
sends what `submit` and `cancel` queue; the reader thread receives whole messages and hands
them to the loop, and when the pipe ends it finds out why (a join that may take a second) and
reports that. The watchdog that kills a stopped or wedged engine is a thread as well
(`serving.models.translator`).

Messages are pickled tuples (both ends are seqserve): to the engine ("submit", [(request,
arrival time, queue deadline or None)]), ("cancel", [ids]), ("stop", None); from it ("ready",
providers), ("error", message), ("deliver", Delivery), ("failed", ids), ("expired",
[(id, seconds queued)]). The engine exits on "stop", or when the server process goes away
(end of file on the pipe). It ignores SIGINT and SIGTERM: a signal sent to the whole process
group (systemd's default, `kill -TERM -PGID`, Ctrl-C) is the server's to act on; the server
drains its calls, then stops the engine.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import queue
import signal
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from core.translation import DecodeRequest, GraphError, SpecError, Translator
from core.translation.pipeline import Pipeline
from protos.inference import model_config_pb2 as mc
from serving.models import onnx_step_model
from serving.models.onnx_model import (
    ModelLoadError,
    check_providers,
    providers_for,
    session_options,
)
from serving.settings import Settings

log = logging.getLogger(__name__)

START_TIMEOUT_S = 300.0  # spawn, imports, sessions and warm-up
STOP_TIMEOUT_S = 10.0
HEARTBEAT, HEARTBEAT_S = 2, 0.25  # counters[HEARTBEAT] goes up every HEARTBEAT_S while alive


class EngineGone(Exception):
    """The engine process exited (or its pipe broke) while the server still needed it."""


def load_translator(version_dir: Path, config: mc.ModelConfig, settings: Settings) -> Translator:
    """Sessions on the configured device and threads, warmed up; ModelLoadError naming the
    problem otherwise."""
    wanted, usable = providers_for(config, settings)
    try:
        translator = onnx_step_model.load_translator(
            version_dir, config, session_options(config, settings), usable
        )
        for part, got in translator.model.providers_by_part.items():
            check_providers(got, wanted, settings, f"{version_dir} {part}")
        translator.translate(["warm up"], beam_size=1, max_length=2)
    except ModelLoadError:
        raise
    except (SpecError, GraphError, OSError) as err:
        raise ModelLoadError(str(err)) from err
    except Exception as err:
        raise ModelLoadError(f"warm-up translation failed: {err}") from err
    return translator


def _engine_main(
    conn: Connection,
    version_dir: Path,
    config_bytes: bytes,
    settings: Settings,
    max_rows: int,
    counters: Any,
    label: str,
) -> None:
    """The engine process's entry point."""
    for sig in (signal.SIGINT, signal.SIGTERM):  # group signals: the server drains, then
        signal.signal(sig, signal.SIG_IGN)  # stops us
    logging.basicConfig(
        level=settings.log_level,
        format=f"%(asctime)s %(levelname)s [{label} engine] %(name)s: %(message)s",
    )
    send_lock = threading.Lock()

    def send(message: tuple) -> None:
        try:
            with send_lock:
                conn.send(message)
        except OSError:  # the server process is gone; the reader below sees the pipe close
            pass

    try:
        translator = load_translator(version_dir, mc.ModelConfig.FromString(config_bytes), settings)
    except ModelLoadError as err:
        send(("error", str(err)))
        return
    pipeline = Pipeline(
        translator,
        max_rows,
        lambda d: send(("deliver", d)),
        lambda ids: send(("failed", ids)),
        lambda expired: send(("expired", expired)),
        counters,
    )
    pipeline.start()

    def beat() -> None:  # stops when the process does (SIGSTOP): the watchdog sees that
        while True:
            counters[HEARTBEAT] += 1
            time.sleep(HEARTBEAT_S)

    threading.Thread(target=beat, name="heartbeat", daemon=True).start()
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
    (call it on a worker thread); then `start_io` hands the pipe to two threads, and nothing
    the event loop calls blocks."""

    def __init__(
        self,
        version_dir: Path,
        config: mc.ModelConfig,
        settings: Settings,
        max_rows: int,
        label: str,
    ) -> None:
        context = mp.get_context("spawn")  # the server has threads: never fork
        self._conn, child = context.Pipe()
        # pipeline.STEPS, pipeline.WAITING, HEARTBEAT
        self.counters = context.Array("q", 3, lock=False)
        self.process = context.Process(
            target=_engine_main,
            name=f"seqserve-engine-{label}",
            daemon=True,
            args=(
                child,
                version_dir,
                config.SerializeToString(),
                settings,
                max_rows,
                self.counters,
                label,
            ),
        )
        self.process.start()
        child.close()  # so that the engine's exit reads as end of file here
        self._outbox: queue.SimpleQueue[tuple | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self.gone: str | None = None  # why the engine exited, once the reader saw it
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            self._conn.close()
            raise

    def _wait_ready(self) -> None:
        if not self._conn.poll(START_TIMEOUT_S):
            raise ModelLoadError(f"the engine process did not start in {START_TIMEOUT_S:.0f} s")
        try:
            kind, payload = self._conn.recv()
        except (EOFError, OSError):
            self.process.join(STOP_TIMEOUT_S)
            raise ModelLoadError(
                f"the engine process exited while loading (exit code {self.process.exitcode})"
            ) from None
        if kind == "error":
            raise ModelLoadError(payload)
        self.providers: list[str] = payload

    def start_io(
        self,
        loop: asyncio.AbstractEventLoop,
        on_message: Callable[[tuple[str, Any]], None],
        on_gone: Callable[[EngineProcess], None],
    ) -> None:
        """Run the pipe on two threads: messages from the engine reach `on_message` on the
        loop, in order; once the pipe has ended (the engine exited, was killed, or stopped),
        `gone` says why and `on_gone(self)` runs on the loop."""

        def read() -> None:
            try:
                while True:
                    message = self._conn.recv()
                    loop.call_soon_threadsafe(on_message, message)
            except (EOFError, OSError):
                pass
            self.process.join(1.0)  # off the loop: the exit code, if it is there yet
            code = self.process.exitcode
            self.gone = "the translation engine process exited" + (
                f" (exit code {code})" if code is not None else ""
            )
            self._outbox.put(None)  # the writer ends too (a send to a dead engine fails)
            writer.join(STOP_TIMEOUT_S)
            self._conn.close()  # ours alone now
            try:
                loop.call_soon_threadsafe(on_gone, self)
            except RuntimeError:  # the loop is closed: the server is gone
                pass

        def write() -> None:
            while (message := self._outbox.get()) is not None:
                try:
                    self._conn.send(message)
                except (OSError, ValueError):  # the engine is gone: the reader reports it
                    return

        pid = self.process.pid
        writer = threading.Thread(target=write, name=f"engine-{pid}-writer", daemon=True)
        self._threads = [
            writer,
            threading.Thread(target=read, name=f"engine-{pid}-reader", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, requests: Sequence[tuple[DecodeRequest, float, float | None]]) -> None:
        """Queue requests for the engine (never blocks; the writer thread sends them)."""
        if self.gone is not None:
            raise EngineGone(self.gone)
        self._outbox.put(("submit", list(requests)))

    def cancel(self, ids: Sequence[Hashable]) -> None:
        if self.gone is None:
            self._outbox.put(("cancel", list(ids)))

    def stop(self) -> None:
        """Ask the engine to exit once idle and wait for it, then for the pipe's threads
        (blocking: use a thread). A stopped or wedged engine is killed after STOP_TIMEOUT_S."""
        self._outbox.put(("stop", None))
        self.process.join(STOP_TIMEOUT_S)
        self.kill()
        for thread in self._threads:
            thread.join(STOP_TIMEOUT_S)
        if not self._threads:  # the pipe was never handed over
            self._conn.close()

    def kill(self) -> None:
        """SIGKILL (a stopped process dies too); the reader then sees the pipe end."""
        if self.process.is_alive():
            self.process.kill()
            self.process.join(STOP_TIMEOUT_S)
