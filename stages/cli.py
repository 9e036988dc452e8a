"""`ship`: every stage's command under one name, for people (dvc.yaml runs each stage module as its own script),
plus `validate` and `verify`. Bad params exit with code 2 and a message naming the key and value; expected failures
(a missing file, a damaged store, weights that cannot be loaded) print one line and exit 1; `--debug` (or
SHIP_DEBUG=1) shows the traceback instead."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline.params import ParamsError
from stages import (
    demo_world,
    extract_eval,
    extract_oracle,
    extract_train,
    finetune,
    pretrain_demo,
    report,
    synthesize,
    train_generator,
)
from stages.command import Debug, Overrides, ParamsPath, ProtocolName, debugging, load, new_app, register

__all__ = ["ProtocolName", "app"]

app = new_app(
    "SHIP feature-caching pipeline. Each stage command is one DVC stage (see dvc.yaml); `dvc repro` runs them all."
)

for command in (
    demo_world.demo_world,
    extract_eval.extract_eval,
    extract_train.extract_train,
    extract_oracle.extract_oracle,
    train_generator.train_generator,
    synthesize.synthesize,
    finetune.finetune,
    report.report,
    pretrain_demo.pretrain_demo,
):
    register(app, command)


def validate(
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
    dataset: Annotated[
        str | None, typer.Option("--dataset", "-d", help="Print the params resolved for this dataset only.")
    ] = None,
) -> None:
    """Validate the params file (and overrides) and print, per dataset, the params resolved with its preset."""
    p = load(params, overrides)
    names = [dataset] if dataset else list(p.datasets)
    try:
        resolved = {
            name: {"preset": p.preset_name(name), **p.for_dataset(name).model_dump(mode="json")} for name in names
        }
    except ParamsError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(resolved if resolved else p.model_dump(mode="json"), indent=2))


def verify(
    paths: Annotated[
        list[Path], typer.Argument(help="Feature stores (*.zarr), or directories searched for them (e.g. data).")
    ],
    debug: Debug = False,
) -> None:
    """Check feature stores against the checksums recorded when they were completed: every file present, of its
    size and content, every array decodable. Prints one line per problem (exit 1), or one `ok` line per store."""
    from pipeline.layout import find_stores, rebuild_hint
    from pipeline.store_integrity import verify_store

    stores: list[Path] = []
    for path in paths:
        found = find_stores(path)
        if not found:
            typer.echo(f"error: no feature store (*.zarr) under {path}", err=True)
            raise typer.Exit(1)
        stores += found
    damaged = []
    for store in stores:
        try:
            problems = verify_store(store)
        except OSError as err:
            if debugging(debug):
                raise
            problems = [f"cannot be read ({err})"]
        for problem in problems:
            typer.echo(f"{store}: {problem}")
        if problems:
            damaged.append(store)
        else:
            typer.echo(f"ok: {store}")
    if damaged:
        fixes = "; ".join(f"{s}: {rebuild_hint(s)}" for s in damaged)
        typer.echo(f"error: {len(damaged)} of {len(stores)} store(s) damaged ({fixes})", err=True)
        raise typer.Exit(1)


register(app, validate)
register(app, verify)

if __name__ == "__main__":
    app()
