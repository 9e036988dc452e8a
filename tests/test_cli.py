"""The `ship` CLI: every command documents its options, bad params exit 2 naming the key, failures are one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from stages.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
STAGE_COMMANDS = [
    "demo-world",
    "pretrain-demo",
    "extract-eval",
    "extract-train",
    "train-generator",
    "synthesize",
    "finetune",
    "report",
]
PARAMS = str(ROOT / "params.yaml")


def test_help_lists_every_stage_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in STAGE_COMMANDS:
        assert command in result.output


@pytest.mark.parametrize("command", STAGE_COMMANDS)
def test_every_command_explains_params_overrides_and_debug(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "--params" in result.output and "--set" in result.output and "--debug" in result.output


def test_validate_prints_the_params_resolved_per_dataset():
    result = runner.invoke(app, ["validate", "--params", PARAMS])
    assert result.exit_code == 0, result.output
    resolved = json.loads(result.output)
    assert set(resolved) == {"shapes", "patterns", "zoo"}
    shapes = resolved["shapes"]
    assert shapes["preset"] == "demo"
    assert shapes["finetune"]["coop"]["epochs"] == 200 and shapes["generator"]["encoder_hidden"] == 2048
    assert shapes["extract"]["templates"] == ["a photo of a {}."]


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("generator.epochs=0", "generator.epochs"),
        ("finetune.coop.lr=-1", "finetune.coop.lr"),
        ("datasets.shapes.kind=imagenet", "datasets.shapes.kind"),
        ("extract.views=many", "extract.views"),
        ("generator.typo_key=3", "generator.typo_key: unknown key"),
    ],
)
@pytest.mark.parametrize(
    "command",
    [
        ["validate"],
        ["extract-eval", "-d", "shapes"],
        ["finetune", "--protocol", "base_to_new", "-d", "shapes", "--seed", "1"],
    ],
)
def test_bad_param_exits_2_naming_the_key_and_writes_nothing(tmp_path, override, named, command):
    result = runner.invoke(
        app,
        [*command, "--params", PARAMS, "--set", override, *(["--workdir", str(tmp_path)] if len(command) > 1 else [])],
    )
    assert result.exit_code == 2
    assert named in result.output
    assert not any(tmp_path.iterdir())


def test_bad_value_in_the_file_itself_is_reported_with_the_file(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["synthesize"]["per_class"] = "lots"
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    result = runner.invoke(app, ["validate", "--params", str(path)])
    assert result.exit_code == 2
    assert str(path) in result.output and "synthesize.per_class" in result.output and "'lots'" in result.output


def test_missing_params_file_and_a_directory_exit_2(tmp_path):
    result = runner.invoke(app, ["validate", "--params", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "nope.yaml" in result.output
    result = runner.invoke(app, ["validate", "--params", str(tmp_path)])
    assert result.exit_code == 2 and "is a directory" in result.output and "Traceback" not in result.output


def test_unreachable_weights_fail_fast_with_one_line_and_debug_shows_the_traceback(tmp_path):
    args = [
        "extract-eval",
        "-d",
        "shapes",
        "--params",
        PARAMS,
        "--workdir",
        str(tmp_path),
        "-S",
        "backbone.model=ViT-B-16",
        "-S",
        f"backbone.pretrained={tmp_path}/missing.pt",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "missing.pt" in result.output and "checkpoint file not found" in result.output
    assert len([line for line in result.output.splitlines() if line.startswith("error:")]) == 1
    assert not (tmp_path / "data").exists()
    debug = runner.invoke(app, [*args, "--debug"])
    assert debug.exit_code == 1 and debug.exception is not None  # raised, so the traceback is shown


def test_extract_train_needs_a_seed_except_for_gzsl(tmp_path):
    result = runner.invoke(app, ["extract-train", "--protocol", "base_to_new", "-d", "shapes", "-p", PARAMS])
    assert result.exit_code == 2 and "--seed is required" in result.output
