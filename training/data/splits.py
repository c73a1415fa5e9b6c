"""Train/val/test row ranges, with the input-window overlap of the reference code.

ETT (docs/forecasting.md, "ETTh1 benchmark"; identical in Informer, Autoformer, DLinear,
PatchTST and SegRNN):
    border1s = [0, 12*30*24 - L, 12*30*24 + 4*30*24 - L]
    border2s = [12*30*24, 12*30*24 + 4*30*24, 12*30*24 + 8*30*24]   (x4 for 15-minute data)
Other data ("custom" in the reference code): 70% train, 20% test, the rest validation, each
val/test slice starting L rows early so its first target window begins at the border.
"""

from __future__ import annotations

from dataclasses import dataclass

ETT_STEPS_PER_HOUR = {"etth1": 1, "etth2": 1, "ettm1": 4, "ettm2": 4}
TRAIN_SHARE, TEST_SHARE = 0.7, 0.2  # of the rows, for any other series; validation the rest


@dataclass(frozen=True)
class Split:
    """Row ranges [start, stop) of each part; val/test include the L rows before their border."""

    train: tuple[int, int]
    val: tuple[int, int]
    test: tuple[int, int]

    def part(self, name: str) -> tuple[int, int]:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


def ett_split(name: str, input_len: int, n_rows: int) -> Split:
    """The standard 12/4/4-month split of an ETT file (only the first 20 months are used)."""
    month = 30 * 24 * ETT_STEPS_PER_HOUR[name]
    border1s = [0, 12 * month - input_len, 12 * month + 4 * month - input_len]
    border2s = [12 * month, 12 * month + 4 * month, 12 * month + 8 * month]
    if n_rows < border2s[-1]:
        raise ValueError(f"{name} needs {border2s[-1]} rows for the standard split, has {n_rows}")
    return Split(*zip(border1s, border2s, strict=True))


def ratio_split(n_rows: int, input_len: int) -> Split:
    """70/10/20 split of any series, as the reference code's custom loader does."""
    n_train, n_test = int(n_rows * TRAIN_SHARE), int(n_rows * TEST_SHARE)
    n_val = n_rows - n_train - n_test
    border1s = [0, n_train - input_len, n_rows - n_test - input_len]
    border2s = [n_train, n_train + n_val, n_rows]
    return Split(*zip(border1s, border2s, strict=True))


def split_for(data: str, input_len: int, n_rows: int) -> Split:
    """The split of `--data`: ETT's standard borders for an ETT file, else 70/10/20."""
    name = data.lower()
    if name in ETT_STEPS_PER_HOUR:
        return ett_split(name, input_len, n_rows)
    return ratio_split(n_rows, input_len)
