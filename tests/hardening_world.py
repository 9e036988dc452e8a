"""One tiny base-to-new chain (tests/tiny_world.py's dataset alpha, seed 1) built once per test process, for the
hardening tests: stores, a generator and a synthetic store that the stages read, and helpers to run `ship`."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from click.testing import Result
from typer.testing import CliRunner

from pipeline.layout import Layout
from stages.cli import app
from tests import tiny_world

B2N = ["--protocol", "base_to_new", "-d", "alpha", "--seed", "1"]
# Two fast methods that between them read every store finetune reads: eval, train and the synthetic pool.
FAST_METHODS = "finetune.methods=[zeroshot, clip_adapter_ship]"
CHAIN = [
    ["extract-eval", "-d", "alpha"],
    ["extract-train", *B2N],
    ["train-generator", *B2N],
    ["synthesize", *B2N],
    ["finetune", *B2N, "-S", FAST_METHODS],
]

runner = CliRunner()


@dataclass(frozen=True)
class World:
    root: Path  # tmp dir holding the world, the checkpoint and params.yaml
    params: dict
    params_path: Path
    work: Path  # --workdir of the runs

    @property
    def layout(self) -> Layout:
        return Layout(self.work)

    def args(self, work: Path | None = None) -> list[str]:
        return ["-p", str(self.params_path), "--workdir", str(work or self.work)]


def ship(args: list[str]) -> Result:
    return runner.invoke(app, args)


def ok(args: list[str]) -> str:
    result = ship(args)
    assert result.exit_code == 0, result.output
    return result.output


def error_lines(result: Result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("error:")]


def one_line_error(result: Result, code: int = 1) -> str:
    """The failure is exit `code`, one `error:` line and no traceback; returns that line."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output, result.output
    lines = error_lines(result)
    assert len(lines) == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return lines[0]


_BUILT: dict[str, World] = {}


def built_world(factory: pytest.TempPathFactory) -> World:
    """The chain, run once per process; tests that damage it work on a copy (`copy_world`)."""
    if "world" not in _BUILT:
        root = factory.mktemp("hardening")
        params = tiny_world.build(root)
        path = root / "params.yaml"
        path.write_text(yaml.safe_dump(params))
        world = World(root, params, path, root / "work")
        for command in CHAIN:
            ok([*command, *world.args()])
        _BUILT["world"] = world
    return _BUILT["world"]


def copy_world(world: World, dest: Path) -> World:
    """A copy of the world's outputs (the dataset and checkpoint stay shared: nothing writes them)."""
    shutil.copytree(world.work, dest / "work", symlinks=True)
    return World(world.root, world.params, world.params_path, dest / "work")
