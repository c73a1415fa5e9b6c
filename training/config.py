"""Frozen configs stored in checkpoints: the model's shape, and how it was trained.

The defaults are the settings that reach the ETTh1 accuracy goal (docs/forecasting.md): a
SegRNN-style GRU (segments of 24 steps, d_model 512, one layer, channel-independent, last-value
normalisation, parallel multi-step decoding), Adam at 1e-3 with decay, L1 (MAE) loss, early
stopping on the validation MAE.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ForecasterConfig:
    """What rebuilds the network. B batch, L input_len, H horizon, F channels."""

    arch: str = "segrnn"  # segrnn | rnn (last hidden state -> linear head, the baseline)
    cell: str = "gru"  # gru | lstm
    input_len: int = 96  # L
    horizon: int = 96  # H
    n_past: int = 7  # F_in: channels of `past`
    target_index: tuple[int, ...] = (0,)  # the target channels' positions in `past`
    n_future: int = 0  # F_fut: known-future covariates per horizon step
    d_model: int = 512  # segment embedding and hidden size (rnn: hidden size)
    seg_len: int = 24  # segrnn: steps per segment; must divide input_len and horizon
    layers: int = 1  # recurrent layers
    dropout: float = 0.5
    quantiles: tuple[float, ...] = ()  # quantile levels with their own head, ascending

    def __post_init__(self) -> None:
        assert self.arch in {"segrnn", "rnn"}, f"arch must be segrnn or rnn, not {self.arch!r}"
        assert self.cell in {"gru", "lstm"}, f"cell must be gru or lstm, not {self.cell!r}"
        assert self.target_index and all(0 <= i < self.n_past for i in self.target_index), (
            f"target_index {self.target_index} must point into the {self.n_past} past channels"
        )
        if self.arch == "segrnn":
            assert self.input_len % self.seg_len == 0 and self.horizon % self.seg_len == 0, (
                f"seg_len {self.seg_len} must divide input_len {self.input_len} and horizon "
                f"{self.horizon}"
            )
            assert self.d_model % 2 == 0, "d_model must be even (position + channel halves)"
        assert list(self.quantiles) == sorted(set(self.quantiles)), "quantiles must ascend"
        assert all(0 < q < 1 for q in self.quantiles), "quantiles must lie in (0, 1)"

    @property
    def n_targets(self) -> int:  # F_out
        return len(self.target_index)


LOSSES = ("mse", "mae", "mse+mae")


@dataclass(frozen=True)
class TrainConfig:
    """How the model was trained: data, split and optimiser."""

    data: str = "synthetic"  # etth1 | etth2 | ettm1 | ettm2 | synthetic | a CSV path
    features: str = "M"  # M: all in, all out; S: target in and out; MS: all in, target out
    target: tuple[str, ...] = ()  # target column(s); default: OT for ETT, the first column else
    covariates: tuple[str, ...] | None = None  # past covariate columns; None = all other columns
    date_col: str = "date"
    fill: str = "none"  # none | ffill: what to do with empty cells in a CSV
    future_features: tuple[str, ...] = ()  # calendar features of the horizon steps
    synthetic_rows: int = 8760  # rows of the built-in generator (hourly)
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    lr_decay: float = 0.8  # multiplies the learning rate after each epoch past `warm_epochs`
    warm_epochs: int = 2
    patience: int = 3  # epochs without a better validation MSE before stopping
    clip: float = 1.0  # gradient-norm clip
    # point-forecast loss, also what early stopping and the kept epoch compare on validation:
    # mse | mae | mse+mae (their mean)
    loss: str = "mae"
    quantile_weight: float = 1.0  # weight of the pinball loss next to the point loss
    seed: int = 0
    device: str = "cpu"
    threads: int = 0  # torch threads; 0 = leave torch's default
    plot_windows: int = 4

    def __post_init__(self) -> None:
        assert self.loss in LOSSES, f"loss must be one of {', '.join(LOSSES)}, not {self.loss!r}"
