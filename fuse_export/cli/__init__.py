"""The `fuse-export` command line: a thin Typer shell over the library, one module per command (or group).

`common` holds what every command shares (the error handler, option parsing); `app` registers the commands.
Heavy imports live inside the commands, so `fuse-export --help` stays instant.
"""

from fuse_export.cli.app import app, main, run_app

__all__ = ["app", "main", "run_app"]
