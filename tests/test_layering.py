"""Dependencies point one way: a module imports only from its own package or from a lower layer."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ptq161"

# lowest first; a module may import its own package or anything with a smaller rank
LAYERS: dict[str, int] = {
    "_version": 0,
    "errors": 0,
    "utils": 1,
    "config": 1,
    "parallel": 1,
    "primitives": 2,
    "nn": 3,
    "models": 4,
    "data": 4,
    "calibration": 5,
    "methods": 6,
    "runtime": 7,
    "eval": 7,
    "pipeline": 8,
    "api": 9,
    "__init__": 10,
    "serve": 10,
    "cli": 11,
    "__main__": 12,
}


def component(module: str) -> str:
    """The top-level component of a dotted module name inside ptq161 (``ptq161`` itself is ``__init__``)."""
    parts = module.split(".")
    assert parts[0] == "ptq161", module
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every ptq161 import in the file, lazy ones inside functions included."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "ptq161"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "ptq161":
                found.append((node.lineno, target))
    return found


def sources() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "tasks" not in p.parts)


def test_every_component_has_a_layer():
    names = {component(module_name(p)) for p in sources()}
    assert names <= set(LAYERS), names - set(LAYERS)


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down(path):
    own = component(module_name(path))
    bad = [
        f"line {line}: {target}"
        for line, target in imported_modules(path)
        if component(target) != own and LAYERS[component(target)] >= LAYERS[own]
    ]
    assert not bad, f"{path.relative_to(SRC)} ({own}) imports from its layer or above: {bad}"


def test_the_check_catches_an_upward_import(tmp_path, monkeypatch):
    """The check itself can fail: a fake nn module importing the pipeline is flagged."""
    fake = SRC / "nn" / "packed.py"
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: "from ..pipeline import driver\n")
    targets = imported_modules(fake)
    assert targets == [(1, "ptq161.pipeline")]
    assert LAYERS[component(targets[0][1])] >= LAYERS["nn"]


def test_readme_layout_lists_every_package_of_the_tree():
    readme = (SRC.parents[1] / "README.md").read_text()
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    listed = {
        line.split()[0].rstrip("/") for line in block.splitlines()[2:] if line.startswith("  ") and line[2] != " "
    }
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {"errors.py", "utils.py", "config.py", "api.py"}
    data = {p.name for p in SRC.iterdir() if p.is_dir() and not (p / "__init__.py").exists()} - {"__pycache__"}
    assert data == {"recipes"} and packages | data <= listed and listed - packages <= modules | data, (listed, packages)
    assert all(m in block for m in modules)
