"""The helper package's structure: dependencies point down, one home per idea, short functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "anibook_utils"

LAYERS: dict[str, int] = {
    # utilities every module may use
    "atomic": 0, "torchani_shim": 0, "timing": 0, "notebook": 0,
    # data: files, reading, splitting, elements and units; the array cache
    "cache": 1, "data": 1,
    # concepts: self energies, AEVs, models, sampling, reference labels, drawings
    "self_energy": 2, "aev": 2, "models": 2, "sampling": 2, "reference": 2, "viewer": 2,
    # the engine's parts
    "history": 3, "checkpoints": 3, "feeding": 3, "potential": 3, "distributed": 3, "streaming": 3,
    # recipes
    "training": 4, "torchani_example": 4, "torchani_current": 4, "calculator": 4, "dynamics": 4,
    # what chapters drive: grids, the panel, Colab, the command line, the book build
    "experiments": 5, "ensemble": 5, "active_learning": 5, "widgets": 5, "colab": 5, "sphinx_fixes": 5,
    "__main__": 5, "__init__": 5, "cli_train": 5,
}


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def internal_imports(path: Path) -> set[str]:
    """The package's modules that ``path`` imports (top-level names under anibook_utils)."""
    found = set()
    inside_data = module_name(path) == "data"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = (node.module or "").split(".")[0]
            if inside_data and node.level == 1:
                continue  # data's own submodules
            if base:
                found.add(base)
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("anibook_utils."):
            found.add(node.module.split(".")[1])
    return found


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_dependencies_point_down(path):
    """Chapters -> recipes -> engine -> concepts -> data -> utilities: nothing imports upwards."""
    own = module_name(path)
    assert own in LAYERS, f"{own}: give the new module a layer in LAYERS"
    upward = {m: LAYERS.get(m) for m in internal_imports(path) if LAYERS.get(m, 0) > LAYERS[own]}
    assert not upward, f"{own} (layer {LAYERS[own]}) imports from higher layers {upward}"


def test_functions_are_short():
    """No function in the package is longer than 120 lines."""
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 120:
                long.append(f"{path.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long


def imports_torchani(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "torchani" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "torchani":
            return True
    return False


def test_torchani_is_imported_in_one_place():
    """Only torchani_shim imports torchani (it silences the import-time warning once)."""
    importers = [p.name for p in PACKAGE.rglob("*.py") if p.name != "torchani_shim.py" and imports_torchani(p)]
    assert not importers, importers
