"""Frozen configs stored in checkpoints: the model's shape, and how it was trained.

The defaults are the settings that reach the ETTh1 accuracy goal (docs/forecasting.md): a
SegRNN-style GRU (segments of 24 steps, d_model 512, one layer, channel-independent, last-value
normalisation, parallel multi-step decoding), Adam at 1e-3 with decay, L1 (MAE) loss, early
stopping on the validation MAE.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from core.flags import flag


def parse_quantiles(text: str) -> tuple[float, ...]:
    """--quantiles: comma-separated levels in any order, or none."""
    try:
        return tuple(sorted(float(w) for w in text.split(",") if w.strip() not in ("", "none")))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of levels: {text!r}"
        ) from None


def _check(ok: bool, message: str) -> None:
    """A ValueError naming the setting (kept under `python -O`, unlike an assert)."""
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True)
class ForecasterConfig:
    """What rebuilds the network. B batch, L input_len, H horizon, F channels. A field with a
    `flag` is also `seqserve train forecaster`'s flag of that name (core/flags.py)."""

    arch: str = flag(
        "segrnn",
        "segrnn: segment-recurrent; rnn: last hidden state -> linear head (baseline)",
        choices=("segrnn", "rnn"),
        group="model",
    )
    cell: str = flag("gru", "recurrent cell", choices=("lstm", "gru"), group="model")
    # 0: chosen from the data (training/data/window_size.py): 96 -> 96 on ETT
    input_len: int = flag(0, "L; 0 = from H and the training rows (96 on ETT)", group="model")
    horizon: int = flag(
        0, "H; 0 = from the frequency (96 hours, 5 business days, 4 quarters, ...)", group="model"
    )
    n_past: int = 7  # F_in: channels of `past`
    target_index: tuple[int, ...] = (0,)  # the target channels' positions in `past`
    n_future: int = 0  # F_fut: known-future covariates per horizon step
    # segment embedding and hidden size (rnn: hidden size)
    d_model: int = flag(512, "hidden size", group="model")
    seg_len: int = flag(
        0,
        "segrnn segment length, dividing L and H; 0 = the largest up to 24 that does",
        group="model",
    )
    layers: int = flag(1, "recurrent layers", group="model")
    dropout: float = flag(0.5, "dropout", group="model")
    quantiles: tuple[float, ...] = flag(
        (),
        "quantile levels with pinball-loss heads, e.g. 0.1,0.5,0.9, or none",
        none="none",
        parse=parse_quantiles,
        group="model",
    )
    scaling: str = flag(
        "",
        "global: standardise with the training rows' mean and std; window: each input window "
        "by its own mean and std too, inside the graph (many series of different sizes, "
        "served without a series id); '' = window for a long-format file, else global",
        choices=("", "global", "window"),
        group="model",
    )

    def __post_init__(self) -> None:
        _check(self.arch in {"segrnn", "rnn"}, f"arch must be segrnn or rnn, not {self.arch!r}")
        _check(self.cell in {"gru", "lstm"}, f"cell must be gru or lstm, not {self.cell!r}")
        for name in ("d_model", "layers"):
            _check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("input_len", "horizon", "seg_len"):  # 0: chosen from the data
            _check(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        _check(0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}")
        _check(
            bool(self.target_index) and all(0 <= i < self.n_past for i in self.target_index),
            f"target_index {self.target_index} must point into the {self.n_past} past channels",
        )
        if self.arch == "segrnn" and self.seg_len and self.input_len and self.horizon:
            _check(
                self.input_len % self.seg_len == 0 and self.horizon % self.seg_len == 0,
                f"seg_len {self.seg_len} must divide input_len {self.input_len} and horizon "
                f"{self.horizon}",
            )
        if self.arch == "segrnn":
            _check(self.d_model % 2 == 0, "d_model must be even (position + channel halves)")
        _check(list(self.quantiles) == sorted(set(self.quantiles)), "quantiles must ascend")
        _check(all(0 < q < 1 for q in self.quantiles), "quantiles must lie in (0, 1)")

    @property
    def n_targets(self) -> int:  # F_out
        return len(self.target_index)


LOSSES = ("mse", "mae", "mse+mae")


@dataclass(frozen=True)
class TrainConfig:
    """How the model was trained: data, split and optimiser. A field with a `flag` is also
    `seqserve train forecaster`'s flag of that name."""

    data: str = flag(
        "synthetic",
        "synthetic, etth1/etth2/ettm1/ettm2 (downloaded and checked, or from "
        "SEQSERVE_DATA_DIR), or a CSV path",
        group="data",
    )
    features: str = flag(
        "M",
        "M: all columns in and out; S: target in and out; MS: all in, target out",
        choices=("M", "S", "MS"),
        group="data",
    )
    target: tuple[str, ...] = flag(
        (),
        "target column(s), comma-separated; empty: OT for ETT, price for synthetic, else the "
        "first column",
        group="data",
    )
    covariates: tuple[str, ...] | None = flag(
        None,
        "past covariate columns, comma-separated; None: all other columns",
        group="data",
    )
    date_col: str = flag(
        "date", "timestamp column of a CSV (a long-format file's 'ds' is found too)", group="data"
    )
    id_col: str = flag(
        "",
        "series id column of a long-format CSV, many series in one file (StatsForecast's "
        "unique_id, ds, y): one global model over them all; '' = a 'unique_id' column when "
        "there is one",
        group="data",
    )
    freq: str = flag(
        "",
        "the series' frequency, a pandas offset alias (15min, h, D, B, W-SUN, MS, ME, QS, QE, "
        "YS, YE); '' = inferred from the timestamps. Business days (B) take the weekdays the "
        "rows skip as holidays",
        group="data",
    )
    holidays: str = flag(
        "",
        "business-day holidays, which the horizon skips too: a file of ISO dates, or a calendar "
        "code of the holidays package (an exchange: XNYS, XKRX, ...; a country: US, KR, ...); "
        "'' = only the weekdays the rows skip",
        group="data",
    )
    fill: str = flag(
        "none",
        "empty CSV cells: none = error naming row and column, ffill = carry the previous "
        "value forward",
        choices=("none", "ffill"),
        group="data",
    )
    future_features: tuple[str, ...] = flag(
        (),
        "known-future calendar features of the horizon steps, from hour, weekday, month, "
        "day_of_month, day_of_year, or none",
        none="none",
        group="data",
    )
    synthetic_rows: int = flag(8760, "hourly rows of the built-in generator", group="data")
    epochs: int = flag(10, "epochs at most", group="training")
    batch_size: int = flag(128, "windows per batch", group="training")
    lr: float = flag(1e-3, "Adam learning rate", group="training")
    lr_decay: float = flag(
        0.8, "per-epoch learning-rate factor after --warm-epochs", group="training"
    )
    warm_epochs: int = flag(2, "epochs at the full learning rate", group="training")
    patience: int = flag(
        3, "early stopping: epochs without a better validation loss", group="training"
    )
    clip: float = flag(1.0, "gradient-norm clip", group="training")
    # what early stopping and the kept epoch compare on validation too
    loss: str = flag(
        "mae",
        "point-forecast loss (mse+mae: their mean); early stopping compares its validation value",
        choices=LOSSES,
        group="training",
    )
    quantile_weight: float = flag(
        1.0, "pinball loss weight next to the point loss", group="training"
    )
    seed: int = flag(0, "random seed", group="training")
    device: str = flag("cpu", "cpu or cuda", group="training")
    threads: int = flag(0, "torch CPU threads; 0 = torch's choice", group="training")
    plot_windows: int = 4

    def __post_init__(self) -> None:
        _check(self.loss in LOSSES, f"loss must be one of {', '.join(LOSSES)}, not {self.loss!r}")
        _check(
            self.features in ("M", "S", "MS"), f"features must be M, S or MS, not {self.features!r}"
        )
        _check(self.fill in ("none", "ffill"), f"fill must be none or ffill, not {self.fill!r}")
        for name in ("epochs", "batch_size", "synthetic_rows"):
            _check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        _check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        _check(self.threads >= 0, f"threads must be >= 0, got {self.threads}")
