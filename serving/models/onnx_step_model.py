"""The translator's two graphs (`core.translation.graphs`) on onnxruntime sessions: the
serving backend of `core.translation`'s search, and `load_translator`, which reads a version
folder into a `Translator`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from core.translation import Translator, native_model
from core.translation.graphs import (
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
    CacheArray,
    GraphError,
    StepModel,
    check_names,
    decoder_feeds,
    decoder_inputs,
    decoder_outputs,
    layered_outputs,
)
from core.translation.spec import DECODER_FILE, ENCODER_FILE
from core.translation.translator import RequestBuilder
from protos.inference import model_config_pb2 as mc

log = logging.getLogger(__name__)


def load_translator(
    version_dir: Path,
    config: mc.ModelConfig | None = None,
    session_options: ort.SessionOptions | None = None,
    providers: Sequence[str] | None = None,
) -> Translator:
    """Load `<model>/<version>/`: encoder.onnx and decoder.onnx on onnxruntime sessions (the
    caller's options and providers), or native.npz when the config's `runtime` chooses the
    native translator; and the tokenizer. `config` defaults to `<model>/config.pbtxt`."""
    requests = RequestBuilder.load(version_dir, config)
    spec = requests.spec
    on_cpu = not providers or providers[0] == "CPUExecutionProvider"
    model: StepModel
    if native_model.chosen(spec.runtime, on_cpu):
        model = native_model.NativeModel(Path(version_dir) / native_model.FILE)
        native = (model.num_layers, model.num_heads, model.head_dim)
        if native != (spec.num_layers, spec.num_heads, spec.head_dim):
            raise GraphError(
                f"{version_dir}/{native_model.FILE}: layers, heads, head width {native}; "
                f"config.pbtxt says {(spec.num_layers, spec.num_heads, spec.head_dim)}"
            )
        log.info(
            "%s: the native translator (%s kernel, %s)",
            version_dir,
            native_model.kernel(),
            native_model.isa(),
        )
    else:
        model = OnnxStepModel(
            Path(version_dir),
            spec.num_layers,
            spec.num_heads,
            spec.head_dim,
            session_options,
            providers,
        )
    return Translator(model, requests.tokenizer, spec)


def _check_names(
    session: ort.InferenceSession, path: Path, inputs: Sequence[str], outputs: Sequence[str]
) -> None:
    check_names(
        path.name,
        [n.name for n in session.get_inputs()],
        [n.name for n in session.get_outputs()],
        inputs,
        outputs,
    )


class DeviceCache:
    """A stacked cache [L, R, H, P, K] whose layers stay where the decoder wrote them (on the
    GPU) between steps, as OrtValues that `OnnxStepModel` binds straight into the next step.
    Anything else reads it as numpy (`__array__`, indexing, `shape`): one copy to the host, made
    once. The decode loop reads it only when rows join, leave or are reordered by beam search."""

    __slots__ = ("_host", "layers")
    ndim = 5
    dtype = np.dtype(np.float32)

    def __init__(self, layers: Sequence[ort.OrtValue]) -> None:
        self.layers, self._host = list(layers), None

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.layers), *self.layers[0].shape())

    def numpy(self) -> np.ndarray:
        if self._host is None:
            self._host = np.stack([v.numpy() for v in self.layers])  # [L, R, H, P, K]
        return self._host

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        host = self.numpy()
        return host if dtype is None else host.astype(dtype, copy=False)

    def __getitem__(self, index: object) -> np.ndarray:
        return self.numpy()[index]


class OnnxStepModel:
    """`encoder.onnx` and `decoder.onnx` of a version folder on onnxruntime sessions. The
    caller chooses threads and providers (serving passes its settings)."""

    def __init__(
        self,
        version_dir: Path,
        num_layers: int,
        num_heads: int,
        head_dim: int,
        session_options: ort.SessionOptions | None = None,
        providers: Sequence[str] | None = None,
        io_binding: bool | None = None,
    ) -> None:
        self.num_layers, self.num_heads, self.head_dim = num_layers, num_heads, head_dim
        providers = list(providers) if providers else ["CPUExecutionProvider"]
        enc_path, dec_path = version_dir / ENCODER_FILE, version_dir / DECODER_FILE
        for path in (enc_path, dec_path):
            if not path.is_file():
                raise GraphError(f"{path.name} not found in {version_dir}")
        self.encoder = ort.InferenceSession(str(enc_path), session_options, providers=providers)
        self.decoder = ort.InferenceSession(str(dec_path), session_options, providers=providers)
        _check_names(self.encoder, enc_path, ENCODER_INPUTS, ENCODER_OUTPUTS)
        if "past_k" in {n.name for n in self.decoder.get_inputs()}:
            raise GraphError(
                f"{dec_path}: a stacked [L, ...] cache input (an export by an "
                "earlier seqserve); export the checkpoint again, or for a default "
                "model delete its folder and run `seqserve build-repository`"
            )
        self._decoder_outputs = decoder_outputs(num_layers)
        _check_names(self.decoder, dec_path, decoder_inputs(num_layers), self._decoder_outputs)
        # On CUDA the caches stay on the GPU between steps (`_bound_step`): `run` copies them
        # there and back at every step, 2.6x slower at 64 rows on an H100 (docs/benchmarks.md).
        # On the CPU binding gains nothing measurable; `io_binding` forces either way.
        on_gpu = self.decoder.get_providers()[0] == "CUDAExecutionProvider"
        self.io_binding = on_gpu if io_binding is None else io_binding
        self._device = "cuda" if on_gpu else "cpu"
        self._cross: (
            tuple[np.ndarray, np.ndarray, list[ort.OrtValue], list[ort.OrtValue]] | None
        ) = None  # the last source keys/values on the device, and the host arrays they copy

    @property
    def providers(self) -> list[str]:
        """The providers the decoder session actually runs on, first = preferred."""
        return self.decoder.get_providers()

    @property
    def providers_by_part(self) -> dict[str, list[str]]:
        """Each session's providers, for serving's device checks."""
        return {"encoder": self.encoder.get_providers(), "decoder": self.decoder.get_providers()}

    def encode(self, src_ids: np.ndarray, src_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cross_k, cross_v = self.encoder.run(
            ["cross_k", "cross_v"], {"src_ids": src_ids, "src_mask": src_mask}
        )
        return cross_k, cross_v  # [L, B, H, S, K] each

    def step(
        self,
        tokens: np.ndarray,
        positions: np.ndarray,
        past_k: CacheArray,
        past_v: CacheArray,
        past_mask: np.ndarray,
        cross_k: np.ndarray,
        cross_v: np.ndarray,
        src_mask: np.ndarray,
    ) -> tuple[np.ndarray, CacheArray, CacheArray]:
        if self.io_binding:
            return self._bound_step(
                tokens, positions, past_k, past_v, past_mask, cross_k, cross_v, src_mask
            )
        feeds = decoder_feeds(
            tokens,
            positions,
            past_k,
            past_v,
            past_mask,
            cross_k,
            cross_v,
            src_mask,
        )
        outputs = self.decoder.run(self._decoder_outputs, feeds)
        return layered_outputs(outputs, self.num_layers)  # [R, V], [L, R, H, P+1, K] x2

    def _bound_step(
        self,
        tokens: np.ndarray,
        positions: np.ndarray,
        past_k: CacheArray,
        past_v: CacheArray,
        past_mask: np.ndarray,
        cross_k: np.ndarray,
        cross_v: np.ndarray,
        src_mask: np.ndarray,
    ) -> tuple[np.ndarray, DeviceCache, DeviceCache]:
        """A step through IO binding: a DeviceCache past (the last step's present) is bound
        where it is, host arrays are copied to the device, the source keys/values only when
        they changed, and only the log-probabilities come back to the host."""
        binding = self.decoder.io_binding()
        for name, array in (
            ("tokens", tokens),
            ("positions", positions),
            ("past_mask", past_mask),
            ("src_mask", src_mask),
        ):
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name, cache in (("past_k", past_k), ("past_v", past_v)):
            for i in range(self.num_layers):
                if isinstance(cache, DeviceCache):
                    binding.bind_ortvalue_input(f"{name}_{i}", cache.layers[i])
                else:
                    binding.bind_cpu_input(f"{name}_{i}", np.ascontiguousarray(cache[i]))
        for name, values in zip(
            ("cross_k", "cross_v"), self._cross_on_device(cross_k, cross_v), strict=True
        ):
            for i, value in enumerate(values):
                binding.bind_ortvalue_input(f"{name}_{i}", value)
        binding.bind_output("log_probs", "cpu")
        for name in self._decoder_outputs[1:]:
            binding.bind_output(name, self._device)
        self.decoder.run_with_iobinding(binding)
        out = binding.get_outputs()
        layers = self.num_layers
        return (
            out[0].numpy(),
            DeviceCache(out[1 : 1 + layers]),  # [R, V], [L, R, H, P+1, K]
            DeviceCache(out[1 + layers : 1 + 2 * layers]),
        )

    def _cross_on_device(
        self, cross_k: np.ndarray, cross_v: np.ndarray
    ) -> tuple[list[ort.OrtValue], list[ort.OrtValue]]:
        """Per-layer device copies of the source keys/values [L, R, H, S, K]. They change only
        when rows join or leave (new arrays), so the copies are kept while the arrays are the
        same objects; holding the arrays keeps their identity from being reused."""
        if self._cross is None or self._cross[0] is not cross_k or self._cross[1] is not cross_v:

            def upload(stacked: np.ndarray) -> list[ort.OrtValue]:
                return [
                    ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(layer), self._device, 0)
                    for layer in stacked
                ]

            self._cross = (cross_k, cross_v, upload(cross_k), upload(cross_v))
        return self._cross[2], self._cross[3]
