"""An `onnxruntime_onnx` model: one onnxruntime session per instance, behind a batcher."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from core.config_checks import version_file
from core.errors import FailureReason, InvalidInput, ModelLoadError
from protos.inference import model_config_pb2 as mc
from serving import metrics
from serving.batcher import Batcher, BatchPolicy, Tensors
from serving.models.base import InferRequest, ServedModel, TensorSpec
from serving.settings import Device, FallbackPolicy, Settings
from serving.stats import ModelStats
from serving.tensors import DTYPES, ORT_TO_V2

log = logging.getLogger(__name__)
ort.set_default_logger_severity(4)  # failures are raised and logged by seqserve itself

PROVIDERS = {
    Device.CPU: ["CPUExecutionProvider"],
    Device.CUDA: ["CUDAExecutionProvider", "CPUExecutionProvider"],
}

# config.pbtxt `optimization { graph { level } }` as Triton's onnxruntime backend maps it.
GRAPH_LEVELS = {
    -1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    0: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    1: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    2: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}


# The native fast path's refusals at admission, by kind, as the Python path counts them.
NATIVE_REFUSALS = {"queue_full": FailureReason.REJECTED, "unloading": FailureReason.OTHER}


def device_for(config: mc.ModelConfig, settings: Settings) -> Device:
    kinds = {g.kind for g in config.instance_group}
    if mc.ModelInstanceGroup.KIND_GPU in kinds:
        return Device.CUDA
    if mc.ModelInstanceGroup.KIND_CPU in kinds:
        return Device.CPU
    return settings.device


def session_options(config: mc.ModelConfig, settings: Settings) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    params = config.parameters
    intra = (
        params["intra_op_thread_count"].string_value
        if "intra_op_thread_count" in params
        else settings.intra_op_threads
    )
    inter = (
        params["inter_op_thread_count"].string_value
        if "inter_op_thread_count" in params
        else settings.inter_op_threads
    )
    opts.intra_op_num_threads = int(intra)
    opts.inter_op_num_threads = int(inter)
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = GRAPH_LEVELS.get(
        config.optimization.graph.level, ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    )
    opts.log_severity_level = 4  # as above: no duplicate, unstructured stderr lines
    return opts


_cuda_preloaded = False


def providers_for(config: mc.ModelConfig, settings: Settings) -> tuple[list[str], list[str]]:
    """(wanted, usable): the providers a model asks for, most preferred first, and those of them
    this onnxruntime build has. Fails at once when the preferred one is missing and
    --device-fallback is fail. For CUDA with onnxruntime-gpu it first loads the CUDA and cuDNN
    libraries of the `nvidia-*` wheels (`seqserve[serve-gpu]`), once per process, so that no
    LD_LIBRARY_PATH is needed."""
    global _cuda_preloaded
    device = device_for(config, settings)
    if device is not settings.device:
        log.warning(
            "model '%s': its config.pbtxt pins instance_group kind %s, so it runs on "
            "%s, not on --device %s",
            config.name,
            "KIND_GPU" if device is Device.CUDA else "KIND_CPU",
            device.value,
            settings.device.value,
        )
    if device is Device.CUDA and not _cuda_preloaded and hasattr(ort, "preload_dlls"):
        _cuda_preloaded = True
        ort.preload_dlls()
    wanted, available = PROVIDERS[device], ort.get_available_providers()
    if wanted[0] not in available and settings.device_fallback is FallbackPolicy.FAIL:
        hint = (
            "; for CUDA install onnxruntime-gpu (pip install 'seqserve[serve-gpu]') "
            "instead of onnxruntime"
            if device is Device.CUDA
            else ""
        )
        raise ModelLoadError(
            f"{wanted[0]} is not available in this onnxruntime build "
            f"(available: {', '.join(available)}){hint}"
        )
    return wanted, [p for p in wanted if p in available]


def check_providers(got: list[str], wanted: list[str], settings: Settings, what: str) -> None:
    """A session that did not get `wanted[0]` fails the load or warns, per --device-fallback."""
    if got[:1] == wanted[:1]:
        return
    message = f"{what}: asked for {wanted[0]}, the session got {', '.join(got) or 'nothing'}"
    if settings.device_fallback is FallbackPolicy.FAIL:
        raise ModelLoadError(message + " (serve with --device-fallback warn to accept)")
    log.warning("%s", message)


def create_session(path: Path, config: mc.ModelConfig, settings: Settings) -> ort.InferenceSession:
    """A session on the provider asked for; a fallback fails or warns, never silently."""
    wanted, usable = providers_for(config, settings)
    try:
        session = ort.InferenceSession(
            str(path), session_options(config, settings), providers=usable
        )
    except Exception as err:
        raise ModelLoadError(f"onnxruntime cannot load {path.name}: {err}") from err
    check_providers(session.get_providers(), wanted, settings, f"model file {path}")
    return session


def run_bound(
    session: ort.InferenceSession, feeds: Mapping[str, np.ndarray], outputs: Sequence[str]
) -> list[np.ndarray]:
    """`session.run` through IO binding: onnxruntime copies the host inputs to the session's
    device and the outputs back. On CUDA this took 17-24% off a forecaster call against `run`
    (docs/benchmarks.md, "CUDA on an H100"); on the CPU it only adds work."""
    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_cpu_input(name, array)
    for name in outputs:
        binding.bind_output(name, "cpu")
    session.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()


def check_signature(
    session: ort.InferenceSession,
    config: mc.ModelConfig,
    inputs: dict[str, TensorSpec],
    outputs: dict[str, TensorSpec],
) -> None:
    """The config's declared tensors must match the graph's names, types and dims."""
    batching = config.max_batch_size > 0

    def compare(kind: str, spec: TensorSpec, node: ort.NodeArg) -> None:
        got = ORT_TO_V2.get(node.type, node.type)
        if got != spec.datatype:
            raise ModelLoadError(
                f"{kind} '{spec.name}': config says {spec.datatype}, the graph has {got}"
            )
        shape = list(node.shape)
        if batching:
            if not shape or (isinstance(shape[0], int) and shape[0] != -1):
                raise ModelLoadError(
                    f"{kind} '{spec.name}': max_batch_size > 0 needs a "
                    f"dynamic first dimension, the graph has {shape}"
                )
            shape = shape[1:]
        graph = [d if isinstance(d, int) else -1 for d in shape]
        fits = len(graph) == len(spec.dims) and all(
            g == c or g == -1 for g, c in zip(graph, spec.dims, strict=True)
        )
        if not fits:
            raise ModelLoadError(
                f"{kind} '{spec.name}': config dims {list(spec.dims)} do not "
                f"match the graph's {graph}"
            )

    graph_inputs = {n.name: n for n in session.get_inputs()}
    graph_outputs = {n.name: n for n in session.get_outputs()}
    for spec in inputs.values():
        if spec.name not in graph_inputs:
            raise ModelLoadError(
                f"input '{spec.name}' is not in the graph (it has: {', '.join(graph_inputs)})"
            )
        compare("input", spec, graph_inputs[spec.name])
    undeclared = sorted(set(graph_inputs) - set(inputs))
    if undeclared:
        raise ModelLoadError(f"graph input '{undeclared[0]}' is not declared in config.pbtxt")
    for spec in outputs.values():
        if spec.name not in graph_outputs:
            raise ModelLoadError(
                f"output '{spec.name}' is not in the graph (it has: {', '.join(graph_outputs)})"
            )
        compare("output", spec, graph_outputs[spec.name])


def batch_policy(config: mc.ModelConfig) -> BatchPolicy:
    instances = sum(max(g.count, 1) for g in config.instance_group) or 1
    if config.WhichOneof("scheduling_choice") != "dynamic_batching":
        return BatchPolicy(config.max_batch_size, batching=False, instances=instances)
    db = config.dynamic_batching
    queue = db.default_queue_policy
    timeout = queue.default_timeout_microseconds / 1e6 or None
    return BatchPolicy(
        max_batch_size=config.max_batch_size,
        batching=config.max_batch_size > 0,
        max_queue_delay_s=db.max_queue_delay_microseconds / 1e6,
        preferred_batch_sizes=tuple(db.preferred_batch_size),
        max_queue_size=queue.max_queue_size,
        default_timeout_s=timeout,
        instances=instances,
    )


def _sample(shape: list[int], datatype: str, random: bool) -> np.ndarray:
    if datatype == "BYTES":
        return np.full(shape, "", dtype=object)
    dtype = DTYPES[datatype]
    if random and dtype.kind == "f":
        return np.random.default_rng(0).standard_normal(shape).astype(dtype)
    return np.zeros(shape, dtype=dtype)


def _utf8(array: np.ndarray, name: str) -> np.ndarray:
    out = np.empty(array.shape, dtype=object)
    flat = out.reshape(-1)
    for i, item in enumerate(array.reshape(-1)):
        try:
            flat[i] = item.decode("utf-8") if isinstance(item, bytes) else str(item)
        except UnicodeDecodeError as err:
            raise InvalidInput(
                f"input '{name}': element {i} is not valid UTF-8 (byte {err.start})"
            ) from None
    return out


class OnnxModel(ServedModel):
    """Loads `<version>/model.onnx` (or `default_model_filename`)."""

    def __init__(
        self, name: str, version: int, config: mc.ModelConfig, version_dir: Path, settings: Settings
    ) -> None:
        super().__init__(name, version, config)
        path = version_file(
            version_dir, config.default_model_filename or "model.onnx", "model file"
        )
        self.policy = batch_policy(config)
        self._sessions = [
            create_session(path, config, settings) for _ in range(self.policy.instances)
        ]
        check_signature(self._sessions[0], config, self.inputs, self.outputs)
        providers = self._sessions[0].get_providers()
        log.info(
            "model '%s' version %d: %d session(s) on %s",
            name,
            version,
            len(self._sessions),
            ", ".join(providers),
        )
        # Strings never go to the GPU: a model with BYTES tensors keeps `run`.
        self._bound = providers[0] == "CUDAExecutionProvider" and all(
            spec.datatype != "BYTES" for spec in (*self.inputs.values(), *self.outputs.values())
        )
        self._output_names = list(self.outputs)
        self._warm_up()
        self._batcher: Batcher | None = None
        # The native front end's queue for this version (serving.native.frontend), if any.
        self.native_queue: Any = None

    def _warm_up(self) -> None:
        """Run the config's `model_warmup` samples (default: one zero-filled request, variable
        dims as 1) on every instance before the model reports ready."""
        samples = []
        for w in self.config.model_warmup:
            batch = [max(w.batch_size, 1)] if self.batching else []
            feeds = {}
            for name, spec in w.inputs.items():
                datatype = self.inputs[name].datatype if name in self.inputs else "FP32"
                feeds[name] = _sample([*batch, *spec.dims], datatype, spec.random_data)
            samples.extend([feeds] * max(w.count, 1))
        if not samples:
            samples.append(
                {
                    spec.name: _sample(
                        [1, *[max(d, 1) for d in spec.dims]]
                        if self.batching
                        else [max(d, 1) for d in spec.dims],
                        spec.datatype,
                        False,
                    )
                    for spec in self.inputs.values()
                    if not spec.optional
                }
            )
        for session in self._sessions:
            for feeds in samples:
                try:
                    session.run(self._output_names, feeds)
                except Exception as err:
                    raise ModelLoadError(f"warm-up inference failed: {err}") from err

    def start(self) -> None:
        """Start the batcher (needs the running event loop)."""
        metrics.announce(self)
        queue_seconds = metrics.QUEUE_SECONDS.labels(self.name, str(self.version))
        self._batcher = Batcher(
            self.policy, self._run, self.stats, self.name, on_queued=queue_seconds.observe
        )

    def _run(self, inputs: Tensors, instance: int) -> Tensors:
        session = self._sessions[instance]
        results = (
            run_bound(session, inputs, self._output_names)
            if self._bound
            else session.run(self._output_names, inputs)
        )
        return dict(zip(self._output_names, results, strict=True))

    @property
    def fast_path(self) -> bool:
        """Whether the native front end may run this version's ModelInfer: fixed-size tensors
        (no strings) and no optional inputs."""
        specs = (*self.inputs.values(), *self.outputs.values())
        return all(s.datatype != "BYTES" for s in specs) and not any(
            s.optional for s in self.inputs.values()
        )

    def run_batch(self, instance: int, inputs: Tensors) -> Tensors:
        """The native front end's runner: one batch on `instance`, outputs C-contiguous in
        their declared datatypes."""
        outputs = self._run(inputs, instance)
        return {
            n: np.ascontiguousarray(a, dtype=DTYPES[self.outputs[n].datatype])
            for n, a in outputs.items()
        }

    def statistics(self) -> ModelStats:
        """The snapshot, with the native fast path's refusals since the last read folded in:
        it answers them in C++ with fixed statuses and only counts them (no GIL while it
        sheds load). Each goes to the latency histogram at its kind's mean duration."""
        if self.native_queue is not None:
            histogram = metrics.REQUEST_SECONDS.labels(self.name, str(self.version))
            for kind, count, ns in self.native_queue.take_refusals():
                self.stats.record_failures(count, ns, NATIVE_REFUSALS[kind])
                for _ in range(count):
                    histogram.observe(ns / count / 1e9)
        return self.stats.snapshot()

    @property
    def queue_size(self) -> int:
        native = self.native_queue.queue_size if self.native_queue is not None else 0
        return (self._batcher.queue_size if self._batcher else 0) + native

    @property
    def fast_path_requests(self) -> int | None:
        return self.native_queue.requests if self.native_queue is not None else None

    @property
    def pending(self) -> int:
        native = self.native_queue.pending if self.native_queue is not None else 0
        return self.stats.pending + native

    @property
    def queue_capacity(self) -> int:
        return self.policy.max_queue_size

    async def infer(self, request: InferRequest) -> dict[str, np.ndarray]:
        assert self._batcher is not None, "start() the model before inference"
        size = self.validate(request)
        for name, array in request.inputs.items():
            if array.dtype == object:  # onnxruntime string tensors take str, not bytes
                request.inputs[name] = _utf8(array, name)
        outputs, _ = await self._batcher.submit(request.inputs, size, request.timeout_s)
        if request.outputs:
            return {n: outputs[n] for n in request.outputs}
        return outputs

    async def drain_and_close(self) -> None:
        if self.native_queue is not None:  # no longer routed there: finish what it holds
            await asyncio.to_thread(self.native_queue.close)
        if self._batcher is not None:
            await self._batcher.close()
        self._sessions.clear()
        metrics.forget(self)
