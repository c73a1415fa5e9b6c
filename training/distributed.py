"""Data-parallel training under `torchrun`: who this process is, its share of each batch, and
what rank 0 decides for every rank.

`torchrun --standalone --nproc_per_node N -m seqserve train forecaster|translator ...` starts
N copies of the same command, with RANK, WORLD_SIZE and LOCAL_RANK in their environment. Every
copy loads the same data and draws the same batches in the same order (same seed); each trains
on its share of every batch, and DistributedDataParallel averages the gradients, so N
processes take the optimizer steps one process takes on the whole batch: the batch flags
(`--batch-size`, `--max-tokens`) stay global, and the same command gives the same model
whatever N is. Rank 0 alone evaluates, decides what must agree (the end of a time budget,
early stopping, the kept weights), shows progress and writes. Gloo on CPU, NCCL on CUDA (one
GPU per process: cuda:LOCAL_RANK). Without torchrun, or with one process, the world has size 1
and nothing here does anything.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import distributed as dist
from torch import nn

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one that evaluates, decides, shows progress and writes."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1

    def device(self, name: str) -> str:
        """This process's device: under CUDA each process has its own GPU."""
        if self.parallel and name.startswith("cuda"):
            return f"cuda:{self.local_rank}"
        return name


SINGLE = World()


def launched_main() -> bool:
    """Whether this process is rank 0 of its torchrun launch, or not launched by torchrun:
    for what a command says before it joins the group (every rank runs the whole command)."""
    return os.environ.get("RANK", "0") == "0"


@contextmanager
def joined(device: str) -> Iterator[World]:
    """The world torchrun launched this process into (its process group joined for the
    duration), or SINGLE when it did not, or launched one process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        yield SINGLE
        return
    world = World(int(os.environ["RANK"]), size, int(os.environ["LOCAL_RANK"]))
    cuda = device.startswith("cuda")
    if cuda:
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available to torch")
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield world
    finally:
        leave(world)


def leave(world: World) -> None:
    """Every rank leaves the group together, once training is done (the trainers call this
    before rank 0 evaluates and writes alone; `joined` calls it if they did not). A rank that
    tore its group down while another was still in it aborted now and then in gloo's
    teardown ("terminate called without an active exception")."""
    if world.parallel and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def wrap(world: World, module: nn.Module) -> nn.Module:
    """`module` as DistributedDataParallel when there are several processes (its forward then
    averages the gradients of the backward that follows), else `module` itself."""
    if not world.parallel:
        return module
    on_cuda = next(module.parameters()).is_cuda
    return nn.parallel.DistributedDataParallel(
        module, device_ids=[world.local_rank] if on_cuda else None
    )


def share(world: World, batch: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, float]:
    """This rank's part of a global batch, and the weight of its mean loss.

    Every rank holds the same `batch` (item indices); `counts` holds what each item adds to the
    loss's mean (1 a window; a pair's target tokens). Ranks take every N-th item, so a batch
    sorted by length splits evenly. DDP averages the ranks' gradients, so a part's mean loss,
    weighed by N x its count / the batch's count, gives the batch's mean over all its items
    exactly, however unevenly it split. A rank whose part is empty takes the first item at
    weight 0: DDP needs a forward and a backward from every rank."""
    if not world.parallel:
        return batch, 1.0
    mine = slice(world.rank, None, world.size)
    if len(batch[mine]) == 0:
        return batch[:1], 0.0
    return batch[mine], world.size * float(counts[mine].sum()) / float(counts.sum())


def decide(world: World, value: T) -> T:
    """Rank 0's `value` on every rank. A collective: every rank calls it at the same point."""
    if not world.parallel:
        return value
    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def from_main(world: World, make: Callable[[], T]) -> T:
    """What `make` returns on rank 0, made there only and sent to every rank (a tokenizer
    trained once; one sample of a random segmentation)."""
    return decide(world, make() if world.main else None)  # type: ignore[arg-type]


def total(world: World, value: float) -> float:
    """The sum of `value` over the ranks."""
    if not world.parallel:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return float(t.item())
