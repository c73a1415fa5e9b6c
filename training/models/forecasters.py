"""Architecture name -> forecaster class (a dict, not an if/elif factory)."""

from __future__ import annotations

from torch import nn

from training.config import ForecasterConfig
from training.models.rnn_forecaster import RNNForecaster
from training.models.segrnn import SegRNNForecaster
from training.models.window_scaling import WindowScaled

ARCHITECTURES: dict[str, type[nn.Module]] = {"segrnn": SegRNNForecaster, "rnn": RNNForecaster}


def build_forecaster(config: ForecasterConfig) -> nn.Module:
    """The network; with `scaling="window"`, wrapped to standardise each window by itself."""
    net = ARCHITECTURES[config.arch](config)
    return WindowScaled(net, config.target_index) if config.scaling == "window" else net


def architecture_name(config: ForecasterConfig) -> str:
    """e.g. "segrnn-gru", "rnn-lstm": what config.pbtxt's `architecture` parameter holds."""
    return f"{config.arch}-{config.cell}"
