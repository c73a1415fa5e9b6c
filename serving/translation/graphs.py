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

from serving.translation.spec import DECODER_FILE, ENCODER_FILE

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


class StepModel(Protocol):
    """An encoder plus a cached decoder step, on numpy arrays."""

    num_layers: int
    num_heads: int
    head_dim: int

    def encode(self, src_ids: np.ndarray, src_mask: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
        """src_ids [B, S] int64, src_mask [B, S] bool -> cross_k, cross_v [L, B, H, S, K]."""
        ...

    def step(self, tokens: np.ndarray, positions: np.ndarray, past_k: np.ndarray,
             past_v: np.ndarray, past_mask: np.ndarray, cross_k: np.ndarray,
             cross_v: np.ndarray, src_mask: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
                 providers: Sequence[str] | None = None) -> None:
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

    @property
    def providers(self) -> list[str]:
        """The providers the decoder session actually runs on, first = preferred."""
        return self.decoder.get_providers()

    def encode(self, src_ids: np.ndarray, src_mask: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
        cross_k, cross_v = self.encoder.run(["cross_k", "cross_v"],
                                            {"src_ids": src_ids, "src_mask": src_mask})
        return cross_k, cross_v  # [L, B, H, S, K] each

    def step(self, tokens: np.ndarray, positions: np.ndarray, past_k: np.ndarray,
             past_v: np.ndarray, past_mask: np.ndarray, cross_k: np.ndarray,
             cross_v: np.ndarray, src_mask: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        feeds = decoder_feeds(tokens, positions, past_k, past_v, past_mask, cross_k, cross_v,
                              src_mask)
        outputs = self.decoder.run(self._decoder_outputs, feeds)
        return stacked_outputs(outputs, self.num_layers)  # [R, V], [L, R, H, P+1, K] x2
