"""The `fuse-export` Typer app: every command registered in the help's order, and the console script's entry."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from fuse_export.cli.audit import audit_labels
from fuse_export.cli.bench import bench
from fuse_export.cli.deploy import serve, triton_repo
from fuse_export.cli.doctor import doctor
from fuse_export.cli.engine import build_engine
from fuse_export.cli.export import export
from fuse_export.cli.predict import predict
from fuse_export.cli.quickstart import quickstart
from fuse_export.cli.train import train
from fuse_export.cli.web import web
from fuse_export.cli.web_serve import web_serve

app = typer.Typer(
    name="fuse-export",
    help="Train, export, verify and benchmark a fused DCNN + Self-Cure Network facial-emotion model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Click's plain help formatter: it wraps option names that do not fit 80 columns where Rich's panels cut them
    # (`--embed-preproce…`), and it prints help texts as written (Rich took `[openvino]` for markup).
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        from fuse_export import __version__

        typer.echo(f"fuse-export {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False) -> None:
    """Train, export, verify and benchmark a fused DCNN + Self-Cure Network facial-emotion model."""


# Registered here, not where they are defined, so that a command module does not import the app (and the order
# of the help's command list is written in one place).
app.command()(train)
app.command()(export)
app.command()(bench)
app.command()(quickstart)
app.command("triton-repo")(triton_repo)
app.command()(serve)
app.command()(predict)
app.command()(web)
app.command("web-serve")(web_serve)
app.command("audit-labels")(audit_labels)
app.command("build-engine")(build_engine)
app.command()(doctor)


def main() -> None:
    # Quiet the TorchScript deprecation chatter in every subprocess we might spawn (torch.jit is legacy upstream).
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    sys.exit(run_app())


def run_app(args: list[str] | None = None) -> int:
    """Run the app; Click's usage errors (a value out of range, an unknown option) become one line, exit 2."""
    try:  # typer >= 0.2x vendors Click as typer._click (its exceptions are not click's, and click is not installed)
        from typer._click.exceptions import ClickException, NoArgsIsHelpError
        from typer.exceptions import Abort
    except ImportError:
        from click.exceptions import Abort, ClickException, NoArgsIsHelpError

    try:
        code = app(args=args, standalone_mode=False)
    except NoArgsIsHelpError as exc:
        exc.show()
        return exc.exit_code
    except ClickException as exc:
        command = f" {exc.ctx.info_name}" if getattr(exc, "ctx", None) is not None and exc.ctx.parent else ""
        typer.echo(f"error: {exc.format_message()} (see `fuse-export{command} --help`)", err=True)
        return exc.exit_code
    except Abort:
        typer.echo("aborted", err=True)
        return 130
    return code if isinstance(code, int) else 0
