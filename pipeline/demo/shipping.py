"""Making the shipped demo weights (`ship pretrain-demo`, `make demo-weights`; not a DVC stage): pre-train the demo
CLIP once and write the weights + provenance.json (pipeline/demo/weights.py) into OUT, by default
data/demo/backbone, tracked in git.

Steps: render the demo world with the params' `demo.world` (web domain included) into a scratch directory; pre-train
`ship-demo-rn` with `demo.backbone` on its web domain (pipeline/demo/pretrain.py), or with `--from-checkpoint` take
weights an earlier run of the same recipe and code trained; write them as float16 safetensors; load that file back
through the pipeline's own backbone loader and measure it (web top-1, zero-shot per demo dataset); write
provenance.json. OUT is replaced as a whole, only once everything succeeded.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import open_clip
import torch

from pipeline.atomic_files import replace_dir
from pipeline.backbone import load_backbone
from pipeline.demo import weights
from pipeline.demo.pretrain import DEMO_MODEL, SHIPPED_DTYPE, read_weights, save_weights, train_backbone
from pipeline.demo.weights import PretrainError
from pipeline.demo.world import DATASETS, generate_world
from pipeline.params import BackboneParams, Params
from pipeline.presets import load_preset

log = logging.getLogger(__name__)

TRAINING_KEYS = (
    "trained_by",
    "steps",
    "final_loss",
    "train_seconds",
    "train_cpu_seconds",
    "images_per_second",
    "logit_scale",
    "torch_threads",
    "cpu",
    "torch",
    "open_clip",
)
TRAINED_HERE = "ship pretrain-demo"


def _rounded(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) >= 1 else round(value, 4)
    return value


def _training_figures(path: Path | None) -> dict[str, Any]:
    """The training figures of the run that made a checkpoint: a provenance.json ("training") or the metrics file
    the former in-DAG stage wrote ("demo_backbone")."""
    if path is None:
        return {}
    data = json.loads(Path(path).read_text())
    if isinstance(data.get("training"), dict):
        figures = data["training"]
    elif isinstance(data.get("demo_backbone"), dict):
        figures = {"trained_by": "ship demo-backbone (an earlier pre-training command)", **data["demo_backbone"]}
    else:
        raise PretrainError(f"{path} holds no training figures (no 'training' or 'demo_backbone' section)")
    return {k: figures[k] for k in TRAINING_KEYS if k in figures}


def make_demo_weights(
    params: Params,
    out: Path,
    *,
    world: Path | None = None,
    from_checkpoint: Path | None = None,
    training_figures: Path | None = None,
) -> dict[str, Any]:
    """Write OUT/ship-demo-rn.safetensors and OUT/provenance.json; returns the provenance."""
    recipe = params.demo.backbone
    if training_figures is not None and from_checkpoint is None:
        raise PretrainError("--training-figures only goes with --from-checkpoint")
    scratch = Path(tempfile.mkdtemp(prefix="ship-pretrain-demo-"))
    world_dir = Path(world) if world is not None else scratch / "world"
    try:
        started = time.perf_counter()
        generate_world(params.demo.world, world_dir, web=True)
        n_web, web_digest = weights.web_corpus_digest(world_dir)

        if from_checkpoint is None:
            model, figures = train_backbone(recipe, world_dir)
            state = model.state_dict()
            training: dict[str, Any] = {"source": "trained", "trained_by": TRAINED_HERE, **figures}
        else:
            state, trained_with = read_weights(from_checkpoint)
            if trained_with != recipe.model_dump():
                raise PretrainError(
                    f"{from_checkpoint} was trained with recipe {trained_with}, not the params' demo.backbone "
                    f"{recipe.model_dump()}"
                )
            log.info("exporting %s (trained with this recipe) instead of training", from_checkpoint)
            training = {"source": f"exported with --from-checkpoint {Path(from_checkpoint).name}"}
            training.update(_training_figures(training_figures))
        # Where the training figures do not say (a fresh run, or an old metrics file): this machine's.
        for key, value in (
            ("cpu", weights.cpu_model()),
            ("torch", torch.__version__),
            ("open_clip", open_clip.__version__),
        ):
            training.setdefault(key, value)

        staged = scratch / "backbone"
        path = staged / weights.WEIGHTS_FILE
        save_weights(state, path, recipe)
        # Measured as shipped: loaded back from the file through the pipeline's own loader (float16 -> float32).
        backbone = load_backbone(BackboneParams(model=DEMO_MODEL, pretrained=str(path), device="cpu"))
        t_eval = time.perf_counter()
        presets = {ds.name: _preset_templates(params, ds.name) for ds in DATASETS}
        quality = weights.quality_figures(backbone.model, backbone.preprocess, backbone.tokenizer, world_dir, presets)
        log.info("measured the shipped weights in %.1f s", time.perf_counter() - t_eval)

        hashes = weights.code_hashes()
        provenance = {
            "model": DEMO_MODEL,
            "weights": {
                "file": weights.WEIGHTS_FILE,
                "sha256": weights.file_sha256(path),
                "bytes": path.stat().st_size,
                "dtype": str(SHIPPED_DTYPE).removeprefix("torch."),
                "weights_id": backbone.weights_id,  # what feature stores record (sha256 over the loaded tensors)
            },
            "recipe": recipe.model_dump(),
            "web_corpus": {**weights.web_corpus_params(params.demo.world), "files": n_web, "sha256": web_digest},
            "code": {"sha256": weights.code_digest(hashes), "files": hashes},
            "git": weights.git_revision(),
            "training": _rounded(training),
            "quality": {
                "world": params.demo.world.model_dump(),  # the benchmark test splits the figures come from
                "templates": presets,
                **_rounded(quality),
            },
            "command_seconds": round(time.perf_counter() - started, 1),
            "python": platform.python_version(),
        }
        (staged / weights.PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        replace_dir(staged, out)
        _log_summary(provenance, out)
        return provenance
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _preset_templates(params: Params, name: str) -> list[str]:
    """The dataset's zero-shot templates as the DAG resolves them (params, else the dataset's preset)."""
    if name in params.datasets:
        return list(params.for_dataset(name).extract.templates or [])
    # A demo dataset the params do not list: the params' templates, else the demo preset's.
    return list(params.extract.templates or load_preset("demo")["extract"]["templates"])


def _log_summary(provenance: dict[str, Any], out: Path) -> None:
    q = provenance["quality"]
    zero_shot = "; ".join(
        f"{name} " + " / ".join(f"{k} {100 * v:.1f}" for k, v in figures.items())
        for name, figures in q["zero_shot"].items()
    )
    log.info(
        "wrote %s (%d bytes, sha256 %s): web top-1 %.1f%%, zero-shot (preset templates) %s; logit scale %.1f",
        out / weights.WEIGHTS_FILE,
        provenance["weights"]["bytes"],
        provenance["weights"]["sha256"],
        100 * q["web_top1"]["preset"],
        zero_shot,
        q["logit_scale"],
    )
