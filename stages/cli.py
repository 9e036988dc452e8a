"""`ship`: one subcommand per DVC stage, plus `pretrain-demo` (makes the shipped demo weights; no stage). Every command
validates the whole params file (plus any --set overrides) before doing anything; bad params exit with code 2 and a
message naming the key and value. Expected failures (a missing file, a damaged store, weights that cannot be loaded)
print one line and exit 1; `--debug` (or SHIP_DEBUG=1) shows the traceback instead."""

from __future__ import annotations

import logging
import os
import sys

# Before torch loads libgomp: idle OpenMP threads sleep instead of spinning, so a stage beside a busy neighbour
# process (or its own DataLoader workers) does not burn the cores it waits for.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from pipeline.layout import Layout
from pipeline.params import Params, ParamsError, load_params

app = typer.Typer(
    help="SHIP feature-caching pipeline. Each command is one DVC stage (see dvc.yaml; `dvc repro` runs them all), "
    "except pretrain-demo, which makes the shipped demo weights (`make demo-weights`).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class ProtocolName(StrEnum):
    base_to_new = "base_to_new"
    cross_dataset = "cross_dataset"
    gzsl = "gzsl"


ParamsPath = Annotated[
    Path, typer.Option("--params", "-p", help="params file validated against the schema before anything runs")
]
Overrides = Annotated[
    list[str] | None,
    typer.Option("--set", "-S", help="override a param, e.g. -S generator.epochs=5 (repeatable; value is YAML)"),
]
Debug = Annotated[bool, typer.Option("--debug", help="show the traceback of a failure (also: SHIP_DEBUG=1)")]
DatasetName = Annotated[str, typer.Option("--dataset", "-d", help="dataset name (a key of `datasets` in params)")]
Seed = Annotated[int, typer.Option("--seed", help="replicate seed (one of `seeds`)")]
ProtocolOption = Annotated[
    ProtocolName, typer.Option("--protocol", help="experiment family: base_to_new, cross_dataset or gzsl")
]
Target = Annotated[
    str | None,
    typer.Option("--target", help="cross_dataset only: the target dataset (omit for the source-only fits)"),
]
WorkDir = Annotated[Path, typer.Option("--workdir", help="repository root the data/, results/ paths are relative to")]
Nproc = Annotated[
    int,
    typer.Option(
        "--nproc",
        envvar="SHIP_EXTRACT_NPROC",
        min=1,
        help="processes on this machine sharing the blocks of the store (one per GPU, each on cuda:<local rank>; on "
        "CPUs they share the cores); the store is identical to a one-process one. Under torchrun leave it at 1: "
        "torchrun starts the ranks (README: many GPUs, many machines)",
    ),
]


def _setup_logging() -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(show_path=False)])


def _params(path: Path, overrides: list[str] | None) -> Params:
    try:
        return load_params(path, overrides or [])
    except ParamsError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None


def _debugging(debug: bool) -> bool:
    return debug or os.environ.get("SHIP_DEBUG", "") not in ("", "0")


def _run(step: Callable[[], None], debug: bool) -> None:
    """Run a stage; expected failures (bad inputs, damaged outputs, a full disk) print one clear line and exit 1,
    bad params exit 2 (the traceback with --debug or SHIP_DEBUG=1)."""
    from pipeline.errors import describe, is_expected

    _setup_logging()
    try:
        step()
    except ParamsError as err:
        if _debugging(debug):
            raise
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    except Exception as err:
        if _debugging(debug) or not is_expected(err):
            if isinstance(err, EOFError):  # click would print only "Aborted!" for it: show the traceback instead
                raise RuntimeError(f"unexpected end of file: {err}") from err
            raise
        typer.echo(f"error: {describe(err)}", err=True)
        raise typer.Exit(1) from None


def _rank_step(fn: Callable[..., None], args: tuple, debug: bool) -> None:
    """One rank of `ship extract-* --nproc N` (a spawned process): the stage, failing as the CLI fails."""
    try:
        _run(lambda: fn(*args), debug)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)


def _run_ranks(nproc: int, fn: Callable[..., None], args: tuple, debug: bool) -> None:
    """Run an extract stage in this process (also when torchrun started it as one rank of a job), or spawn
    `nproc` ranks of one job on this machine."""
    if nproc == 1 or "WORLD_SIZE" in os.environ:
        if nproc > 1:
            typer.echo("note: started by torchrun (WORLD_SIZE is set): --nproc is ignored", err=True)
        _run(lambda: fn(*args), debug)
        return
    from pipeline.extract import RankError, spawn_ranks

    _setup_logging()
    logging.getLogger(__name__).info("starting %d ranks on this machine", nproc)
    try:
        spawn_ranks(nproc, _rank_step, fn, args, debug)
    except RankError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None


