"""The architecture as a test, read from the package's imports with `ast` (lazy imports inside functions count).

    shared (contract, errors, extras, fileio, preprocess, progress, cpuinfo)
    -> data -> model -> training -> audit -> exporters -> runners -> compare -> inference -> deploy -> app -> cli

A module may import only from its own layer or the layers below it; no two modules import each other, directly or
round a longer circle; nothing imports the CLI; the package root holds only the shared modules.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "fuse_export"
SHARED = ("contract", "cpuinfo", "errors", "extras", "fileio", "preprocess", "progress")  # every layer's one-concept modules
LAYERS = ("data", "model", "training", "audit", "exporters", "runners", "compare", "inference", "deploy", "app", "cli")
RANK = {**dict.fromkeys(SHARED, 0), **{name: i + 1 for i, name in enumerate(LAYERS)}, "__main__": len(LAYERS)}
MAX_ROOT_MODULES = 8  # besides __init__.py and __main__.py
MAX_LINES = 300


def layer_of(module: str) -> int:
    parts = module.split(".")
    assert parts[0] == "fuse_export"
    if len(parts) == 1:
        return RANK["app"]  # fuse_export/__init__: the public API facade, re-exporting the app layer lazily
    assert parts[1] in RANK, f"{module}: not in a known layer; add it to tests/test_layers.py's LAYERS or SHARED"
    return RANK[parts[1]]


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported(tree: ast.AST, this: str, is_package: bool = False) -> set[str]:
    """The fuse_export modules a module imports (`from a import b` counts as a.b when a.b is a module)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("fuse_export")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against this module's package
                base = this.split(".") if is_package else this.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.startswith("fuse_export"):
                out.add(module)
                out |= {f"{module}.{a.name}" for a in node.names}  # kept only where it names a module
    return out


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    paths = sorted(package.rglob("*.py"))
    modules = {module_name(p, package) for p in paths}
    graph = {}
    for p in paths:
        this = module_name(p, package)
        targets = imported(ast.parse(p.read_text()), this, p.name == "__init__.py")
        graph[this] = {t for t in targets if t in modules and t != this}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted: the import circles."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def without_root(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The package root only re-exports lazily (by name, on first use), and modules take `__version__` from it:
    edges into and out of `fuse_export` itself are not circles."""
    return {m: {t for t in ts if t != "fuse_export"} for m, ts in graph.items() if m != "fuse_export"}


def test_layers_only_import_downwards():
    violations = [f"{this} imports {target}" for this, targets in import_graph().items() if this != "fuse_export"
                  for target in sorted(targets) if target != "fuse_export" and layer_of(target) > layer_of(this)]
    assert not violations, "\n".join(violations)


def test_no_import_circles():
    found = circles(without_root(import_graph()))
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_root_takes_only_the_version_from_the_package():
    """`from fuse_export import X` inside the package: `__version__` or a module (an API name goes to its module)."""
    modules = {p.stem for p in PACKAGE.glob("*.py")} | {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    bad = []
    for p in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "fuse_export" and not node.level:
                bad += [f"{module_name(p)}: {a.name}" for a in node.names if a.name != "__version__" and a.name not in modules]
    assert not bad, bad


def test_circle_detection_finds_a_planted_circle(tmp_path):
    """The checks above can fail: a two-module circle and a longer one, in a package written here."""
    pkg = tmp_path / "fuse_export"
    (pkg / "inference").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "inference" / "__init__.py").write_text("")
    (pkg / "inference" / "a.py").write_text("from fuse_export.inference.b import x\n")
    (pkg / "inference" / "b.py").write_text("def f():\n    from fuse_export.inference import a  # lazy: still a circle\n")
    (pkg / "x.py").write_text("from . import y\n")
    (pkg / "y.py").write_text("import fuse_export.z\n")
    (pkg / "z.py").write_text("from fuse_export.x import thing\n")
    assert circles(without_root(import_graph(pkg))) == [
        ["fuse_export.inference.a", "fuse_export.inference.b"], ["fuse_export.x", "fuse_export.y", "fuse_export.z"]]


def test_cli_is_imported_by_nothing():
    users = [m for m, targets in import_graph().items() if not m.startswith(("fuse_export.cli", "fuse_export.__main__"))
             and any(t == "fuse_export.cli" or t.startswith("fuse_export.cli.") for t in targets)]
    assert users == []


def test_the_root_holds_only_shared_modules():
    root = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert root == sorted(SHARED) and len(root) <= MAX_ROOT_MODULES, root


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_over_300_lines(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE.parent)}: {lines} lines; split it where its concepts split"
