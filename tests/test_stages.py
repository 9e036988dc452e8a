"""Stage glue through the `ship` CLI on tiny stores: cross-dataset transfer and the store/backbone checks."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import yaml
from typer.testing import CliRunner

from stages.cli import app
from tests.conftest import TINY_MODEL
from tests.extract_fixtures import tiny_checkpoint, write_images

runner = CliRunner()


def _folder(root: Path, seed: int) -> Path:
    write_images(root / "train", 4, seed=seed)
    write_images(root / "val", 2, seed=seed + 1)
    write_images(root / "test", 3, seed=seed + 2)
    return root


def _params(tmp_path: Path, ckpt: Path, root: Path, name: str, **extra) -> Path:
    params = {
        "backbone": {"model": TINY_MODEL, "pretrained": str(ckpt), "device": "cpu"},
        "dataset": {
            "kind": "imagefolder",
            "name": name,
            "root": str(root),
            "shots": 2,
            "val_shots": 1,
            "labeled_classes": "all",
        },
        "extract": {"views": 1, "workers": 0},
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _ok(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output


def test_finetune_with_transfer_targets_writes_transfer_metrics(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    source = _params(tmp_path, ckpt, _folder(tmp_path / "src", 1), "source")
    target = _params(tmp_path, ckpt, _folder(tmp_path / "tgt", 10), "target")
    _ok(["extract", "-p", str(source), "--out", str(tmp_path / "source.zarr")])
    _ok(["extract", "-p", str(target), "--out", str(tmp_path / "target.zarr")])
    _ok(
        [
            "finetune",
            "-p",
            str(source),
            "--features",
            str(tmp_path / "source.zarr"),
            "--results",
            str(tmp_path / "results"),
            "--metrics",
            str(tmp_path / "m.json"),
            "--plots",
            str(tmp_path / "p"),
            "-S",
            "finetune.methods=[zeroshot, coop, tip_adapter_f]",
            "-S",
            "finetune.seeds=[1, 2]",
            "-S",
            "finetune.coop.epochs=1",
            "-S",
            "finetune.tip_adapter_f.epochs=1",
            "-S",
            f"finetune.transfer_stores=[{tmp_path / 'target.zarr'}]",
        ]
    )
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(metrics) == {"zeroshot", "coop", "tip_adapter_f"}
    for m in metrics.values():
        assert 0.0 <= m["transfer.target"] <= 100.0 and "transfer.average" in m
    # Tip-Adapter-F's cache knows nothing of foreign classes: on the target it is zero-shot CLIP.
    assert metrics["tip_adapter_f"]["transfer.target"] == metrics["zeroshot"]["transfer.target"]
    transfer = pl.read_csv(tmp_path / "results" / "transfer.csv")
    assert transfer.shape[0] == 3 * 2 and set(transfer["dataset"]) == {"target"}
    assert sorted(p.name for p in (tmp_path / "p" / "finetune_val_acc").iterdir()) == [
        "coop.csv",
        "tip_adapter_f.csv",
        "zeroshot.csv",
    ]


def test_stages_refuse_a_store_of_another_backbone(tmp_path):
    source = _params(tmp_path, tiny_checkpoint(tmp_path / "a.pt", seed=0), _folder(tmp_path / "src", 1), "source")
    _ok(["extract", "-p", str(source), "--out", str(tmp_path / "f.zarr")])
    other = _params(tmp_path, tiny_checkpoint(tmp_path / "b.pt", seed=1), tmp_path / "src", "other")
    result = runner.invoke(
        app,
        [
            "train-generator",
            "-p",
            str(other),
            "--features",
            str(tmp_path / "f.zarr"),
            "--out",
            str(tmp_path / "g.pt"),
            "--curve",
            str(tmp_path / "c.csv"),
        ],
    )
    assert result.exit_code == 1
    assert "weights_id" in result.output and "rerun extract" in result.output
    assert not (tmp_path / "g.pt").exists()
