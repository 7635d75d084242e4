"""The architecture as the package's imports show it: each layer of ``lit_kd`` imports only the layers below it
(so nothing imports ``cli/`` and there is no import circle), and the chunked step reads no tensor on the host."""

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
