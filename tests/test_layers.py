"""The package layout shows the architecture: a lower layer never imports a higher one, and no cycles.

Layers, lowest first (docs/architecture.md):

    errors, names            the error family and the built-in names (torch-free)
    core, io                 the maths and ServerCore | files: metrics, checkpoints, run directories
    compute                  what one worker computes: flat models, gradients, data, losses, metrics
    config, presets          TrainConfig (torch-free)
    engine                   what every backend shares: run context, recorder, resume, speeds, probe
    backends                 the simulator; the Ray backend
    api                      dcasgd.train
    study                    compare, report, plots
    cli, __main__, dcasgd    the command line and the curated public names
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "dcasgd"
# Each layer is a list of groups; modules of one group may import each other, two groups of one layer may not.
LAYERS = [
    [("dcasgd.errors", "dcasgd.names")],
    [("dcasgd.core",), ("dcasgd.io",)],
    [("dcasgd.compute",)],
    [("dcasgd.config", "dcasgd.presets")],
    [("dcasgd.engine",)],
    [("dcasgd.backends",)],
    [("dcasgd.api",)],
    [("dcasgd.study",)],
    [("dcasgd.cli", "dcasgd.__main__", "dcasgd")],
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def group_of(module: str) -> tuple[int, tuple[str, ...]]:
    """(layer index, the group the module belongs to), by the longest matching prefix."""
    best, length = None, -1
    for index, groups in enumerate(LAYERS):
        for group in groups:
            for entry in group:
                if (module == entry or module.startswith(entry + ".")) and len(entry) > length:
                    best, length = (index, group), len(entry)
    assert best is not None, f"{module} is in no layer"
    return best


def imports_of(path: Path) -> set[str]:
    """Every dcasgd module ``path`` imports, at the top or inside a function."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("dcasgd")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("dcasgd"):
                found.add(target)
                for alias in node.names:                      # from .pkg import module
                    if (SRC.parent / (target + "." + alias.name).replace(".", "/")).with_suffix(".py").exists():
                        found.add(target + "." + alias.name)
    return {m for m in found if m != "dcasgd"}


MODULES = sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[module_name(p) for p in MODULES])
def test_no_module_imports_a_higher_layer_or_a_sibling_package_of_its_layer(path):
    me = module_name(path)
    my_layer, my_group = group_of(me)
    for target in imports_of(path):
        layer, group = group_of(target)
        assert layer < my_layer or group == my_group, f"{me} (layer {my_group}) imports {target} (layer {group})"


def test_there_are_no_import_cycles():
    graph = {module_name(p): {t for t in imports_of(p) if not (SRC.parent / t.replace(".", "/")).is_dir()}
             for p in MODULES if p.name != "__init__.py"}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(trail + [node, nxt])
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_the_public_api_lists_and_resolves_its_names():
    code = "import dcasgd; print(dcasgd.__all__); [getattr(dcasgd, n) for n in dcasgd.__all__]"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    names = set(eval(result.stdout))                         # noqa: S307 - our own printed list
    assert {"train", "TrainResult", "TrainConfig", "ServerCore", "DcasgdError", "__version__"} <= names


def test_every_error_the_cli_reports_is_one_family():
    """The CLI catches DcasgdError's two branches; every error class of the package derives from one."""
    import dcasgd.errors as errors
    code_errors = []
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith(("Error", "Rejected", "Mismatch", "Lost",
                                                                      "Missing", "Update")):
                code_errors.append((module_name(path), node.name))
    import importlib
    for module, name in code_errors:
        cls = getattr(importlib.import_module(module), name)
        assert issubclass(cls, errors.DcasgdError), f"{module}.{name} is not a DcasgdError"
