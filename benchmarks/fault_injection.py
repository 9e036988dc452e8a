"""Kill -9 anywhere: every stage kind killed at a random point under `dvc repro`, then `dvc repro` again, and every
output compared with an uninterrupted run.

Two copies of the repository's code (tracked and untracked, not ignored) go into a temporary directory, each with a
tiny world in data/demo/world (tests/tiny_world.py: two split-file datasets and an xlsa17 one, seed 1 only, with the
manifest.json that `pipeline.demo.world.write_manifest` writes, which every extract stage depends on) and a tiny
open_clip checkpoint in data/demo/backbone (in place of the shipped demo weights); the demo_world stage is dropped
from their dvc.yaml (the world is given). Copy R runs `dvc repro` once, uninterrupted, timing each stage's process.
In copy F, for each stage kind in DAG order (extract-eval, extract-train, extract-oracle, train-generator,
synthesize, finetune, report), a stage of that kind is drawn and `dvc repro <stage>` runs; the stage's process
(`python -m stages.<module> ...`) is killed with SIGKILL either anywhere (after a random 40-100% of its run time in
R) or while it writes its outputs (a random 0-1 s after a partial store, temporary or lock of it appears; in F every
rename and file write of a stage process is slowed by 0.25 s, through a sitecustomize.py, so these windows are wide
enough to hit). What is killed alternates: the stage's own process, or the whole `dvc repro` process group (DVC
killed too). A stage that finishes first is forced to run again (`dvc repro -f -s <stage>`) and killed earlier.
After each kill, what was left half-done is listed, and no output may be taken as complete unless it is (every
*.zarr verifies, every checkpoint loads, every JSON parses). Then `dvc repro` runs to the end and `dvc status` must
be clean; finally every output of F is compared with R's: stores by arrays, metadata and bytes, checkpoints by their
tensors (torch.save writes a random id into the file), JSON/CSV/Markdown by bytes; no file may exist in one copy
only (no stray .partial, .tmp-*, .old-*, .lock).

    PYTHONPATH=. .venv/bin/python benchmarks/fault_injection.py            # every protocol
    PYTHONPATH=. .venv/bin/python benchmarks/fault_injection.py --short    # base-to-new, one dataset

On a 2-core x86-64 CPU VM the full run takes ~10 minutes, the short one ~4.

Exits 1 when any output differs or any invariant breaks.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import psutil
import torch
import typer
import yaml
import zarr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.demo.world import write_manifest  # noqa: E402
from pipeline.feature_store import FeatureStore  # noqa: E402
from pipeline.store_integrity import verify_store  # noqa: E402
from pipeline.working_tree import copy_working_tree  # noqa: E402
from tests import tiny_world  # noqa: E402
from tests.extract_fixtures import tiny_checkpoint  # noqa: E402

KINDS = ["extract-eval", "extract-train", "extract-oracle", "train-generator", "synthesize", "finetune", "report"]
OUTPUT_DIRS = ["data/features", "data/generators", "data/synthetic", "data/fits", "results", "reports"]
CODE = [".dvc", ".dvcignore", ".gitignore", "dvc.yaml", "pyproject.toml", "pipeline", "stages"]
SHIPPED_WEIGHTS = "data/demo/backbone/ship-demo-rn.safetensors"  # dvc.yaml's dependency on the demo weights


def _env(repo: Path) -> dict[str, str]:
    return {
        **os.environ,
        "SHIP_FAULT_SLOW_WRITES": "0.25",  # seconds; only where make_repo(slow_writes=True) put sitecustomize.py
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONPATH": str(repo),  # the copy's own code, not an editable install's
        "DVC_NO_ANALYTICS": "1",
        "SHIP_DEBUG": "1",  # a failure's traceback in the log, should one happen
    }


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.email=f@i", "-c", "user.name=fault", *args], cwd=repo, check=True, capture_output=True
    )


# Written into the killed copy only: in stage processes, every rename and file write waits a little first, so the
# windows in which a stage writes its outputs are wide enough for random kills to land inside them. Only timing
# changes; the code under test and its results do not.
SLOW_WRITES = """
import os, sys, time

