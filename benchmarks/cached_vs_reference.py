"""Time SHIP's generator + CoOp+SHIP on cached features against the same work done the reference code's way.

The reference implementation runs the CLIP image encoder on freshly augmented images at every step of every
epoch. Here both paths run *the same* training code (`train_generator`, the `coop_ship` adapter), same backbone,
same epochs and batch sizes; the only difference is where a training feature comes from:

  cached     one draw from the K augmented views cached by `extract` (the extraction itself is timed too, so
             the one-off cost is counted, not hidden)
  reference  the image is loaded, augmented and encoded again whenever it is used

Run after `make repro` (it reads the demo world, the demo backbone and the feature store):

    .venv/bin/python benchmarks/cached_vs_reference.py --epochs 10
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Annotated

import torch
import typer

from pipeline.adapters import build_adapter
from pipeline.backbone import Backbone, load_backbone
from pipeline.datasets import load_dataset
from pipeline.datasets.fewshot import build_protocol_splits
from pipeline.extract import ViewsDataset, augmentation, encode_views, extract_features, plan_extraction
from pipeline.feature_store import FeatureStore
from pipeline.features import LabeledFeatures
from pipeline.generator_training import train_generator
from pipeline.params import load_params
from pipeline.synthesis import synthesize_features


@dataclasses.dataclass(frozen=True)
class EncodedOnTheFly(LabeledFeatures):
    """Training 'features' that are really images: every draw re-runs augmentation + the image encoder."""

    images: ViewsDataset | None = None
    backbone: Backbone | None = None
    batch_size: int = 64

    def sample_views(self, generator: torch.Generator) -> LabeledFeatures:
        assert self.images is not None and self.backbone is not None
        # A new seed per draw, so each epoch sees new augmentations, as in the reference code.
        self.images.seed = int(torch.randint(1 << 30, (1,), generator=generator))
        feats = []
        loader = torch.utils.data.DataLoader(self.images, batch_size=self.batch_size, num_workers=0)
        for _, views, _ in loader:
            feats.append(encode_views(self.backbone, views[:, 1:2])[:, 0])
        return LabeledFeatures(torch.cat(feats), self.labels)

    def to(self, device: torch.device | str) -> EncodedOnTheFly:
        return self


def _timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(
    params_path: Annotated[Path, typer.Option("--params", help="params file (the demo defaults)")] = Path(
        "params.yaml"
    ),
    features: Annotated[Path, typer.Option(help="feature store written by `dvc repro`")] = Path(
        "data/features/features.zarr"
    ),
    epochs: Annotated[int, typer.Option(help="epochs of both the generator and CoOp+SHIP")] = 10,
) -> None:
    """Print wall-clock seconds of both paths and the speed-up ratio (measured in this one run)."""
    torch.manual_seed(0)
    params = load_params(params_path)
    gen_params = params.generator.model_copy(update={"epochs": epochs})
    coop_params = params.finetune.model_copy(
        update={"coop": params.finetune.coop.model_copy(update={"epochs": epochs})}
    )
    backbone = load_backbone(params.backbone)
    tower = backbone.text_tower()
    store = FeatureStore.open(features, backbone.identity())
    task = store.task_features()

    # One-off cost of the cached path: extracting the training split with its K augmented views.
    dataset = load_dataset(params.dataset)
    protocol = build_protocol_splits(dataset, params.dataset)
    only_train = dataclasses.replace(protocol, val=protocol.val[:1], test=protocol.test[:1])
    plan = plan_extraction(dataset, only_train, params.dataset, params.extract, backbone)
    with tempfile.TemporaryDirectory() as tmp:
        t_extract, _ = _timed(lambda: extract_features(plan, backbone, params.extract, Path(tmp) / "f.zarr"))

    def run_both(train: LabeledFeatures) -> tuple[float, float]:
        t_gen, outcome = _timed(
            lambda: train_generator(train, task.val, task.classnames, tower, gen_params, backbone.device)
        )
        new = [c for c in range(len(task.classnames)) if c not in task.labeled]
        synthetic = synthesize_features(outcome.model, new, params.synthesize.per_class, params.synthesize.seed)
        ship_task = dataclasses.replace(task, train=train, synthetic=synthetic)
        adapter = build_adapter("coop_ship", coop_params)
        t_coop, _ = _timed(lambda: adapter.fit(ship_task, tower, seed=1))
        return t_gen, t_coop

    cached_gen, cached_coop = run_both(task.train)

    images = ViewsDataset(
        protocol.train,
        backbone.preprocess,
        augmentation(backbone.preprocess_cfg, params.extract.crop_scale_min),
        views=1,
        seed=0,
        skip_corrupt=False,
        image_size=backbone.image_size,
    )
    on_the_fly = EncodedOnTheFly(task.train.features[:, :1], task.train.labels, images=images, backbone=backbone)
    ref_gen, ref_coop = run_both(on_the_fly)

    cached = cached_gen + cached_coop
    reference = ref_gen + ref_coop
    print(f"backbone {backbone.name} on {backbone.device}; {len(task.train)} training images; {epochs} epochs each")
    print(f"{'':28s}{'generator':>12s}{'coop_ship':>12s}{'total':>12s}")
    print(f"{'reference (encode per step)':28s}{ref_gen:12.1f}{ref_coop:12.1f}{reference:12.1f}")
    print(f"{'cached features':28s}{cached_gen:12.1f}{cached_coop:12.1f}{cached:12.1f}")
    print(f"{'one-off extraction (1+K views)':28s}{'':24s}{t_extract:12.1f}")
    print(f"speed-up, training only:          {reference / cached:6.2f}x")
    print(f"speed-up, extraction included:    {reference / (cached + t_extract):6.2f}x")


if __name__ == "__main__":
    typer.run(main)
