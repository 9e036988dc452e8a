"""`ship`: one subcommand per DVC stage. Every command validates the whole params file (plus any --set
overrides) before doing anything; bad params exit with code 2 and a message naming the key and value."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from pipeline.params import Params, ParamsError, load_params

app = typer.Typer(
    help="SHIP feature-caching pipeline. Each command is one DVC stage (see dvc.yaml); `dvc repro` runs them all.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsPath = Annotated[
    Path, typer.Option("--params", "-p", help="params file validated against the schema before anything runs")
]
Overrides = Annotated[
    list[str] | None,
    typer.Option("--set", "-S", help="override a param, e.g. -S generator.epochs=5 (repeatable; value is YAML)"),
]

# The feature store is read by four stages: one option definition, one default (dvc.yaml spells it out too).
FeatureStorePath = Annotated[Path, typer.Option("--features", help="feature store (extract's output)")]
FEATURE_STORE = Path("data/features/features.zarr")


def _setup_logging() -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(show_path=False)])


def _params(path: Path, overrides: list[str] | None) -> Params:
    try:
        return load_params(path, overrides or [])
    except ParamsError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None


def _run(step: Callable[[], None]) -> None:
    """Run a stage; expected failures (bad files, missing weights, ...) print one clear line, exit 1."""
    from pipeline.errors import EXPECTED_ERRORS

    _setup_logging()
    try:
        step()
    except EXPECTED_ERRORS as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None


@app.command()
def validate(params: ParamsPath = Path("params.yaml"), overrides: Overrides = None) -> None:
    """Validate the params file (and overrides) and print the resolved params as JSON."""
    typer.echo(_params(params, overrides).model_dump_json(indent=2))


@app.command("demo-world")
def demo_world(
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
    out: Annotated[Path, typer.Option(help="directory the demo dataset is written to")] = Path("data/demo/world"),
) -> None:
    """Generate the embedded demo dataset (web + benchmark domains, CoOp split-file layout).

    Runs only when the params use the demo (dataset.kind=demo, or the demo backbone, which is pre-trained on
    it); otherwise writes a marker saying it was not needed."""
    p = _params(params, overrides)
    from stages import demo_world as stage

    _run(lambda: stage.run(p, out))


@app.command("demo-backbone")
def demo_backbone(
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
    world: Annotated[Path, typer.Option(help="demo dataset directory (demo-world's output)")] = Path("data/demo/world"),
    out: Annotated[Path, typer.Option(help="directory the checkpoint goes to")] = Path("data/demo/backbone"),
    metrics: Annotated[Path, typer.Option(help="pre-training figures: zero-shot accuracy, timings")] = Path(
        "metrics/demo_backbone.json"
    ),
) -> None:
    """Pre-train the demo CLIP backbone contrastively on the demo's web domain.

    Runs only when backbone.pretrained points into OUT (the default params); with real weights it writes a
    marker and does nothing else."""
    p = _params(params, overrides)
    from stages import demo_backbone as stage

    _run(lambda: stage.run(p, world, out, metrics))


@app.command()
def extract(
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
    out: Annotated[Path, typer.Option(help="Zarr feature store to write")] = FEATURE_STORE,
) -> None:
    """Encode every split (train: clean + augmented views; val; test) with the frozen image encoder into a
    Zarr store, with the zero-shot text classifier. Atomic; a killed run resumes from its last block."""
    p = _params(params, overrides)
    from stages import extract as stage

    _run(lambda: stage.run(p, out))


@app.command("train-generator")
def train_generator(
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
    features: FeatureStorePath = FEATURE_STORE,
    out: Annotated[Path, typer.Option(help="generator checkpoint to write")] = Path("data/generator/generator.pt"),
    curve: Annotated[Path, typer.Option(help="per-epoch train/val losses (DVC plot)")] = Path(
        "plots/generator_loss.csv"
    ),
) -> None:
    """Train the SHIP generator (VAE with CLIP's frozen text tower as decoder) on cached features only.
    The epoch kept is the one with the lowest validation loss."""
    p = _params(params, overrides)
    from stages import train_generator as stage

    _run(lambda: stage.run(p, features, out, curve))


@app.command()
def synthesize(
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
    features: FeatureStorePath = FEATURE_STORE,
    generator: Annotated[Path, typer.Option(help="generator checkpoint")] = Path("data/generator/generator.pt"),
    out: Annotated[Path, typer.Option(help="Zarr store of synthetic features")] = Path("data/synthetic/synthetic.zarr"),
    metrics: Annotated[Path, typer.Option(help="generator quality metrics (DVC metrics)")] = Path(
        "metrics/generator.json"
    ),
) -> None:
    """Synthesize features for every label-only class (z ~ N(0, I), seeded) and score their quality."""
    p = _params(params, overrides)
    from stages import synthesize as stage

    _run(lambda: stage.run(p, features, generator, out, metrics))


@app.command()
def finetune(
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
    features: FeatureStorePath = FEATURE_STORE,
    synthetic: Annotated[Path, typer.Option(help="synthetic feature store")] = Path("data/synthetic/synthetic.zarr"),
    results: Annotated[Path, typer.Option(help="directory for per-seed results, curves, per-class accuracy")] = Path(
        "results"
    ),
    metrics: Annotated[Path, typer.Option(help="fine-tuning metrics (DVC metrics)")] = Path("metrics/finetune.json"),
    plots: Annotated[Path, typer.Option(help="directory for per-method curve and per-class CSVs (DVC plots)")] = Path(
        "plots"
    ),
) -> None:
    """Fine-tune every method in finetune.methods for every seed on cached (and synthetic) features;
    select on validation data only; evaluate base-to-new, joint label space and optional transfer."""
    p = _params(params, overrides)
    from stages import finetune as stage

    _run(lambda: stage.run(p, features, synthetic, results, metrics, plots))


@app.command()
def report(
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
    metrics: Annotated[Path, typer.Option(help="fine-tuning metrics")] = Path("metrics/finetune.json"),
    generator_metrics: Annotated[Path, typer.Option(help="generator metrics")] = Path("metrics/generator.json"),
    results: Annotated[Path, typer.Option(help="finetune's results directory")] = Path("results"),
    out: Annotated[Path, typer.Option(help="directory for the Markdown table and plot data")] = Path("reports"),
) -> None:
    """Render the paper-style table (methods x base/new/H) and plot data from the metrics."""
    p = _params(params, overrides)
    from stages import report as stage

    _run(lambda: stage.run(p, metrics, generator_metrics, results, out))


if __name__ == "__main__":
    app()
