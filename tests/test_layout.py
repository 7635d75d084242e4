"""The architecture as the package's imports show it: each layer of ``lit_kd`` imports only the layers below it
(so nothing imports ``cli/`` and there is no import circle between layers), no two files import each other (within a
layer either), ``DistillModule`` stays at most 250 lines, and the chunked step reads no tensor on the host."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

LAYERS = ["cli", "training", "experiments", "modules", "teacher", "eval", "losses", "models", "data", "utils", "errors"]
"""Top to bottom, as lit_kd/__init__.py and the README's layout describe them."""


def lit_kd_imports(path: Path) -> set[str]:
    """The lit_kd sub-packages a file imports (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        found.update(name.split(".")[1] for name in names if name.startswith("lit_kd."))
    return found


def test_each_layer_imports_only_the_layers_below_it():
    package = ROOT / "lit_kd"
    seen = set()
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package)
        layer = relative.parts[0] if len(relative.parts) > 1 else relative.stem
        if layer in ("__init__", "__main__"):
            continue
        seen.add(layer)
        assert layer in LAYERS, f"{relative}: a sub-package the layout does not list"
        for target in lit_kd_imports(path) - {layer}:
            assert LAYERS.index(target) > LAYERS.index(layer), f"lit_kd/{relative} imports {target}, a layer above"
    assert seen == set(LAYERS)


def test_the_chunk_loop_and_the_normalizer_never_read_a_tensor_on_the_host():
    """No ``if tensor.any()``, ``float(tensor)`` or ``.item()`` per chunk or per micro-batch."""
    for name in ("lit_kd/losses/chunked.py", "lit_kd/modules/normalization.py"):
        tree = ast.parse((ROOT / name).read_text())
        for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
            if function.name in ("finish", "problems"):  # once per optimizer step; on demand
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Call):
                    called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                    assert called not in ("item", "tolist", "float"), f"{name}: {function.name} calls {called}()"
                tests = [node.test] if isinstance(node, (ast.If, ast.IfExp, ast.While)) else []
                tests += node.ifs if isinstance(node, ast.comprehension) else []
                for test in tests:  # `if tensor.any():` reads the tensor on the host
                    calls = [n for n in ast.walk(test) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]
                    assert not any(c.func.attr in ("any", "all") for c in calls), f"{name}: {function.name}"


def module_file(name: str) -> Path | None:
    """The file of a dotted ``lit_kd`` module name (a package's ``__init__.py``), None if there is none."""
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_files(path: Path) -> set[Path]:
    """The lit_kd files ``path`` imports: ``from lit_kd.a.b import c`` is ``a/b/c.py`` when ``c`` is a module,
    else ``a/b.py`` (or ``a/b/__init__.py``); ``import lit_kd.a.b`` is ``a/b.py``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lit_kd"):
            for alias in node.names:
                target = module_file(f"{node.module}.{alias.name}") or module_file(node.module)
                found.add(target)
        elif isinstance(node, ast.Import):
            found.update(module_file(a.name) for a in node.names if a.name.startswith("lit_kd"))
    return {f for f in found if f is not None and f != path}


def test_no_two_files_import_each_other():
    files = sorted((ROOT / "lit_kd").rglob("*.py"))
    imports = {path: imported_files(path) for path in files}
    circles = sorted(
        f"{a.relative_to(ROOT)} <-> {b.relative_to(ROOT)}"
        for a in files
        for b in imports[a]
        if a in imports.get(b, set()) and str(a) < str(b)
    )
    assert not circles, f"files that import each other: {circles}"


def test_the_lightning_module_stays_small():
    """``DistillModule`` orchestrates the step and nothing else: at most 250 lines (logging, throughput and extra
    evaluation live in callbacks)."""
    lines = len((ROOT / "lit_kd" / "modules" / "distill.py").read_text().splitlines())
    assert lines <= 250, f"lit_kd/modules/distill.py has {lines} lines"
