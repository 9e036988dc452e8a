"""Every DVC stage lists the code it runs, exactly: editing a module reruns the stages that import it, and only them.

A stage's command is `python -m stages.<module> ...`; the code it runs is that module's import closure within the
project (pipeline/, stages/): every `import` statement anywhere in a module (function-level imports too), followed
transitively, plus the `__init__.py` of every package on the way (Python runs them on import). dvc.yaml must cover the
closure with file deps, or with directory deps whose every .py file is in the closure (a directory holding code the
stage never imports would rerun it for nothing). Two directories are data, not imports, and may be listed whole:
`pipeline/presets` (per-dataset JSON read at run time) and `pipeline/model_configs` (open_clip model configs).

Nothing is left out: third-party packages are pinned by the environment, not by dvc.yaml.

`python -m tests.test_stage_deps` prints each stage's closure as the shortest dep list; `--write` puts those lists in
dvc.yaml in place of the code deps there (data deps and comments stay).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stages")
# Data read at run time, not imported: listed whole by every stage whose closure holds the module that reads it.
DATA_DIRS = {"pipeline/presets": "pipeline/presets/__init__.py", "pipeline/model_configs": "pipeline/backbone.py"}
COMMAND = re.compile(r"^python -m (stages\.\w+)\b")


def module_file(module: str, root: Path = ROOT) -> Path | None:
    base = root.joinpath(*module.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None  # a name imported from a module (`from pipeline.x import y`), not a module itself


def imported_modules(path: Path) -> set[str]:
    """Project modules named by any import statement in `path`, wherever it stands."""
    names: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; the closure is computed from absolute ones"
            if node.module:
                names.add(node.module)
                names |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from pkg import module`
    return {name for name in names if name.split(".")[0] in PACKAGES}


def _runtime_nodes(tree: ast.AST):
    """Every node but the bodies of `if TYPE_CHECKING:` blocks (imports for type hints only never run)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                todo.extend(child.orelse)
            else:
                todo.append(child)


def import_closure(module: str, root: Path = ROOT) -> set[str]:
    """Repository-relative paths of every project file that importing `module` runs."""
    found: dict[str, Path] = {}
    todo = [module]
    while todo:
        parts = todo.pop().split(".")
        for i in range(1, len(parts) + 1):  # a module's packages run their __init__ first
            name = ".".join(parts[:i])
            path = module_file(name, root)
            if path is not None and name not in found:
                found[name] = path
                todo.extend(imported_modules(path))
    return {path.relative_to(root).as_posix() for path in found.values()}


def python_files(directory: str, root: Path = ROOT) -> set[str]:
    return {p.relative_to(root).as_posix() for p in (root / directory).rglob("*.py")}


def shortest_deps(closure: set[str], root: Path = ROOT) -> list[str]:
    """The closure as dep paths: a package directory wherever every .py file under it is in the closure."""
    deps: set[str] = set(closure)
    for directory in sorted({str(Path(f).parent) for f in closure}, key=len):
        files = python_files(directory, root)
        if directory not in PACKAGES and files <= closure and not any(d in deps for d in _parents(directory)):
            deps = {d for d in deps if not d.startswith(directory + "/")} | {directory}
    deps |= {data for data, reader in DATA_DIRS.items() if reader in closure}
    return sorted(deps)


