"""The floors of gptlab (DESIGN.md): every module imports only modules on its own floor or below, no
import circle exists even counting imports inside functions, and only the command floor imports gptlab
modules inside functions. Read from the source with `ast`, so nothing is imported to check it."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "gptlab"

FLOORS = {
    1: ("gptlab", "gptlab.errors", "gptlab.files", "gptlab.layout", "gptlab.args", "gptlab.pyconfig"),
    2: ("gptlab.config", "gptlab.config_files", "gptlab.config_check", "gptlab.budget", "gptlab.stats"),
    3: ("gptlab.model", "gptlab.ideas", "gptlab.registry", "gptlab.loss", "gptlab.optim", "gptlab.optimizers",
        "gptlab.generate", "gptlab.data"),
    4: ("gptlab.resolve", "gptlab.resume", "gptlab.runtime", "gptlab.distributed", "gptlab.checkpoint",
        "gptlab.checkpoint_format",
        "gptlab.runs", "gptlab.preflight", "gptlab.smoke"),
    5: ("gptlab.evaluate", "gptlab.metrics", "gptlab.tracker", "gptlab.hf", "gptlab.hf_import",
        "gptlab.hf_export", "gptlab.hf_remote", "gptlab.hf_code", "gptlab.plot", "gptlab.startup",
        "gptlab.compare_report", "gptlab.train_parts"),
    6: ("gptlab.train", "gptlab.bench", "gptlab.bench_timing", "gptlab.sample", "gptlab.compare",
        "gptlab.compare_run"),
    7: ("gptlab.cli", "gptlab.__main__", "gptlab.commands"),
}
COMMAND_FLOOR = 7

# `python -m gptlab.data.prepare` (benchmarks/bench_prepare.py times it) runs the command table from its
# __main__ block: an entry point, not a dependency of the module.
KNOWN = {("gptlab.data.prepare", "gptlab.cli")}


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor_of(module: str) -> int:
    """The floor of a module: the longest prefix named in FLOORS (a package names all its modules)."""
    named = [p for ps in FLOORS.values() for p in ps]  # "gptlab" alone is the package's __init__
    best = max((p for p in named if module == p or (p != "gptlab" and module.startswith(p + "."))), key=len,
               default=None)
    if best is None:
        raise AssertionError(f"{module} is on no floor: add it to FLOORS in tests/unit/test_floors.py")
    return next(floor for floor, prefixes in FLOORS.items() if best in prefixes)


def imports(path: Path, modules: set[str]) -> list[tuple[str, int, bool]]:
    """(imported gptlab module, line, inside a function) for every import statement of one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, inside) for a in child.names if a.name.startswith("gptlab"))
            elif isinstance(child, ast.ImportFrom) and (child.module or "").startswith("gptlab"):
                for alias in child.names:  # `from gptlab import hf` names a module, `from gptlab.x import f` not
                    sub = f"{child.module}.{alias.name}"
                    found.append((sub if sub in modules else child.module, child.lineno, inside))
            visit(child, inside)

    visit(tree, False)
    return found


def import_graph(root: Path) -> dict[str, list[tuple[str, int, bool]]]:
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    return {name: imports(path, set(files)) for name, path in files.items()}


def violations(root: Path) -> list[str]:
    """Upward imports, function-level gptlab imports below the command floor, and import circles."""
    graph, problems = import_graph(root), []
    for module, edges in graph.items():
        floor_of(module)  # every module has a floor, imports or not
        for target, line, inside in edges:
            if (module, target) in KNOWN or target == module:
                continue
            if floor_of(target) > floor_of(module):
                problems.append(f"{module}:{line} imports {target} from a floor above "
                                f"({floor_of(module)} -> {floor_of(target)})")
            if inside and floor_of(module) < COMMAND_FLOOR:
                problems.append(f"{module}:{line} imports {target} inside a function (only commands may)")
    return problems + [f"import circle: {', '.join(c)}" for c in circles(graph)]


def circles(graph: dict[str, list[tuple[str, int, bool]]]) -> list[list[str]]:
    """The groups of modules that import each other round a circle (strongly connected components of
    more than one module, function-level imports included), each sorted."""
    edges = {m: {t for t, _, _ in es if t in graph and (m, t) not in KNOWN and t != m} for m, es in graph.items()}

    def reach(start: str, links: dict[str, set[str]]) -> set[str]:
        seen, todo = {start}, [start]
        while todo:
            for nxt in links[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    back = {m: {s for s in edges if m in edges[s]} for m in edges}
    groups = {frozenset(reach(m, edges) & reach(m, back)) for m in edges}
    return sorted(sorted(g) for g in groups if len(g) > 1)


def test_every_import_points_down_and_no_circle():
    assert violations(PACKAGE) == []


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "gptlab"
    shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _plant(path: Path, line: str, in_function: bool = False) -> None:
    text = path.read_text(encoding="utf-8")
    planted = f"\n\ndef _planted():\n    {line}\n" if in_function else f"\n{line}\n"
    path.write_text(text + planted, encoding="utf-8")


@pytest.mark.parametrize("module, line, in_function, expected", [
    ("model.py", "from gptlab.train import train", False, "gptlab.model:.* imports gptlab.train from a floor above"),
    ("files.py", "from gptlab.config import Config", False, "gptlab.files:.* floor above \\(1 -> 2\\)"),
    ("loss.py", "from gptlab.optim import lr_at", True, "gptlab.loss:.* inside a function"),
    ("checkpoint.py", "from gptlab.runs import load_run", True, "import circle: .*gptlab.checkpoint"),
    ("data/samplers.py", "from gptlab import runs", False, "gptlab.data.samplers:.* floor above"),
    ("data/sources.py", "from gptlab.data import prepare", True, "circle"),  # the data split stays one-way
])
def test_the_checker_fails_on_a_planted_import(tmp_path, module, line, in_function, expected):
    root = _copy(tmp_path)
    _plant(root / module, line, in_function)
    problems = violations(root)
    assert problems, f"planting {line!r} in {module} went unnoticed"
    assert any(re.search(expected, p) for p in problems), problems


def test_a_module_on_no_floor_is_named(tmp_path):
    root = _copy(tmp_path)
    (root / "newthing.py").write_text("import math\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="gptlab.newthing is on no floor"):
        violations(root)


def test_ruff_passes():
    """The linter CI runs (ruff is in the test extra; its rules are in pyproject.toml)."""
    result = subprocess.run([sys.executable, "-m", "ruff", "check", str(PACKAGE)],
                            capture_output=True, text=True, cwd=PACKAGE.parent)
    assert result.returncode == 0, result.stdout + result.stderr
