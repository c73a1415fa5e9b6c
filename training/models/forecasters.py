"""Architecture name -> forecaster class (a dict, not an if/elif factory)."""

from __future__ import annotations

from torch import nn

from training.config import ForecasterConfig
from training.models.rnn_forecaster import RNNForecaster
from training.models.segrnn import SegRNNForecaster

ARCHITECTURES: dict[str, type[nn.Module]] = {"segrnn": SegRNNForecaster, "rnn": RNNForecaster}


def build_forecaster(config: ForecasterConfig) -> nn.Module:
    return ARCHITECTURES[config.arch](config)


def architecture_name(config: ForecasterConfig) -> str:
    """e.g. "segrnn-gru", "rnn-lstm": what config.pbtxt's `architecture` parameter holds."""
    return f"{config.arch}-{config.cell}"