# A stage process is `python -m stages.<module> ...` (sys.argv lacks the module name this early; orig_argv has it).
_stage = any(a.startswith("stages.") for a in sys.orig_argv[1:3]) or os.path.basename(sys.argv[0]) == "ship"
if _stage and os.environ.get("SHIP_FAULT_SLOW_WRITES"):
    _delay = float(os.environ["SHIP_FAULT_SLOW_WRITES"])

    def _slow(fn):
        def wrapper(*args, **kwargs):
            time.sleep(_delay)
            return fn(*args, **kwargs)

        return wrapper

    import pathlib

    import zarr.storage._local as _local

    os.replace, os.rename = _slow(os.replace), _slow(os.rename)
    pathlib.Path.write_text = _slow(pathlib.Path.write_text)
    _local._put = _slow(_local._put)
"""


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(base.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def make_repo(dest: Path, short: bool, demo_stages: bool = False, slow_writes: bool = False) -> Path:
    """A runnable copy of the repository's code on the tiny world (see the module docstring); `demo_stages` keeps
    dvc.yaml's demo_world stage (its output is then the given tiny world). The stages that depend on the shipped
    demo weights depend on the tiny checkpoint instead."""
    copy_working_tree(dest, *CODE)
    shutil.copy2(ROOT / "tests/model_configs/test-tiny-vit.json", dest / "pipeline/model_configs/test-tiny-vit.json")
    if slow_writes:
        (dest / "sitecustomize.py").write_text(SLOW_WRITES)
    world = dest / "data/demo/world"
    tiny_world.split_file_dataset(world / "alpha", tiny_world.ALPHA, seed=1)
    tiny_world.split_file_dataset(world / "beta", tiny_world.BETA, seed=2)
    tiny_world.xlsa17_dataset(world / "gamma", seed=3)
    write_manifest(world)  # last, over every file of the world: the extract stages' dependency on the world
    (dest / "data/demo/backbone").mkdir(parents=True)
    tiny_checkpoint(dest / "data/demo/backbone/tiny.pt")
    (dest / "data/demo/.gitignore").write_text("/world\n/backbone\n")  # outputs (or plain deps), never in git
    tiny: dict[str, Any] = tiny_world.build(Path(tempfile.mkdtemp(prefix="fault-params-")))
    # Every key spelled out as params.yaml does (dvc.yaml names them), with the tiny world's values.
    params = _merge(yaml.safe_load((ROOT / "params.yaml").read_text()), tiny)
    params["datasets"] = tiny["datasets"]
    params["backbone"]["pretrained"] = "data/demo/backbone/tiny.pt"
    for name, spec in params["datasets"].items():
        spec["root"] = f"data/demo/world/{name}"
        if spec.get("image_root"):
            spec["image_root"] = f"data/demo/world/{name}/images"
    params["extract"]["block_size"] = 4  # several blocks per store: kills land between blocks too
    params["seeds"] = [1]  # a second seed adds stages, not kinds of stage
    if short:
        params["datasets"] = {"alpha": params["datasets"]["alpha"]}
        params["base_to_new"] = {"datasets": ["alpha"]}
        params["cross_dataset"] = {"sources": [], "targets": []}
        params["gzsl"] = {"datasets": [], "val_per_class": 2}
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc = yaml.safe_load((dest / "dvc.yaml").read_text())
    if not demo_stages:
        dvc["stages"].pop("demo_world", None)
    for stage in dvc["stages"].values():
        stage["deps"] = [params["backbone"]["pretrained"] if d == SHIPPED_WEIGHTS else d for d in stage.get("deps", [])]
    if short:
        for name in list(dvc["stages"]):
            if name.startswith(("xd_", "gzsl_")):
                del dvc["stages"][name]
    (dest / "dvc.yaml").write_text(yaml.safe_dump(dvc, sort_keys=False))
    _git(dest, "init", "-q")
    if not (dest / ".dvc/config").exists():
        subprocess.run(["dvc", "init", "-q"], cwd=dest, env=_env(dest), check=True)
    _git(dest, "add", "-A")
    _git(dest, "commit", "-qm", "fault injection copy")
    return dest


# --- running dvc repro and killing its stages -------------------------------------------------------------------


# Stage kind -> how dvc.yaml's commands start it: `python -m stages.<module> [<command>]`.
_KIND_COMMANDS = {
    "extract-eval": ("stages.extract_eval", None),
    "extract-train": ("stages.extract_train", None),
    "extract-oracle": ("stages.extract_oracle", None),
    "train-generator": ("stages.train_generator", None),
    "synthesize": ("stages.synthesize", None),
    "finetune": ("stages.finetune", None),
    "report": ("stages.report", None),
}


def _ship_process(dvc: psutil.Process, kind: str) -> psutil.Process | None:
    """The running stage process of `kind` under `dvc`, if any."""
    module, command = _KIND_COMMANDS[kind]
    try:
        children = dvc.children(recursive=True)
    except psutil.Error:
        return None
    for child in children:
        try:
            cmd = child.cmdline()
        except psutil.Error:
            continue
        if cmd[1:3] == ["-m", module] and (command is None or cmd[3:4] == [command]):
            return child
    return None


def _running_stage(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("Running stage")]
    return lines[-1].split("'")[1] if lines else "?"


@dataclass
class Kill:
    kind: str
    mode: str  # "stage": the stage's process; "group": dvc repro and everything under it
    timing: str  # "anywhere": a random part of the stage's run time; "writing": while it writes its outputs
    stage: str = "?"
    fraction: float = 0.0  # of the stage's duration in the uninterrupted run
    after_s: float = 0.0
    outcome: str = "not reached"
    leftovers: list[str] = field(default_factory=list)  # what the kill left half-done (the rerun must clean it)
    violations: list[str] = field(default_factory=list)


def repro(repo: Path, log: Path, timeout: float = 1800) -> tuple[int, dict[str, list[float]]]:
    """`dvc repro` to the end; returns its exit code and each stage kind's process durations."""
    with open(log, "w") as out:
        proc = subprocess.Popen(["dvc", "repro"], cwd=repo, env=_env(repo), stdout=out, stderr=subprocess.STDOUT)
        dvc = psutil.Process(proc.pid)
        durations: dict[str, list[float]] = {}
        seen: dict[int, tuple[str, float]] = {}
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            for kind in KINDS:
                child = _ship_process(dvc, kind)
                if child is not None and child.pid not in seen:
                    seen[child.pid] = (kind, time.monotonic())
            for pid, (kind, start) in list(seen.items()):
                if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    durations.setdefault(kind, []).append(time.monotonic() - start)
                    del seen[pid]
            if time.monotonic() > deadline:
                proc.kill()
                raise TimeoutError(f"dvc repro in {repo} ran past {timeout} s")
            time.sleep(0.02)
        for kind, start in seen.values():
            durations.setdefault(kind, []).append(time.monotonic() - start)
    return proc.returncode, durations


