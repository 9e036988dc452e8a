"""What the extract stages share: one process, or several ranks of one job (`--nproc N` spawns them here; torchrun
starts them itself). Every rank encodes its share of the store's blocks; the store is the same as one process makes
(pipeline/extract.py, pipeline/ranks.py)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Annotated

import typer

from stages.command import run_step, setup_logging

Nproc = Annotated[
    int,
    typer.Option(
        "--nproc",
        envvar="SHIP_EXTRACT_NPROC",
        min=1,
        help="Processes on this machine that share the store's blocks (one per GPU, each on cuda:<local rank>; on "
        "CPUs they share the cores). The store is identical to a one-process one. Under torchrun leave it at 1: "
        "torchrun starts the ranks.",
    ),
]


def _rank_step(fn: Callable[..., None], args: tuple, debug: bool) -> None:
    """One rank of `--nproc N` (a spawned process): the stage, failing as the command fails."""
    try:
        run_step(lambda: fn(*args), debug)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)


def run_ranks(nproc: int, fn: Callable[..., None], args: tuple, debug: bool) -> None:
    """Run an extract stage in this process (also when torchrun started it as one rank of a job), or spawn `nproc`
    ranks of one job on this machine."""
    if nproc == 1 or "WORLD_SIZE" in os.environ:
        if nproc > 1:
            typer.echo("note: started by torchrun (WORLD_SIZE is set): --nproc is ignored", err=True)
        run_step(lambda: fn(*args), debug)
        return
    from pipeline.ranks import RankError, spawn_ranks

    setup_logging()
    logging.getLogger(__name__).info("starting %d ranks on this machine", nproc)
    try:
        spawn_ranks(nproc, _rank_step, fn, args, debug)
    except RankError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
