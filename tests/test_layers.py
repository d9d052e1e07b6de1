"""The architecture as a test: data -> model -> train -> export -> runners -> compare -> workflows -> CLI.

A module may import only from its own layer or the layers below it (lazy imports inside functions count).
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "fuse_export"
# preprocess: the torch-free image decoding + preprocessing contract, below the data sets that share it.
RANK = {"errors": 0, "fileio": 0, "contract": 0, "progress": 0, "cpuinfo": 0, "_callable": 0, "preprocess": 0, "data": 1, "model": 2, "train": 3,
        "export": 4, "runners": 5, "compare": 6, "cli": 9, "__main__": 9}
API_RANK = 8  # the package root re-exports the API: above the workflows, below the CLI
WORKFLOW_RANK = 7  # top-level modules not named above (workflow, quickstart, predict, doctor, ...)


def layer_of(module: str) -> int:
    parts = module.split(".")
    assert parts[0] == "fuse_export"
    if len(parts) == 1:
        return API_RANK  # fuse_export/__init__: the public API facade, re-exporting lazily
    return RANK.get(parts[1], WORKFLOW_RANK)


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported(tree: ast.AST, this: str) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("fuse_export")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against this module's package
                base = this.split(".")[: -node.level] if not this.endswith("__init__") else this.split(".")
                out.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module and node.module.startswith("fuse_export"):
                out.add(node.module)
    return out


def test_layers_only_import_downwards():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        this = module_name(path)
        for target in imported(ast.parse(path.read_text()), this):
            if target == "fuse_export":
                continue
            if layer_of(target) > layer_of(this):
                violations.append(f"{this} imports {target}")
    assert not violations, "\n".join(violations)


def test_cli_is_imported_by_nothing():
    users = [module_name(p) for p in PACKAGE.rglob("*.py")
             if module_name(p) not in ("fuse_export.cli", "fuse_export.__main__")
             and "fuse_export.cli" in imported(ast.parse(p.read_text()), module_name(p))]
    assert users == []