def _check_seed(p: Params, seed: int) -> None:
    if seed not in p.seeds:
        typer.echo(f"error: seed {seed} is not in params seeds {list(p.seeds)}", err=True)
        raise typer.Exit(2)


@app.command()
def validate(
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
    dataset: Annotated[
        str | None, typer.Option("--dataset", "-d", help="print the params resolved for this dataset only")
    ] = None,
) -> None:
    """Validate the params file (and overrides) and print, per dataset, the params resolved with its preset."""
    import json

    p = _params(params, overrides)
    names = [dataset] if dataset else list(p.datasets)
    try:
        resolved = {
            name: {"preset": p.preset_name(name), **p.for_dataset(name).model_dump(mode="json")} for name in names
        }
    except ParamsError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(resolved if resolved else p.model_dump(mode="json"), indent=2))


@app.command("demo-world")
def demo_world(
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
    out: Annotated[Path, typer.Option(help="directory the demo datasets are written to")] = Path("data/demo/world"),
    debug: Debug = False,
) -> None:
    """Generate the embedded demo datasets (their benchmark domain; the web domain is only for `pretrain-demo`).

    Runs only when a dataset of the params lives in OUT; otherwise writes a marker saying it was not needed."""
    p = _params(params, overrides)
    from stages import demo_world as stage

    _run(lambda: stage.run(p, out), debug)


@app.command("pretrain-demo")
def pretrain_demo(
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
    out: Annotated[Path, typer.Option(help="directory the weights and provenance.json go to")] = Path(
        "data/demo/backbone"
    ),
    world: Annotated[
        Path | None,
        typer.Option(help="render the pre-training world here and keep it (default: a temporary directory)"),
    ] = None,
    from_checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="do not train: export these weights instead (a safetensors file this command wrote, or a float32 "
            "open_clip checkpoint of ship-demo-rn that records its recipe), trained with the params' recipe by the "
            "same pre-training code"
        ),
    ] = None,
    training_figures: Annotated[
        Path | None,
        typer.Option(
            help="with --from-checkpoint: JSON with the figures of the run that trained it (a provenance.json, or "
            "the metrics file of the former demo_backbone stage): steps, loss, timings (CPU and versions: where the "
            "file does not record them, this machine's)"
        ),
    ] = None,
    debug: Debug = False,
) -> None:
    """Pre-train the demo CLIP (ship-demo-rn) once and write the shipped weights (not a DVC stage; `make
    demo-weights`).

    Renders the demo world (web domain included) into a scratch directory, pre-trains with the recipe in
    `demo.backbone` (~1-2 min per epoch on 2 cores), writes OUT/ship-demo-rn.safetensors (float16, an ordinary
    open_clip checkpoint) and OUT/provenance.json (recipe, web corpus, code hash, git revision, sha256, training and
    quality figures). Commit both; tests/test_demo_weights.py checks they match the code and params."""
    p = _params(params, overrides)
    from stages import pretrain_demo as stage

    _run(
        lambda: stage.run(p, out, world=world, from_checkpoint=from_checkpoint, training_figures=training_figures),
        debug,
    )


@app.command("extract-eval")
def extract_eval(
    dataset: DatasetName,
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
    workdir: WorkDir = Path("."),
    nproc: Nproc = 1,
    debug: Debug = False,
) -> None:
    """Encode a dataset's test split (GZSL: test-seen + test-unseen) and build its zero-shot text classifiers
    (the preset's templates) into data/features/<dataset>/eval.zarr, shared by every seed and experiment.
    Atomic; a killed run resumes from its last block."""
    p = _params(params, overrides)
    from stages import extract as stage

    _run_ranks(nproc, stage.run_eval, (p, dataset, Layout(workdir)), debug)


@app.command("extract-train")
def extract_train(
    protocol: ProtocolOption,
    dataset: DatasetName,
    seed: Annotated[
        int | None,
        typer.Option("--seed", help="replicate seed: it draws the few-shot images (gzsl: none; every seen image)"),
    ] = None,
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
    workdir: WorkDir = Path("."),
    nproc: Nproc = 1,
    debug: Debug = False,
) -> None:
    """Encode one seed's training images (clean + augmented views) and validation images: CoOp's few-shot draw of
    the base classes (base_to_new) or of every class (cross_dataset); every seen-class image (gzsl)."""
    p = _params(params, overrides)
    if protocol != ProtocolName.gzsl:
        if seed is None:
            typer.echo(f"error: --seed is required for {protocol.value}", err=True)
            raise typer.Exit(2)
        _check_seed(p, seed)
    from stages import extract as stage

    _run_ranks(nproc, stage.run_train, (p, protocol.value, dataset, seed or 0, Layout(workdir)), debug)


