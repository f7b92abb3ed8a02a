"""The package's layers point one way: a module imports only from its own layer or below.

    base (errors, version, fileio, config, metrics) < data < models < engine
        < report, export (export.py, export_triton.py), serve < cli
        < the package's public API (adps/__init__.py, __main__)

Every import statement counts, including those inside functions and TYPE_CHECKING blocks, since
each one is a dependency a reader must follow. argparse belongs to the CLI alone.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "adps"

LAYERS = {  # module prefix -> layer; the longest matching prefix wins
    "adps.errors": 0,
    "adps.version": 0,
    "adps.fileio": 0,
    "adps.config": 0,
    "adps.metrics": 0,
    "adps.data": 1,
    "adps.models": 2,
    "adps.engine": 3,
    "adps.report": 4,
    "adps.export": 4,
    "adps.export_triton": 4,
    "adps.serve": 4,
    "adps.ray": 4,  # the Ray paths: beside serve and export, under the CLI that starts them
    "adps.cli": 5,
    "adps.__main__": 6,
    "adps": 6,
}


def layer(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return LAYERS[".".join(parts[:n])]
    raise AssertionError(f"{module} belongs to no layer; add it to LAYERS")


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _is_module(name: str) -> bool:
    path = PACKAGE.parent / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file; relative ones resolved, and
    ``from adps.engine import train`` recorded as the submodule ``adps.engine.train``."""
    if source is None:
        source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([module] if module else []))
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.append((node.lineno, sub if _is_module(sub) else module))
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_the_scan_sees_the_package():
    names = {module_name(p) for p in SOURCES}
    assert {"adps.engine.predict", "adps.cli.train", "adps.export", "adps.config"} <= names
    assert all(layer(n) >= 0 for n in names)  # every module has a layer


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p))
def test_no_module_imports_a_higher_layer(path):
    own = layer(module_name(path))
    upward = [
        f"line {line}: {mod} (layer {layer(mod)})"
        for line, mod in imports(path)
        if mod.split(".")[0] == "adps" and layer(mod) > own
    ]
    assert not upward, f"{module_name(path)} (layer {own}) imports upward: {upward}"


@pytest.mark.parametrize(
    "path", [p for p in SOURCES if "cli" not in p.parts], ids=lambda p: module_name(p)
)
def test_argparse_lives_in_the_cli_only(path):
    assert "argparse" not in {mod for _, mod in imports(path)}


def test_the_rule_catches_a_violation():
    """The checker itself: upward and relative imports inside a function are found."""
    probe = PACKAGE / "data" / "probe.py"
    source = "def f():\n    from adps.engine import train\n    from . import spec\n"
    found = [mod for _, mod in imports(probe, source)]
    assert found == ["adps.engine.train", "adps.data.spec"]
    assert layer("adps.engine.train") > layer(module_name(probe))
