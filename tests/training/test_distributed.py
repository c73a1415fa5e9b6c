"""Training under torchrun (training/distributed.py): N processes take the optimizer steps one
process takes on the same global batch, and rank 0 alone decides and writes.

The runs use the CLI, as users do: `python -m torch.distributed.run` is `torchrun`. Two gloo
processes on CPU, dropout off, against one plain process with the same flags.

Tolerances: the forecaster's weights agree to 1e-5 after two epochs (1.2e-7 after three). The
translator's agree to 1e-3 after 10 steps (measured 3.1e-5; 5.4e-4 after 30): Adam divides
each gradient by its own running scale, so a component whose gradient is rounding noise (its
attention key biases have a gradient of exactly 0 in exact arithmetic: softmax ignores a
constant added to every score) takes steps of about the learning rate whose sign the order of
summation decides, and the differences grow from there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, free_port
from training import distributed
from training.distributed import World

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
FORECASTER = [
    *("train", "forecaster", "--data", "synthetic", "--synthetic-rows", "2000"),
    *("--input-len", "48", "--horizon", "24", "--d-model", "32", "--seg-len", "24"),
    *("--epochs", "2", "--batch-size", "32", "--dropout", "0", "--threads", "1", "--quiet"),
]
TRANSLATOR = [
    *("train", "translator", "--preset", "tiny", "--max-steps", "10", "--eval-every", "5"),
    *("--length-penalty-grid", "0", "--quiet"),
]
WORDS = ["ka", "lo", "mi", "nu", "pe", "ra", "si", "tu", "vo", "ze"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """A small TSV corpus (reverse the words): a user's corpus is scored on its own test split,
    without the numbers corpus's extra sets, so a run takes seconds."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("corpus") / "pairs.tsv"
    lines = []
    for _ in range(2000):
        words = list(rng.choice(WORDS, int(rng.integers(2, 7))))
        lines.append(f"{' '.join(words)}\t{' '.join(reversed(words))}\n")
    path.write_text("".join(lines))
    return ["--data", str(path)]


def seqserve(args: list[str], out: Path, processes: int = 0) -> str:
    """Run `seqserve ARGS --out OUT`, plainly or under torchrun with `processes`; its stdout."""
    launcher = [*TORCHRUN, str(processes)] if processes else [sys.executable]
    run = subprocess.run(
        [*launcher, "-m", "seqserve", *args, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")},
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout


def largest_difference(one: Path, two: Path) -> float:
    a, b = (torch.load(d / "checkpoint.pt", weights_only=False)["state_dict"] for d in (one, two))
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("n", range(1, 8))
def test_shares_cover_the_batch_and_weigh_to_its_mean(size: int, n: int) -> None:
    """Whatever the split, the parts' weighted mean losses average to the whole batch's mean;
    a rank left without items runs one at weight 0."""
    rng = np.random.default_rng(n)
    batch = rng.permutation(100)[:n]  # item indices
    counts = rng.integers(1, 9, n).astype(float)  # [n] what each item adds to the mean
    sums = rng.random(n) * counts  # [n] each item's summed loss
    taken, reduced = [], 0.0
    for rank in range(size):
        part, weight = distributed.share(World(rank, size), batch, counts)
        where = np.searchsorted(np.sort(batch), part)
        rows = np.argsort(batch)[where]  # positions of `part` in `batch`
        if weight == 0:
            assert n < size and len(part) == 1
            continue
        taken.extend(part)
        reduced += weight * sums[rows].sum() / counts[rows].sum()
    assert sorted(taken) == sorted(batch)
    assert reduced / size == pytest.approx(sums.sum() / counts.sum())


def test_one_process_is_left_alone() -> None:
    batch = np.arange(5)
    part, weight = distributed.share(distributed.SINGLE, batch, np.ones(5))
    assert part is batch and weight == 1.0
    assert distributed.decide(distributed.SINGLE, "x") == "x"
    with distributed.joined("cpu") as world:  # no torchrun in this environment
        assert world == distributed.SINGLE and not world.parallel


def _agree(rank: int, port: int, seen: dict) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank)
    )
    os.environ["WORLD_SIZE"] = "2"
    made = []
    with distributed.joined("cpu") as world:
        seen[rank] = (
            distributed.decide(world, f"rank {rank}"),
            distributed.from_main(world, lambda: made.append(rank) or f"made by {rank}"),
            distributed.total(world, rank + 1.5),
            made,
        )


def test_rank_0_decides_for_every_rank() -> None:
    """Two gloo processes: each gets rank 0's value, what only rank 0 makes, and the sum."""
    ctx = torch.multiprocessing.get_context("spawn")
    seen = ctx.Manager().dict()
    port = free_port()
    procs = [ctx.Process(target=_agree, args=(rank, port, seen)) for rank in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    assert seen[0] == ("rank 0", "made by 0", 4.0, [0])
    assert seen[1] == ("rank 0", "made by 0", 4.0, [])


@pytest.mark.slow
def test_two_processes_train_the_forecaster_one_process_trains(tmp_path: Path) -> None:
    seqserve(FORECASTER, tmp_path / "one")
    out = seqserve(FORECASTER, tmp_path / "two", processes=2)
    assert largest_difference(tmp_path / "one", tmp_path / "two") < 1e-5
    one, two = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert two["processes"] == 2 and one["processes"] == 1
    assert two["best_epoch"] == one["best_epoch"] and two["epochs"] == one["epochs"]
    assert two["test_mse"] == pytest.approx(one["test_mse"], rel=1e-4)
    assert out.count("test mse") == 1  # rank 0 alone reports


@pytest.mark.slow
def test_two_processes_train_the_translator_one_process_trains(
    tmp_path: Path, corpus: list[str]
) -> None:
    seqserve([*TRANSLATOR, *corpus], tmp_path / "one")
    out = seqserve([*TRANSLATOR, *corpus], tmp_path / "two", processes=2)
    assert largest_difference(tmp_path / "one", tmp_path / "two") < 1e-3
    one, two = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert two["processes"] == 2 and two["steps"] == one["steps"] == 10
    for a, b in zip(one["validation"], two["validation"], strict=True):
        assert a.get("val_loss") == pytest.approx(b.get("val_loss"), abs=1e-3)
    assert two["train_target_tokens"] == one["train_target_tokens"]  # the same global batches
    assert out.count('"bleu"') == 1  # rank 0 alone reports


@pytest.mark.slow
def test_rank_0s_clock_ends_a_time_budget_for_every_rank(tmp_path: Path, corpus: list[str]) -> None:
    """A budget far shorter than the steps asked for: both ranks stop at rank 0's step (a rank
    that went on alone would wait for the other forever, and the run would time out)."""
    args = [*TRANSLATOR, *corpus, "--max-steps", "100000", "--max-minutes", "0.004"]
    args += ["--patience", "1000"]
    seqserve(args, tmp_path / "two", processes=2)
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["stopped_by"] == "max_minutes" and 0 < metrics["steps"] < 100000


def test_only_rank_0_speaks_before_the_group_is_joined(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a command says before it joins torchrun's group (the preset it chose for a corpus)
    is said once: every rank runs the whole command."""
    monkeypatch.delenv("RANK", raising=False)
    assert distributed.launched_main()  # not launched by torchrun
    monkeypatch.setenv("RANK", "0")
    assert distributed.launched_main()
    monkeypatch.setenv("RANK", "1")
    assert not distributed.launched_main()
