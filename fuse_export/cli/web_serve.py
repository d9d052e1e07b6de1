"""`fuse-export web-serve`: serve a site written by `fuse-export web`, cross-origin isolated (wasm threads on)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fuse_export.cli.common import user_errors


@user_errors
def web_serve(
    site: Annotated[Path, typer.Argument(help="A site folder written by `fuse-export web`.")],
    host: Annotated[str, typer.Option(
        help="Address to listen on; 127.0.0.1 keeps it to this machine (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: a free one).")] = 8000,
    quiet: Annotated[bool, typer.Option(help="Do not log each request.")] = False,
) -> None:
    """Serve a site with the headers multi-threaded wasm needs (COOP/COEP), until Ctrl-C."""
    from fuse_export.deploy.web_serve import is_loopback, make_server, serve_until_interrupted, site_url

    server = make_server(site, host, port, log=None if quiet else lambda line: typer.echo(line, err=True))
    typer.echo(f"serving {site} at {site_url(server)}  (cross-origin isolated: wasm threads; Ctrl-C stops)")
    if not is_loopback(host):
        typer.echo("note: browsers honour the isolation headers only over https or from localhost; opened over "
                   "plain http from another machine the page runs one wasm thread (and hashes in plain JS)", err=True)
    serve_until_interrupted(server)
    typer.echo("stopped")
