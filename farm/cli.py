"""The `farm` command: one typer app; each resource's commands live in farm/commands/.

Heavy imports stay inside commands: `farm agent` must run on a Pi without them.
"""

from __future__ import annotations

import typer

from farm.commands import (
    cad,
    ci,
    dashboard,
    history,
    jobs,
    revisions,
    run,
    slicing,
    status,
    submit,
)
from farm.commands.agent import agent_app
from farm.commands.emulate import emulate_app
from farm.commands.jobs import jobs_app
from farm.commands.notify import notify_app
from farm.commands.printers import printers_app
from farm.commands.projects import projects_app
from farm.commands.tokens import tokens_app

app = typer.Typer(
    help="printfarm: build123d code in, printed parts out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# `farm --help` lists commands in the order they are added here, then the groups.
cad.register(app)
slicing.register(app)
dashboard.register(app)
revisions.register(app)
app.command()(run.up)
app.command()(run.server)
app.command()(run.worker)
app.command()(submit.submit)
app.command()(status.status)
app.command()(history.history)
app.command()(jobs.job)
app.command()(status.watch)
app.command()(jobs.cancel)

app.add_typer(emulate_app, name="emulate")
ci.register(app)
app.add_typer(agent_app, name="agent")
app.add_typer(jobs_app, name="jobs")
app.add_typer(printers_app, name="printers")
app.add_typer(notify_app, name="notify")
app.add_typer(projects_app, name="projects")
app.add_typer(tokens_app, name="tokens")


def main() -> None:
    app()
