from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from stages.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
STAGE_COMMANDS = ["demo-world", "demo-backbone", "extract", "train-generator", "synthesize", "finetune", "report"]


def test_help_lists_every_stage_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in STAGE_COMMANDS:
        assert command in result.output


@pytest.mark.parametrize("command", STAGE_COMMANDS)
def test_every_command_explains_params_and_overrides(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "--params" in result.output and "--set" in result.output


def test_repo_params_file_is_valid():
    result = runner.invoke(app, ["validate", "--params", str(ROOT / "params.yaml")])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("generator.epochs=0", "generator.epochs"),
        ("finetune.coop.lr=-1", "finetune.coop.lr"),
        ("dataset.kind=imagenet", "dataset.kind"),
        ("extract.views=many", "extract.views"),
        ("generator.typo_key=3", "generator.typo_key: unknown key"),
    ],
)
@pytest.mark.parametrize("command", ["validate", "extract", "finetune"])
def test_bad_param_exits_2_naming_the_key_and_writes_nothing(tmp_path, override, named, command):
    out = tmp_path / "out"
    args = [command, "--params", str(ROOT / "params.yaml"), "--set", override]
    if command == "extract":
        args += ["--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert named in result.output
    assert not out.exists()


def test_bad_value_in_the_file_itself_is_reported_with_the_file(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["synthesize"]["per_class"] = "lots"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    result = runner.invoke(app, ["validate", "--params", str(path)])
    assert result.exit_code == 2
    assert str(path) in result.output and "synthesize.per_class" in result.output and "'lots'" in result.output


def test_missing_params_file_exits_2(tmp_path):
    result = runner.invoke(app, ["validate", "--params", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "nope.yaml" in result.output


def test_unreachable_weights_fail_fast_with_instructions(tmp_path):
    result = runner.invoke(
        app,
        [
            "extract",
            "--params",
            str(ROOT / "params.yaml"),
            "--out",
            str(tmp_path / "f.zarr"),
            "-S",
            "backbone.model=ViT-B-16",
            "-S",
            f"backbone.pretrained={tmp_path}/missing.pt",
        ],
    )
    assert result.exit_code == 1
    assert "missing.pt" in result.output and "checkpoint file not found" in result.output
    assert not (tmp_path / "f.zarr").exists()
