"""The package imports only downward: every ``vmambair`` import, read from the source with ``ast``
(module level and inside functions alike), goes to the same layer or one below it, and no two
modules import each other in a circle. The order is docs/architecture.md's."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vmambair"

# Lowest first. A module may import its own layer and the layers before it.
LAYERS = [
    {"compat", "utils", "runtime"},
    {"config"},
    {"ops"},
    {"archs", "data", "losses", "metrics"},
    {"engine"},
    {"models"},
    {"apps", "api", "__main__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path):
    """(line, imported vmambair module) for every import in the file, relative ones resolved."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "vmambair":
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "vmambair":
                continue
            if target == "vmambair" or (node.level and not node.module):
                for alias in node.names:  # from . import ops / from vmambair import runtime
                    yield node.lineno, f"{target}.{alias.name}"
            else:
                yield node.lineno, target


def layer_of(module: str):
    parts = module.split(".")
    if len(parts) < 2:
        return None  # the package itself (its __init__ sits above everything)
    return parts[1]


def package_files():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_package_is_in_a_layer():
    tops = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in package_files()} - {"__init__"}
    assert tops <= set(RANK), f"add {sorted(tops - set(RANK))} to LAYERS here and in docs/architecture.md"


@pytest.mark.parametrize("path", package_files(), ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_imports_only_go_down(path):
    me = layer_of(module_name(path))
    if me is None:
        return
    upward = [f"line {line}: {target} ({layer_of(target)} is above {me})" for line, target in imports_of(path)
              if layer_of(target) in RANK and RANK[layer_of(target)] > RANK[me]]
    # ``import vmambair`` runs the package's __init__, which imports every layer: only the top
    # layer (the apps) may do that.
    top = [f"line {line}: {target}" for line, target in imports_of(path)
           if target == "vmambair" and RANK[me] < len(LAYERS) - 1]
    assert not upward and not top, f"{path.relative_to(PACKAGE.parent)} imports upward: {upward + top}"


def test_no_import_circle_between_modules():
    graph = {}
    names = {module_name(p): p for p in package_files()}
    for name, path in names.items():
        deps = set()
        for _, target in imports_of(path):
            # an import of a package or of a name inside a module: the longest known module prefix
            while target not in names and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in names and target != name and target != "vmambair":
                deps.add(target)
        graph[name] = deps
    # Packages' __init__ files re-export their own modules: an edge into a package's own module
    # from its __init__ is not a circle with that module unless the module imports the package.
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycle = stack[stack.index(dep):] + [dep]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The checker itself can fail: a relative import from ops into engine is reported."""
    fake = PACKAGE / "ops" / "_layer_probe_tmp.py"
    fake.write_text("from ..engine import checkpoint\n")
    try:
        targets = [t for _, t in imports_of(fake)]
        assert targets == ["vmambair.engine"]
        assert RANK[layer_of(targets[0])] > RANK[layer_of(module_name(fake))]
    finally:
        fake.unlink()
