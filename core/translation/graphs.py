"""The two graphs decoding runs on, behind a small protocol that other backends (the PyTorch
model during training evaluation, fakes in tests) implement too.

Legend: B batch, S source length, R decoder rows (requests x beams), P cached length,
L decoder layers, H heads, K head width, V vocabulary.

encoder.onnx  src_ids [B, S] int64, src_mask [B, S] bool (True = real token)
              -> memory [B, S, D] float32, cross_k [L, B, H, S, K], cross_v [L, B, H, S, K]
decoder.onnx  tokens [R, 1] int64, positions [R, 1] int64, past_mask [R, P] bool (True = a
              cache slot of this row), src_mask [R, S] bool, and for each layer i:
              past_k_i/past_v_i [R, H, P, K], cross_k_i/cross_v_i [R, H, S, K]
              -> log_probs [R, V] float32, present_k_i/present_v_i [R, H, P+1, K] per layer
P may be 0 (an empty first cache). Rows are independent: each has its own position, cache slots
and source, so requests at different steps and beams of one request share a call.

The decoder takes its cache one tensor per layer (as Hugging Face Optimum's decoders do): a
stacked [L, ...] tensor would be split on the way in and stacked on the way out, two copies of
the cache inside every step. Decoding code keeps the stacked [L, R, H, P, K] arrays: the
per-layer feeds are views of them (`decoder_feeds`), and the per-layer outputs are stacked
again by one numpy copy (`stacked_outputs`), cheaper than the two copies in the graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:  # imported when a session is made: the search code runs without onnxruntime
    import onnxruntime as ort

from core.translation.spec import DECODER_FILE, ENCODER_FILE

ENCODER_INPUTS = ("src_ids", "src_mask")
ENCODER_OUTPUTS = ("memory", "cross_k", "cross_v")
CACHES = ("past_k", "past_v", "cross_k", "cross_v")  # decoder inputs, one per layer each
PRESENT = ("present_k", "present_v")  # decoder outputs, one per layer each


def decoder_inputs(layers: int) -> list[str]:
    """decoder.onnx's input names, in order."""
    return ["tokens", "positions", "past_mask", "src_mask",
            *(f"{name}_{i}" for name in CACHES for i in range(layers))]


def decoder_outputs(layers: int) -> list[str]:
    """decoder.onnx's output names, in order."""
    return ["log_probs", *(f"{name}_{i}" for name in PRESENT for i in range(layers))]


def decoder_feeds(tokens: np.ndarray, positions: np.ndarray, past_k: np.ndarray,
                  past_v: np.ndarray, past_mask: np.ndarray, cross_k: np.ndarray,
                  cross_v: np.ndarray, src_mask: np.ndarray) -> dict[str, np.ndarray]:
    """decoder.onnx's feeds from stacked caches ([L, R, H, P|S, K]); each layer's tensor is a
    view, not a copy."""
    feeds = {"tokens": tokens, "positions": positions, "past_mask": past_mask,
             "src_mask": src_mask}
    for name, stacked in zip(CACHES, (past_k, past_v, cross_k, cross_v), strict=True):
        feeds.update((f"{name}_{i}", layer) for i, layer in enumerate(stacked))
    return feeds


