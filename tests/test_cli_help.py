"""`--help` at 80 columns: every option name in full (issue 26: Rich's panels cut `--embed-preproce…`)."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from fuse_export.cli import app

GROUP = typer.main.get_command(app)
COMMANDS = GROUP.list_commands(GROUP.context_class(GROUP, info_name="fuse-export"))


def option_names(command, ctx) -> list[str]:
    """Every name of every option (both sides of --flag/--no-flag, and --help), read from the Click command."""
    return [name for p in command.get_params(ctx) if p.param_type_name == "option"
            for name in (*p.opts, *p.secondary_opts)]


def help_text(*args: str) -> str:
    r = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    return r.output


def in_full(name: str, text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-]|…)", text) is not None


def test_the_app_has_its_commands():
    assert {"train", "export", "bench", "predict", "serve"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_name_prints_in_full_at_80_columns(command):
    root = GROUP.context_class(GROUP, info_name="fuse-export")
    cmd = GROUP.get_command(root, command)
    text = help_text(command)
    names = option_names(cmd, cmd.context_class(cmd, info_name=command, parent=root))
    assert "--help" in names and len(names) > 1
    cut = [n for n in names if not in_full(n, text)]
    assert not cut, f"`fuse-export {command} --help` at 80 columns does not show {cut} in full:\n{text}"
    assert "…" not in text and max(map(len, text.splitlines())) <= 80, text


def test_the_root_help_shows_every_command_and_option_in_full_at_80_columns():
    text = help_text()
    for name in [*option_names(GROUP, GROUP.context_class(GROUP, info_name="fuse-export")), *COMMANDS]:
        assert in_full(name, text), f"{name} is not shown in full:\n{text}"
    assert "…" not in text
