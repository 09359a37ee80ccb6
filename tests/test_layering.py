"""The package's data flow, read off its imports: audio -> features -> encoder -> models ->
training, no import cycles, no Hydra.

Every ``import`` and ``from ... import`` in a module counts, at any depth (an import
inside a function is still a dependency, only a hidden one).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "speechconv"

LAYERS = [
    ("utilities", ["shapes", "checks", "atomic", "text", "metrics", "manifest"]),
    ("audio", ["audio"]),
    ("features", ["features", "feature_config", "plot"]),
    ("encoder", ["encoder", "encoder_config", "encoder_stream", "masking", "layers", "weiss2017", "inspector"]),
    ("models", ["models", "seq2seq"]),
    ("data", ["data"]),
    ("config", ["config"]),
    ("deployment", ["streaming", "export"]),
    ("training", ["training"]),
    ("package", [""]),
]
"""Layers, lowest first: a module may import its own layer and the layers before it.
Names are module or subpackage names under speechconv/ ("": the package's own
``__init__``, whose lazy re-exports stand above everything)."""


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of ``speechconv.x.y`` (by ``x``)."""
    head = module.split(".")[1] if "." in module else ""
    for i, (_, names) in enumerate(LAYERS):
        if head in names:
            return i
    raise AssertionError(f"{module} is in no layer of tests/test_layering.py: add it where it belongs")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_block(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:``: imports for annotations only, not a dependency at run time."""
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (``if TYPE_CHECKING:``
    blocks aside), relative imports resolved; ``from pkg import sub`` counts as ``pkg.sub``
    when ``sub`` is a module, else as ``pkg``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    skip = {id(n) for block in ast.walk(tree) if _type_checking_block(block) for n in ast.walk(block)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def graph() -> dict[str, set[str]]:
    """speechconv module -> the speechconv modules it imports (only those that exist)."""
    edges = {}
    for name, path in MODULES.items():
        edges[name] = {m for m in imports(path) if m in MODULES and m != name}
    return edges


def test_no_module_imports_hydra():
    offenders = sorted(n for n, p in MODULES.items() if any(m.split(".")[0] == "hydra" for m in imports(p)))
    assert not offenders, f"library modules import hydra (it stops at train.py): {offenders}"


def test_no_import_cycles():
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            # a package's __init__ importing its own submodules is not a cycle of the data flow
            if len(component) > 1 and not all(m.startswith(min(component) + ".") or m == min(component)
                                               for m in component):
                cycles.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    assert not cycles, f"import cycles: {cycles}"


def test_imports_follow_the_layers():
    wrong = []
    for name, targets in graph().items():
        for target in targets:
            if layer_of(target) > layer_of(name):
                wrong.append(f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})")
    assert not wrong, "imports against the data flow:\n" + "\n".join(sorted(wrong))
