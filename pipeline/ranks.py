"""The ranks of a multi-process extraction: this process's place in a torchrun job (`Ranks`, `rank_context`), and
`spawn_ranks`, which starts such a job on this machine without torchrun. `pipeline/extract.py` shares out the blocks
of a store over the ranks."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from pipeline.errors import ExpectedError
from pipeline.machine import available_cores


class RankError(ExpectedError, RuntimeError):
    """A multi-process extraction is misconfigured, or one of its ranks failed."""


@dataclass(frozen=True)
class Ranks:
    """This process's place in a multi-process extraction: torchrun's RANK, WORLD_SIZE and LOCAL_RANK.

    The blocks of a store are shared out over the ranks; each encodes its own on its own device and writes them into
    the one store (every block is its own shard file); rank 0 prepares the store and finalizes it."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Ranks:
        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local = int(os.environ.get("LOCAL_RANK", str(rank)))
        except ValueError as err:
            raise RankError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers: {err}") from None
        if world < 1 or not 0 <= rank < world or local < 0:
            raise RankError(f"RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local} do not describe a rank of a job")
        return cls(rank, world, local)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if not self.distributed:
            return
        import torch.distributed as dist

        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[self.local_rank])
        else:
            dist.barrier()

    def __str__(self) -> str:
        return f"rank {self.rank} of {self.world_size}"


# A barrier waits for the slowest rank: on CPUs a block of 1024 images x 11 views can take hours.
BARRIER_TIMEOUT = timedelta(hours=24)


@contextmanager
def rank_context(requested_device: str) -> Iterator[tuple[Ranks, torch.device | None]]:
    """Join the job this process is a rank of (torchrun's environment variables; none: a job of one) and pick its
    device: cuda:LOCAL_RANK when CUDA is used, else the CPU. Yields (ranks, device); device None for a job of one
    (the backbone params decide). The process group (nccl on CUDA, gloo on CPU) is left when the block exits."""
    ranks = Ranks.from_env()
    if not ranks.distributed:
        yield ranks, None
        return
    import torch.distributed as dist

    from pipeline.backbone import resolve_device

    device = resolve_device(requested_device)
    if device.type == "cuda":
        if ranks.local_rank >= torch.cuda.device_count():
            raise RankError(
                f"LOCAL_RANK {ranks.local_rank} but this node has {torch.cuda.device_count()} CUDA device(s): "
                f"start at most one process per GPU (--nproc_per_node)"
            )
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    joined = not dist.is_initialized()
    if joined:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=BARRIER_TIMEOUT, device_id=device if device.type == "cuda" else None)
    try:
        yield ranks, device
    finally:
        if joined:
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_entry(local_rank: int, nproc: int, port: int, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    os.environ.update(
        RANK=str(local_rank),
        WORLD_SIZE=str(nproc),
        LOCAL_RANK=str(local_rank),
        LOCAL_WORLD_SIZE=str(nproc),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    if not torch.cuda.is_available():  # CPU ranks share the cores (torchrun sets OMP_NUM_THREADS=1 likewise)
        torch.set_num_threads(max(1, available_cores() // nproc))
    fn(*args)


def spawn_ranks(nproc: int, fn: Callable[..., Any], *args: Any) -> None:
    """Run `fn(*args)` in `nproc` new processes on this machine as the ranks of one job, with the environment
    `torchrun --standalone --nproc_per_node nproc` gives them. `fn` must be importable (it is pickled by name).
    Waits for all; if one fails the others are stopped and RankError names it."""
    port = _free_port()
    try:
        torch.multiprocessing.start_processes(
            _rank_entry, args=(nproc, port, fn, args), nprocs=nproc, join=True, start_method="spawn"
        )
    except torch.multiprocessing.ProcessExitedException as err:
        raise RankError(f"rank {err.error_index} of {nproc} exited with code {err.exit_code}") from None
    except torch.multiprocessing.ProcessRaisedException as err:
        last = str(err).strip().splitlines()[-1] if str(err).strip() else "an exception"
        raise RankError(f"rank {err.error_index} of {nproc} failed: {last}") from err
