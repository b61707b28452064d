"""`farm agent`: run the agent beside a printer; its set-up commands live in agent_tools and enroll."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from farm.commands import agent_tools, enroll
from farm.commands.common import die, setup_logging
from farm.core.client import FarmClient
from farm.core.stopping import stop_on_signals
from printers.agent import Agent, ConfigMistake
from printers.config import AgentConfig
from printers.drivers import make_driver

agent_app = typer.Typer(
    help="Run the agent beside a printer (farm agent --config agent.toml), or set one up."
)
agent_tools.register(agent_app)
enroll.register(agent_app)


@agent_app.callback(invoke_without_command=True)
def agent(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="The agent's TOML config file.")
    ] = None,
) -> None:
    """Run the agent for one printer: claim jobs, send them to the printer, report progress.

    `farm agent --config agent.toml` runs it; `farm agent check` and `farm agent print` help set it up.
    """
    if ctx.invoked_subcommand is not None:
        return
    if config is None:
        die("farm agent needs --config agent.toml (see the README: An agent beside a real printer)", 2)
    setup_logging()
    try:  # configuration mistakes: one line each, exit 2, no traceback
        cfg = AgentConfig.load(config)
        token, source = cfg.token()
    except SystemExit as exc:
        die(str(exc), 2)
    try:
        driver = make_driver(cfg.printer)
    except ValueError as exc:
        die(str(exc), 2)
    client = FarmClient(cfg.coordinator.url, token)
    try:
        Agent(cfg, client, driver, token_source=source).run(stop_on_signals())
    except ConfigMistake as exc:
        die(str(exc), 2)
