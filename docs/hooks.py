"""mkdocs hooks: pages generated at build time, so they cannot drift from the code.

* `cli.md`: the CLI reference, read from the Typer app itself (every command, argument and option, with its
  type, default and help text).
* `results.md`: benchmarks/RESULTS.md (the measured figures and their commands), with its images.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _param_row(p: Any, ctx: Any) -> str:
    """One table row from the parameter's own help record (what `--help` prints)."""
    record = p.get_help_record(ctx)
    names, help_text = record if record else ((p.name or "").upper(), p.help or "")
    kind = "argument" if p.param_type_name == "argument" else "option"
    required = " (required)" if p.required else ""
    return f"| `{_cell(names)}` | {kind}{required} | {_cell(help_text)} |"


def cli_reference() -> str:
    """Markdown for every command of the `fuse-export` app."""
    import typer

    from fuse_export.cli import app

    group = typer.main.get_command(app)
    lines = ["# CLI reference", "",
             "Generated from the Typer app when the documentation is built; `fuse-export COMMAND --help` prints "
             "the same.", "",
             "Exit codes: 0 success; 1 an artifact failed verification (parity, integrity or its output "
             "contract); 2 a user error (bad path, malformed file, invalid value, missing optional backend), "
             "printed as one line with no traceback.", ""]
    ctx = group.context_class(group, info_name="fuse-export")
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if cmd is None or cmd.hidden:
            continue
        sub = cmd.context_class(cmd, info_name=name, parent=ctx)
        usage = re.sub(r"\{(\w+)\}", lambda m: m.group(1).upper(), " ".join(cmd.collect_usage_pieces(sub)))
        lines += [f"## `{name}`", "", (cmd.help or "").strip(), "", "```", f"fuse-export {name} {usage}", "```", ""]
        params = [p for p in cmd.params if p.name != "help"]
        if params:
            lines += ["| argument / option | kind | description |", "|---|---|---|"]
            lines += [_param_row(p, sub) for p in params]
            lines.append("")
    return "\n".join(lines) + "\n"


def on_files(files: Files, config: Any) -> Files:
    files.append(File.generated(config, "cli.md", content=cli_reference()))
    results = ROOT / "benchmarks" / "RESULTS.md"
    files.append(File.generated(config, "results.md", content=results.read_text(encoding="utf-8")))
    for image in sorted((ROOT / "benchmarks" / "results").glob("*.png")):
        files.append(File.generated(config, f"results/{image.name}", abs_src_path=str(image)))
    return files
