"""Where the time of a whole `dvc repro` goes, per stage kind, and the floor each stage pays before any work.

    python benchmarks/dag_time.py                 # dvc repro in this checkout (stages whose outputs are current skip)
    python benchmarks/dag_time.py --fresh DIR     # a copy of the working tree without outputs: every stage runs

Each stage's time is read off DVC's own log: from its "Running stage" line to the next stage's (or the end), so
DVC's hashing of a stage's outputs counts towards that stage. The floor of a stage kind is the start of its
process: Python, torch, open_clip and the stage's own imports (`python -c "import stages.<module>, ..."`), measured
here three times, the median kept. Prints one Markdown table.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Annotated

import typer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.working_tree import copy_working_tree  # noqa: E402

RUNNING = re.compile(r"Running stage '([^']+)'")
# What a stage of each kind imports before it does any work (its heaviest library modules).
FLOOR_IMPORTS = {
    "demo_world": "stages.demo_world, pipeline.demo.world",
    "extract": "stages.extract_train, pipeline.extract, pipeline.backbone, pipeline.extraction_plans",
    "generator": "stages.train_generator, pipeline.generator_training, pipeline.backbone",
    "synthesize": "stages.synthesize, pipeline.synthesize_seed",
    "finetune": "stages.finetune, pipeline.finetune_seed",
    "report": "stages.report, pipeline.publish",
}


def stage_kind(stage: str) -> str:
    name = stage.split("@")[0]
    for kind in ("extract", "generator", "synthesize", "finetune", "source"):
        if kind in name:
            return {"source": "finetune"}.get(kind, kind)
    return name


def timed_repro(repo: Path) -> tuple[list[tuple[str, float]], float]:
    """(stage, seconds) in the order DVC ran them, and the whole run's seconds."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    start = time.monotonic()
    marks: list[tuple[str, float]] = []
    with subprocess.Popen(
        ["dvc", "repro"], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            match = RUNNING.search(line)
            if match:
                marks.append((match.group(1), time.monotonic()))
    total = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"dvc repro failed in {repo} (exit {proc.returncode})")
    ends = [t for _, t in marks[1:]] + [start + total]
    return [(stage, end - t) for (stage, t), end in zip(marks, ends, strict=True)], total


def import_floor(modules: str, repo: Path) -> float:
    times = []
    for _ in range(3):
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-c", f"import {modules}"], cwd=repo, check=True)
        times.append(time.monotonic() - t0)
    return statistics.median(times)


def main(
    fresh: Annotated[
        Path | None, typer.Option(help="Copy the working tree (no outputs) into this directory and run there.")
    ] = None,
) -> None:
    """Time a whole `dvc repro` per stage kind and print where the time goes."""
    repo = ROOT
    if fresh is not None:
        copy_working_tree(ROOT, fresh)
        repo = fresh
    stages, total = timed_repro(repo)
    per_kind: dict[str, list[float]] = defaultdict(list)
    for stage, seconds in stages:
        per_kind[stage_kind(stage)].append(seconds)
    cpu = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True, text=True)
    print(
        f"dvc repro in {repo}: {total / 60:.1f} min, {len(stages)} stages; {os.cpu_count()} cores, "
        f"{cpu.stdout.strip() or 'unknown CPU'}\n"
    )
    print("| stage kind | stages | minutes | seconds per stage | process start + imports (floor) |")
    print("|---|---|---|---|---|")
    for kind, times in sorted(per_kind.items(), key=lambda kv: -sum(kv[1])):
        floor = FLOOR_IMPORTS.get(kind)
        floor_s = f"{import_floor(floor, repo):.1f} s" if floor else "-"
        print(f"| {kind} | {len(times)} | {sum(times) / 60:.1f} | {statistics.mean(times):.1f} | {floor_s} |")
    print(f"| **total** | {len(stages)} | **{total / 60:.1f}** | | |")


if __name__ == "__main__":
    typer.run(main)
