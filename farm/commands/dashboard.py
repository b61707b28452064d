"""`farm open`: sign a browser in to the dashboard with this machine's token."""

from __future__ import annotations

import webbrowser
from typing import Annotated

import typer

from farm.core.client import FarmClient, FarmError
from farm.core.settings import get_settings


def open_dashboard(
    no_browser: Annotated[
        bool, typer.Option("--no-browser", help="Only print the link (on its own, the last line).")
    ] = False,
) -> None:
    """Open the dashboard, signed in as your token (admin, submitter or viewer), through a one-time
    link valid for a few minutes. The link is printed last, to open on another device."""
    settings = get_settings()
    token = settings.resolved_token()
    if not token:
        typer.secho(
            f"error: no token: set FARM_TOKEN, or run this on the coordinator's machine "
            f"(it reads {settings.admin_token_file})",
            err=True,
            fg="red",
        )
        raise typer.Exit(1)
    with FarmClient(settings.url, token) as client:
        try:
            link = client.post("/api/signin-links")
        except FarmError as exc:
            typer.secho(f"error: {exc}", err=True, fg="red")
            raise typer.Exit(1) from None
    url = client.url + link["path"]
    minutes = int(link["expires_in_s"] // 60)
    if not no_browser and webbrowser.open(url):
        typer.echo(f"opened the dashboard in your browser; the link works once, for {minutes} minutes:")
    else:
        typer.echo(f"open this link to sign in (it works once, for {minutes} minutes):")
    typer.echo(url)


def register(app: typer.Typer) -> None:
    app.command("open")(open_dashboard)