def _parents(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def code_deps(deps: list[str]) -> list[str]:
    return [d for d in deps if d.split("/")[0] in PACKAGES]


def dvc_stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def stage_module(definition: dict) -> str:
    match = COMMAND.match(" ".join(definition["cmd"].split()))
    assert match, f"command {definition['cmd']!r} is not `python -m stages.<module> ...`"
    return match.group(1)


STAGES = dvc_stages()


@pytest.mark.parametrize("name", sorted(STAGES))
def test_a_stage_lists_exactly_the_code_it_imports(name: str) -> None:
    definition = STAGES[name]
    closure = import_closure(stage_module(definition))
    deps = code_deps(definition.get("deps", []))
    covered = {f for d in deps for f in ({d} if d.endswith(".py") else python_files(d))}
    missing = sorted(closure - covered)
    assert not missing, f"{name}: dvc.yaml misses code the stage imports: {missing}"
    for data, reader in DATA_DIRS.items():
        assert reader not in closure or data in deps, f"{name}: runs {reader}, which reads {data}: list it"
    for dep in deps:
        assert (ROOT / dep).exists(), f"{name}: dep {dep} does not exist"
        if dep in DATA_DIRS:
            continue
        extra = sorted(({dep} if dep.endswith(".py") else python_files(dep)) - closure)
        assert not extra, f"{name}: dep {dep} covers code the stage never imports: {extra}"


def test_each_stage_lists_its_own_module() -> None:
    for name, definition in STAGES.items():
        own = module_file(stage_module(definition))
        assert own is not None and own.relative_to(ROOT).as_posix() in definition["deps"], name


def test_the_closure_follows_function_level_and_package_imports(tmp_path: Path) -> None:
    (tmp_path / "pipeline" / "sub").mkdir(parents=True)
    (tmp_path / "stages").mkdir()
    files = {
        "pipeline/__init__.py": "",
        "pipeline/sub/__init__.py": "import pipeline.a\n",
        "pipeline/a.py": "import os\n",
        "pipeline/b.py": "def f():\n    from pipeline.sub import c\n",
        "pipeline/sub/c.py": "",
        "pipeline/unused.py": "",
        "stages/__init__.py": "",
        "stages/s.py": "from pipeline import b\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).write_text(text)
    assert import_closure("stages.s", tmp_path) == set(files) - {"pipeline/unused.py"}
    closure = import_closure("stages.s", tmp_path)
    assert shortest_deps(closure, tmp_path) == [
        "pipeline/__init__.py",
        "pipeline/a.py",
        "pipeline/b.py",
        "pipeline/sub",
        "stages/__init__.py",
        "stages/s.py",
    ]


def test_editing_a_module_reruns_exactly_the_stages_that_import_it() -> None:
    """What `dvc status` reports after an edit of pipeline/text_tower.py (CoOp's prompts, the generator's decoder,
    the zero-shot classifiers): every stage whose closure holds it."""
    touched = "pipeline/text_tower.py"
    rerun = {
        name
        for name, definition in STAGES.items()
        if any(d == touched or touched.startswith(d + "/") for d in definition.get("deps", []))
    }
    importers = {name for name, definition in STAGES.items() if touched in import_closure(stage_module(definition))}
    assert rerun == importers
    assert {"extract_eval", "b2n_generator", "b2n_finetune", "xd_finetune", "gzsl_finetune"} <= rerun


def rewrite_code_deps(text: str) -> str:
    """dvc.yaml with each stage's code deps replaced by its closure (`shortest_deps`), where its first code dep
    stood; data deps, comments and everything else are kept as they are."""
    lines, out, stage = text.split("\n"), [], None
    i = 0
    while i < len(lines):
        line = lines[i]
        if re.match(r"^  (\w+):\s*$", line):
            stage = line.strip().rstrip(":")
        item = re.match(r"^(\s+)- ((?:pipeline|stages)/\S*)\s*$", line)
        if item and stage in STAGES:
            indent = item.group(1)
            while i < len(lines) and re.match(r"^\s+- (?:pipeline|stages)/\S*\s*$", lines[i]):
                i += 1
            deps = shortest_deps(import_closure(stage_module(STAGES[stage])))
            out += [f"{indent}- {dep}" for dep in deps]
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        (ROOT / "dvc.yaml").write_text(rewrite_code_deps((ROOT / "dvc.yaml").read_text()))
    else:
        for name, definition in STAGES.items():
            print(f"{name}:")
            for dep in shortest_deps(import_closure(stage_module(definition))):
                print(f"  - {dep}")
