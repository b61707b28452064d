"""`farm open`: sign a browser in to the dashboard with this machine's token."""

from __future__ import annotations

import webbrowser
from typing import Annotated

import typer

from farm.commands.common import client, die
from farm.core.client import FarmError


def open_dashboard(
    no_browser: Annotated[
        bool, typer.Option("--no-browser", help="Only print the link (on its own, the last line).")
    ] = False,
) -> None:
    """Open the dashboard, signed in as your token (admin, submitter or viewer), through a one-time
    link valid for a few minutes. The link is printed last, to open on another device."""
    with client() as farm:
        try:
            link = farm.signin_link()
        except FarmError as exc:
            die(str(exc))
    url = farm.url + link.path
    minutes = int(link.expires_in_s // 60)
    if not no_browser and webbrowser.open(url):
        typer.echo(f"opened the dashboard in your browser; the link works once, for {minutes} minutes:")
    else:
        typer.echo(f"open this link to sign in (it works once, for {minutes} minutes):")
    typer.echo(url)


def register(app: typer.Typer) -> None:
    app.command("open")(open_dashboard)
