"""`ship pretrain-demo` (`make demo-weights`; not a DVC stage): pre-train the demo CLIP once and write the shipped
weights and provenance.json (pipeline/demo/shipping.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.layout import DEFAULT_LAYOUT
from stages.command import Debug, Overrides, ParamsPath, load, run_step, stage_app


def pretrain_demo(
    params: ParamsPath = Path("params.yaml"),
    overrides: Overrides = None,
    out: Annotated[
        Path, typer.Option(help="Directory the weights and provenance.json go to.")
    ] = DEFAULT_LAYOUT.demo_backbone,
    world: Annotated[
        Path | None,
        typer.Option(help="Render the pre-training world here and keep it (default: a temporary directory)."),
    ] = None,
    from_checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="Do not train: export these weights instead (a safetensors file this command wrote, or a float32 "
            "open_clip checkpoint of ship-demo-rn that records its recipe), trained with the params' recipe by the "
            "same pre-training code."
        ),
    ] = None,
    training_figures: Annotated[
        Path | None,
        typer.Option(
            help="With --from-checkpoint: a JSON file with the figures of the run that trained it (a provenance.json, "
            "or the metrics file of an earlier pre-training run): steps, loss, timings."
        ),
    ] = None,
    debug: Debug = False,
) -> None:
    """Pre-train the demo CLIP (ship-demo-rn) once and write the shipped weights; not a DVC stage (`make
    demo-weights`). It renders the demo world (web domain included) into a scratch directory, pre-trains with the
    recipe in `demo.backbone`, writes OUT/ship-demo-rn.safetensors (float16, an ordinary open_clip checkpoint) and
    OUT/provenance.json (recipe, web corpus, code hash, git revision, sha256, training and quality figures). Commit
    both: tests/test_demo_weights.py checks that they match the code and the params."""
    from pipeline.demo.shipping import make_demo_weights

    p = load(params, overrides)
    step = lambda: make_demo_weights(  # noqa: E731
        p, out, world=world, from_checkpoint=from_checkpoint, training_figures=training_figures
    )
    run_step(step, debug)


if __name__ == "__main__":
    stage_app(pretrain_demo)()
