"""What every stage's command shares: its options, params loading, and how failures exit.

Each stage module (stages/<name>.py) defines its typer command and runs as its own script (`python -m
stages.<name>`, as dvc.yaml calls it), so a stage's code dependencies are exactly its module's import closure;
`ship` (stages/cli.py) gathers the same commands for people. Exit codes: 2 for bad params (the message names the key
and value), 1 for expected failures (a missing file, a damaged store, weights that cannot be loaded; one line, the
traceback with --debug or SHIP_DEBUG=1).
"""

from __future__ import annotations

import logging
import os

# Before torch loads libgomp: idle OpenMP threads sleep instead of spinning, so a stage beside a busy neighbour
# process (or its own DataLoader workers) does not burn the cores it waits for.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from pipeline.layout import PROTOCOLS
from pipeline.params import Params, ParamsError, load_params

# One enum member per experiment family, straight from the layout (the one list of them).
ProtocolName = StrEnum("ProtocolName", {name: name for name in PROTOCOLS})

ParamsPath = Annotated[
    Path, typer.Option("--params", "-p", help="Params file, validated against the schema before anything runs.")
]
Overrides = Annotated[
    list[str] | None,
    typer.Option("--set", "-S", help="Override a param, e.g. -S generator.epochs=5 (repeatable; the value is YAML)."),
]
Debug = Annotated[bool, typer.Option("--debug", help="Show the traceback of a failure (also: SHIP_DEBUG=1).")]
DatasetName = Annotated[str, typer.Option("--dataset", "-d", help="Dataset name: a key of `datasets` in params.")]
Seed = Annotated[int, typer.Option("--seed", help="Replicate seed: one of `seeds` in params.")]
ProtocolOption = Annotated[ProtocolName, typer.Option("--protocol", help=f"Experiment family: {', '.join(PROTOCOLS)}.")]
Target = Annotated[
    str | None,
    typer.Option("--target", help="cross_dataset only: the target dataset (omit it for the source-only fits)."),
]
WorkDir = Annotated[
    Path, typer.Option("--workdir", help="Repository root that the data/ and results/ paths are relative to.")
]


def new_app(help_text: str) -> typer.Typer:
    """A typer app with plain help (whole sentences re-wrapped to the terminal, no type noise)."""
    return typer.Typer(
        help=help_text,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
    )


def stage_app(*commands: Callable[..., None], help_text: str | None = None) -> typer.Typer:
    """The app a stage module runs as a script: its command(s), by the names `ship` gives them."""
    app = new_app(help_text or " ".join((commands[0].__doc__ or "").split()))
    for command in commands:
        register(app, command)
    return app


def register(app: typer.Typer, command: Callable[..., None]) -> None:
    """Add `command` under its dashed name, listed by the first sentence of its docstring (whole, not cut)."""
    doc = " ".join((command.__doc__ or "").split())
    app.command(command.__name__.replace("_", "-"), short_help=doc.split(". ")[0].rstrip(".") + ".")(command)


def setup_logging() -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(show_path=False)])


def load(path: Path, overrides: list[str] | None) -> Params:
    """The validated params, or exit 2 with the message naming the bad key and value."""
    try:
        return load_params(path, overrides or [])
    except ParamsError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None


def check_seed(params: Params, seed: int) -> None:
    if seed not in params.seeds:
        typer.echo(f"error: seed {seed} is not in params seeds {list(params.seeds)}", err=True)
        raise typer.Exit(2)


def debugging(debug: bool) -> bool:
    return debug or os.environ.get("SHIP_DEBUG", "") not in ("", "0")


def run_step(step: Callable[[], None], debug: bool) -> None:
    """Run a stage; expected failures (bad inputs, damaged outputs, a full disk) print one clear line and exit 1,
    bad params exit 2 (the traceback with --debug or SHIP_DEBUG=1)."""
    from pipeline.errors import describe, is_expected

    setup_logging()
    try:
        step()
    except ParamsError as err:
        if debugging(debug):
            raise
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    except Exception as err:
        if debugging(debug) or not is_expected(err):
            if isinstance(err, EOFError):  # click would print only "Aborted!" for it: show the traceback instead
                raise RuntimeError(f"unexpected end of file: {err}") from err
            raise
        typer.echo(f"error: {describe(err)}", err=True)
        raise typer.Exit(1) from None