@app.command("train-generator")
def train_generator(
    protocol: ProtocolOption,
    dataset: DatasetName,
    seed: Seed,
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
    workdir: WorkDir = Path("."),
    debug: Debug = False,
) -> None:
    """Train one seed's SHIP generator (a VAE with CLIP's frozen text tower as decoder) on cached features only.
    The epoch kept is the one with the lowest validation loss (generator.select=val) or the last."""
    p = _params(params, overrides)
    _check_seed(p, seed)
    from stages import train_generator as stage

    _run(lambda: stage.run(p, protocol.value, dataset, seed, Layout(workdir)), debug)


@app.command()
def synthesize(
    protocol: ProtocolOption,
    dataset: DatasetName,
    seed: Seed,
    target: Target = None,
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
    workdir: WorkDir = Path("."),
    debug: Debug = False,
) -> None:
    """Synthesize features for every label-only class (z ~ N(0, I), seeded) and describe their quality:
    new classes (base_to_new), unseen classes (gzsl), the target's classes (cross_dataset --target)."""
    p = _params(params, overrides)
    _check_seed(p, seed)
    from stages import synthesize as stage

    _run(lambda: stage.run(p, protocol.value, dataset, seed, target, Layout(workdir)), debug)


@app.command()
def finetune(
    protocol: ProtocolOption,
    dataset: DatasetName,
    seed: Seed,
    target: Target = None,
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
    workdir: WorkDir = Path("."),
    debug: Debug = False,
) -> None:
    """Fine-tune every method in finetune.methods for one seed on cached (and synthetic) features; select on
    validation data only (or the last epoch); score the protocol's test splits. cross_dataset without --target
    fits the source-only methods and saves them; with --target it scores them and trains the *_ship methods."""
    p = _params(params, overrides)
    _check_seed(p, seed)
    from stages import finetune as stage

    _run(lambda: stage.run(p, protocol.value, dataset, seed, target, Layout(workdir)), debug)


@app.command()
def verify(
    paths: Annotated[
        list[Path], typer.Argument(help="feature stores (*.zarr), or directories searched for them (e.g. data)")
    ],
    debug: Debug = False,
) -> None:
    """Check feature stores against the checksums recorded when they were completed: every file present, of its
    size and content, every array decodable. Prints one line per problem (exit 1) or one `ok` line per store."""
    from pipeline.feature_store import rebuild_hint, verify_store

    stores: list[Path] = []
    for path in paths:
        if (path / "zarr.json").exists() or path.suffix == ".zarr" or not path.is_dir():
            stores.append(path)
        else:
            found = sorted(
                p for p in path.rglob("*.zarr") if p.is_dir() and not any(a.suffix == ".zarr" for a in p.parents)
            )
            if not found:
                typer.echo(f"error: no feature store (*.zarr) under {path}", err=True)
                raise typer.Exit(1)
            stores += found
    damaged = []
    for store in stores:
        try:
            problems = verify_store(store)
        except OSError as err:
            if _debugging(debug):
                raise
            problems = [f"cannot be read ({err})"]
        if problems:
            damaged.append(store)
            for problem in problems:
                typer.echo(f"{store}: {problem}")
        else:
            typer.echo(f"ok: {store}")
    if damaged:
        fixes = "; ".join(f"{s}: {rebuild_hint(s)}" for s in damaged)
        typer.echo(f"error: {len(damaged)} of {len(stores)} store(s) damaged ({fixes})", err=True)
        raise typer.Exit(1)


@app.command()
def report(
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
    workdir: WorkDir = Path("."),
    out: Annotated[Path, typer.Option(help="directory for the tables, metrics and plot data")] = Path("reports"),
    debug: Debug = False,
) -> None:
    """Aggregate every per-seed result of the current params: Markdown tables (base-to-new in Table 1's shape,
    cross-dataset, GZSL, generator quality), DVC metrics (reports/metrics/*.json) and plot data."""
    p = _params(params, overrides)
    from stages import report as stage

    _run(lambda: stage.run(p, Layout(workdir), out), debug)


if __name__ == "__main__":
    app()