def repro_and_kill(repo: Path, command: list[str], log: Path, kill: Kill, at_s: float) -> bool:
    """Run `command` (a `dvc repro ...`) until a stage of `kill.kind` starts, kill it `at_s` seconds later (timing
    "writing": `at_s` after it starts writing an output); True when the kill landed (the stage was still running)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            command,
            cwd=repo,
            env=_env(repo),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: "group" kills dvc and every child at once
        )
        dvc = psutil.Process(proc.pid)
        landed = False
        while proc.poll() is None and not landed:
            child = _ship_process(dvc, kill.kind)
            if child is None:
                time.sleep(0.02)
                continue
            kill.stage = _running_stage(log)
            if kill.timing == "writing":
                before = {x.split(" (")[0] for x in leftovers(repo)}
                while child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
                    if {x.split(" (")[0] for x in leftovers(repo)} - before:
                        break  # a partial store, temporary or lock appeared: the stage is writing
                    time.sleep(0.01)
            time.sleep(at_s)
            if not child.is_running() or child.status() == psutil.STATUS_ZOMBIE:
                break  # finished first: this attempt missed
            if kill.mode == "group":
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                child.send_signal(signal.SIGKILL)
            landed = True
        proc.wait()  # a missed attempt lets dvc finish what it runs
    return landed


def _kind_of(stage: str) -> str | None:
    name = stage.split("@")[0]
    if name == "extract_eval":
        return "extract-eval"
    if name.endswith("_oracle_extract"):
        return "extract-oracle"
    for suffix, kind in (
        ("_extract", "extract-train"),
        ("_generator", "train-generator"),
        ("_synthesize", "synthesize"),
    ):
        if name.endswith(suffix):
            return kind
    if name.endswith("_finetune") or name == "xd_source":
        return "finetune"
    return "report" if name == "report" else None


# --- invariants and comparison ----------------------------------------------------------------------------------


def leftovers(repo: Path) -> list[str]:
    """Partial builds, temporaries and locks beside the outputs: what an interrupted writer left."""
    found = []
    candidates = [p for p in repo.iterdir() if p.name.startswith(tuple(f".{top}." for top in OUTPUT_DIRS))]
    for top in OUTPUT_DIRS:
        candidates += sorted((repo / top).rglob("*")) if (repo / top).exists() else []
    for p in candidates:
        rel = p.relative_to(repo)
        stray = p.name.endswith((".partial", ".lock", ".tmp")) or ".tmp-" in p.name or ".old-" in p.name
        if stray and not any(part.endswith(".partial") for part in rel.parts[:-1]):
            progress = p / "progress.json"
            if p.name.endswith(".zarr.partial") and progress.is_file():
                try:
                    blocks = sum(len(v) for v in json.loads(progress.read_text())["blocks"].values())
                    found.append(f"{rel.as_posix()} ({blocks} block(s) done)")
                    continue
                except (ValueError, KeyError, TypeError):
                    pass
            found.append(rel.as_posix())
    return found


def taken_as_complete_violations(repo: Path) -> list[str]:
    """Any output that a reader would take as complete but is not: a store that does not verify, a checkpoint that
    does not load, a JSON file that does not parse."""
    problems = []
    for store in sorted(repo.glob("data/**/*.zarr")):
        problems += [f"{store.relative_to(repo)}: {p}" for p in verify_store(store)]
    for pt in sorted(repo.glob("data/**/*.pt")):
        if "demo/backbone" in str(pt):
            continue
        try:
            torch.load(pt, map_location="cpu", weights_only=True)
        except Exception as err:
            problems.append(f"{pt.relative_to(repo)}: {type(err).__name__}")
    for js in sorted([*repo.glob("results/**/*.json"), *repo.glob("reports/**/*.json")]):
        try:
            json.loads(js.read_text())
        except ValueError as err:
            problems.append(f"{js.relative_to(repo)}: {err}")
    return problems


def _files(repo: Path) -> set[str]:
    out = set()
    for top in OUTPUT_DIRS:
        for p in (repo / top).rglob("*"):
            if p.is_file() and p.name != ".gitignore":
                out.add(p.relative_to(repo).as_posix())
    return out


def _tensors_equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_tensors_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _store_arrays(path: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(path), mode="r")
    return {n: np.asarray(a[...]) for n, a in group.members(max_depth=None) if isinstance(a, zarr.Array)}


def compare(ref: Path, run: Path) -> dict[str, Any]:
    """Every output of `run` against `ref`: {category: count identical}, plus the differences found."""
    a, b = _files(ref), _files(run)
    report: dict[str, Any] = {"only_in_reference": sorted(a - b), "only_after_kills": sorted(b - a), "different": []}
    counts = {"store arrays": 0, "store files (bytes)": 0, "checkpoints (tensors)": 0, "json/csv/md (bytes)": 0}
    stores = sorted({rel.split(".zarr/")[0] + ".zarr" for rel in a & b if ".zarr/" in rel})
    for store in stores:
        x, y = _store_arrays(ref / store), _store_arrays(run / store)
        same = x.keys() == y.keys() and all(np.array_equal(x[k], y[k], equal_nan=x[k].dtype.kind == "f") for k in x)
        same = same and FeatureStore.open(ref / store).meta == FeatureStore.open(run / store).meta
        if same:
            counts["store arrays"] += 1
        else:
            report["different"].append(f"{store} (arrays or meta)")
    for rel in sorted(a & b):
        if ".zarr/" in rel:
            if (ref / rel).read_bytes() == (run / rel).read_bytes():
                counts["store files (bytes)"] += 1
            else:
                report["different"].append(f"{rel} (bytes)")
        elif rel.endswith(".pt"):
            x = torch.load(ref / rel, map_location="cpu", weights_only=True)
            y = torch.load(run / rel, map_location="cpu", weights_only=True)
            if _tensors_equal(x, y):
                counts["checkpoints (tensors)"] += 1
            else:
                report["different"].append(f"{rel} (tensors)")
        elif (ref / rel).read_bytes() == (run / rel).read_bytes():
            counts["json/csv/md (bytes)"] += 1
        else:
            report["different"].append(f"{rel} (bytes)")
    report["identical"] = counts
    return report


# --- the run ----------------------------------------------------------------------------------------------------


def run_fault_injection(workdir: Path, short: bool, seed: int, echo=print) -> dict[str, Any]:
    rng = random.Random(seed)
    t0 = time.monotonic()
    ref = make_repo(workdir / "reference", short)
    run = make_repo(workdir / "killed", short, slow_writes=True)
    code, durations = repro(ref, workdir / "reference.log")
    if code != 0:
        raise RuntimeError(f"the uninterrupted dvc repro failed; see {workdir / 'reference.log'}")
    mean = {kind: sum(v) / len(v) for kind, v in durations.items()}
    echo(
        f"uninterrupted run: {time.monotonic() - t0:.0f} s; mean stage process time: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in mean.items())
    )
    listed = subprocess.run(
        ["dvc", "stage", "list", "--name-only"], cwd=run, env=_env(run), capture_output=True, text=True, check=True
    )
    stages = listed.stdout.split()
    kills = []
    for i, kind in enumerate(KINDS):
        target = rng.choice([s for s in stages if _kind_of(s) == kind])
        kill = Kill(kind, "stage" if i % 2 == 0 else "group", "anywhere" if i % 3 == 0 else "writing", target)
        earlier = set(leftovers(run))  # left by earlier kills, cleaned when their stages run again
        for attempt in range(8):  # a stage that finishes first is forced to run again, killed earlier
            if kill.timing == "anywhere":
                kill.fraction = rng.uniform(0.4, 1.0) * 0.85**attempt
                kill.after_s = kill.fraction * mean.get(kind, 5.0)
            else:
                kill.after_s = rng.uniform(0.0, 1.0) * 0.7**attempt
            command = ["dvc", "repro", target] if attempt == 0 else ["dvc", "repro", "-f", "-s", target]
            log = workdir / f"kill-{i}-{kind}-{attempt}.log"
            if repro_and_kill(run, command, log, kill, kill.after_s):
                kill.outcome = "killed" + (f" (attempt {attempt + 1})" if attempt else "")
                break
            kill.outcome = "finished before every kill"
        kill.leftovers = [x for x in leftovers(run) if x not in earlier]
        kill.violations = taken_as_complete_violations(run)
        kills.append(kill)
        echo(f"  {kind}: {kill.outcome} ({kill.stage}, {kill.mode}, after {kill.after_s:.2f} s)")
    code, _ = repro(run, workdir / "final.log")
    status = subprocess.run(["dvc", "status"], cwd=run, env=_env(run), capture_output=True, text=True)
    return {
        "kills": kills,
        "final_repro_exit": code,
        "dvc_status_clean": status.returncode == 0 and "up to date" in status.stdout,
        "comparison": compare(ref, run),
        "seconds": time.monotonic() - t0,
    }


def summary(result: dict[str, Any]) -> tuple[str, bool]:
    rows = [
        "| # | stage kind | stage killed | what was killed | when | outcome | left half-done "
        "| partial taken as complete |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ok = True
    for i, k in enumerate(result["kills"], 1):
        taken = "none" if not k.violations else "; ".join(k.violations[:3])
        ok = ok and not k.violations
        what = "stage process" if k.mode == "stage" else "dvc repro + children"
        left = ", ".join(k.leftovers) or "nothing"
        when = (
            f"{k.after_s:.2f} s after start ({k.fraction:.0%} of its run)"
            if k.timing == "anywhere"
            else f"{k.after_s:.2f} s into its writes"
        )
        rows.append(f"| {i} | {k.kind} | {k.stage} | {what} | {when} | {k.outcome} | {left} | {taken} |")
    cmp = result["comparison"]
    ok = ok and not cmp["different"] and not cmp["only_in_reference"] and not cmp["only_after_kills"]
    ok = ok and result["final_repro_exit"] == 0 and result["dvc_status_clean"]
    identical = ", ".join(f"{v} {k}" for k, v in cmp["identical"].items())
    lines = [
        *rows,
        "",
        f"final dvc repro exit {result['final_repro_exit']}; dvc status clean: {result['dvc_status_clean']}",
        f"identical to the uninterrupted run: {identical}",
        f"different: {cmp['different'] or 'none'}",
        f"only in the uninterrupted run: {cmp['only_in_reference'] or 'none'}; only after the kills: "
        f"{cmp['only_after_kills'] or 'none'}",
        f"{'PASS' if ok else 'FAIL'} ({result['seconds']:.0f} s)",
    ]
    return "\n".join(lines), ok


def main(
    short: Annotated[bool, typer.Option(help="base-to-new on one dataset and one seed only")] = False,
    seed: Annotated[int, typer.Option(help="seeds the kill points")] = 0,
    workdir: Annotated[Path | None, typer.Option(help="where the copies go (default: a temporary directory)")] = None,
    keep: Annotated[bool, typer.Option(help="keep the copies and logs")] = False,
) -> None:
    base = workdir or Path(tempfile.mkdtemp(prefix="ship-fault-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        result = run_fault_injection(base, short, seed, echo=typer.echo)
        text, ok = summary(result)
        typer.echo(text)
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            typer.echo(f"copies and logs kept in {base}")
    raise typer.Exit(0 if ok else 1)


if __name__ == "__main__":
    typer.run(main)