def stacked_outputs(outputs: Sequence[np.ndarray], layers: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """decoder.onnx's outputs (in `decoder_outputs` order) -> log_probs [R, V],
    present_k/present_v [L, R, H, P+1, K]."""
    return (outputs[0], np.stack(outputs[1:1 + layers]),
            np.stack(outputs[1 + layers:1 + 2 * layers]))


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


CacheArray = np.ndarray | DeviceCache  # [L, R, H, P, K]


class StepModel(Protocol):
    """An encoder plus a cached decoder step, on numpy arrays."""

    num_layers: int
    num_heads: int
    head_dim: int

    def encode(self, src_ids: np.ndarray, src_mask: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
        """src_ids [B, S] int64, src_mask [B, S] bool -> cross_k, cross_v [L, B, H, S, K]."""
        ...

    def step(self, tokens: np.ndarray, positions: np.ndarray, past_k: CacheArray,
             past_v: CacheArray, past_mask: np.ndarray, cross_k: np.ndarray,
             cross_v: np.ndarray, src_mask: np.ndarray
             ) -> tuple[np.ndarray, CacheArray, CacheArray]:
        """One step (shapes in the module docstring) -> log_probs, present_k, present_v."""
        ...


class GraphError(RuntimeError):
    """A graph's inputs or outputs are not the translator's."""


def _check_names(session: ort.InferenceSession, path: Path, inputs: Sequence[str],
                 outputs: Sequence[str]) -> None:
    got_in = {n.name for n in session.get_inputs()}
    got_out = {n.name for n in session.get_outputs()}
    if got_in != set(inputs) or not set(outputs) <= got_out:
        raise GraphError(f"{path.name}: inputs {sorted(got_in)} / outputs {sorted(got_out)}; "
                         f"expected inputs {sorted(inputs)} and outputs {sorted(outputs)}")


class OnnxStepModel:
    """`encoder.onnx` and `decoder.onnx` of a version folder on onnxruntime sessions. The
    caller chooses threads and providers (serving passes its settings)."""

    def __init__(self, version_dir: Path, num_layers: int, num_heads: int, head_dim: int,
                 session_options: ort.SessionOptions | None = None,
                 providers: Sequence[str] | None = None, io_binding: bool | None = None
                 ) -> None:
        import onnxruntime as ort

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
            raise GraphError(f"{dec_path}: a stacked [L, ...] cache input (an export by an "
                             "earlier seqserve); export the checkpoint again, or for a default "
                             "model delete its folder and run `seqserve build-repository`")
        self._decoder_outputs = decoder_outputs(num_layers)
        _check_names(self.decoder, dec_path, decoder_inputs(num_layers), self._decoder_outputs)
        # On CUDA the caches stay on the GPU between steps (`_bound_step`): `run` copies them
        # there and back at every step, 2.6x slower at 64 rows on an H100 (docs/benchmarks.md).
        # On the CPU binding gains nothing measurable; `io_binding` forces either way.
        on_gpu = self.decoder.get_providers()[0] == "CUDAExecutionProvider"
        self.io_binding = on_gpu if io_binding is None else io_binding
        self._device = "cuda" if on_gpu else "cpu"
        self._cross: tuple[np.ndarray, np.ndarray, list[ort.OrtValue], list[ort.OrtValue]] | None \
            = None  # the last source keys/values on the device, and the host arrays they copy

    @property
    def providers(self) -> list[str]:
        """The providers the decoder session actually runs on, first = preferred."""
        return self.decoder.get_providers()

    def encode(self, src_ids: np.ndarray, src_mask: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
        cross_k, cross_v = self.encoder.run(["cross_k", "cross_v"],
                                            {"src_ids": src_ids, "src_mask": src_mask})
        return cross_k, cross_v  # [L, B, H, S, K] each

    def step(self, tokens: np.ndarray, positions: np.ndarray, past_k: CacheArray,
             past_v: CacheArray, past_mask: np.ndarray, cross_k: np.ndarray,
             cross_v: np.ndarray, src_mask: np.ndarray
             ) -> tuple[np.ndarray, CacheArray, CacheArray]:
        if self.io_binding:
            return self._bound_step(tokens, positions, past_k, past_v, past_mask, cross_k,
                                    cross_v, src_mask)
        feeds = decoder_feeds(tokens, positions, np.asarray(past_k), np.asarray(past_v),
                              past_mask, cross_k, cross_v, src_mask)
        outputs = self.decoder.run(self._decoder_outputs, feeds)
        return stacked_outputs(outputs, self.num_layers)  # [R, V], [L, R, H, P+1, K] x2

    def _bound_step(self, tokens: np.ndarray, positions: np.ndarray, past_k: CacheArray,
                    past_v: CacheArray, past_mask: np.ndarray, cross_k: np.ndarray,
                    cross_v: np.ndarray, src_mask: np.ndarray
                    ) -> tuple[np.ndarray, DeviceCache, DeviceCache]:
        """A step through IO binding: a DeviceCache past (the last step's present) is bound
        where it is, host arrays are copied to the device, the source keys/values only when
        they changed, and only the log-probabilities come back to the host."""
        binding = self.decoder.io_binding()
        for name, array in (("tokens", tokens), ("positions", positions),
                            ("past_mask", past_mask), ("src_mask", src_mask)):
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name, cache in (("past_k", past_k), ("past_v", past_v)):
            for i in range(self.num_layers):
                if isinstance(cache, DeviceCache):
                    binding.bind_ortvalue_input(f"{name}_{i}", cache.layers[i])
                else:
                    binding.bind_cpu_input(f"{name}_{i}", np.ascontiguousarray(cache[i]))
        for name, values in zip(("cross_k", "cross_v"), self._cross_on_device(cross_k, cross_v),
                                strict=True):
            for i, value in enumerate(values):
                binding.bind_ortvalue_input(f"{name}_{i}", value)
        binding.bind_output("log_probs", "cpu")
        for name in self._decoder_outputs[1:]:
            binding.bind_output(name, self._device)
        self.decoder.run_with_iobinding(binding)
        out = binding.get_outputs()
        layers = self.num_layers
        return (out[0].numpy(), DeviceCache(out[1:1 + layers]),  # [R, V], [L, R, H, P+1, K]
                DeviceCache(out[1 + layers:1 + 2 * layers]))

    def _cross_on_device(self, cross_k: np.ndarray, cross_v: np.ndarray
                         ) -> tuple[list[ort.OrtValue], list[ort.OrtValue]]:
        """Per-layer device copies of the source keys/values [L, R, H, S, K]. They change only
        when rows join or leave (new arrays), so the copies are kept while the arrays are the
        same objects; holding the arrays keeps their identity from being reused."""
        if self._cross is None or self._cross[0] is not cross_k or self._cross[1] is not cross_v:
            import onnxruntime as ort

            def upload(stacked: np.ndarray) -> list[ort.OrtValue]:
                return [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(layer),
                                                         self._device, 0) for layer in stacked]
            self._cross = (cross_k, cross_v, upload(cross_k), upload(cross_v))
        return self._cross[2], self._cross[3]
