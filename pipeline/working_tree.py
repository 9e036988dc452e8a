"""Copies of this checkout for tests and benchmarks that run `dvc repro` in a repository of their own. It lives in
the package so that both tests/ and benchmarks/ import it from one place; it needs a git checkout (ROOT), so it only
works from the source tree, not from an installed wheel."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What `make repro` writes; a copy that runs the DAG afresh leaves them behind. (data/demo/backbone is no output:
# the shipped demo weights, in git, which every copy needs.)
OUTPUTS = (
    "data/demo/world/",
    "data/features/",
    "data/fits/",
    "data/generators/",
    "data/synthetic/",
    "results/",
    "reports/",
    "metrics/",
)


def copy_working_tree(dest: Path, *pathspecs: str, skip: tuple[str, ...] = ()) -> None:
    """Copy the tracked and the untracked-but-not-ignored files (the working tree as `git` sees it, uncommitted
    edits included; only under `pathspecs` if given) into `dest`, except paths starting with one of `skip`."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", *pathspecs],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file() and not rel.startswith(skip):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
