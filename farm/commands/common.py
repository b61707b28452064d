"""What every `farm` command that talks to the coordinator shares: the client, errors, output."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import BaseModel, TypeAdapter
from rich.table import Table

from farm.commands.watch import stdout_console
from farm.core.client import FarmClient, FarmError
from farm.core.settings import Settings, get_settings

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]
USAGE_STATUSES = (400, 413, 415, 422)  # the coordinator refused what was typed: exit 2, as a bad option
DURATION = re.compile(r"(\d+)\s*([mhdw])")
UNIT_S = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
T = TypeVar("T")
TIME = TypeAdapter(datetime)


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S"
    )
    # One line per HTTP request buries what the farm itself says; failures are logged by us anyway.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def die(message: str, code: int = 1) -> NoReturn:
    typer.secho(f"error: {message}", err=True, fg="red")
    raise typer.Exit(code)


def die_farm(exc: FarmError) -> NoReturn:
    die(str(exc), 2 if exc.status in USAGE_STATUSES else 1)


def client(settings: Settings | None = None) -> FarmClient:
    s = settings or get_settings()
    token = s.resolved_token()
    if not token:
        die(
            f"no token: set FARM_TOKEN, or run this on the coordinator's machine "
            f"(it reads {s.admin_token_file})"
        )
    return FarmClient(s.url, token)


def emit(data: Any) -> None:
    typer.echo(json.dumps(plain(data), default=str))


def plain(data: Any) -> Any:
    """A wire model as the coordinator sent it: the same keys in the same order, none added."""
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json", by_alias=True, exclude_unset=True)
    if isinstance(data, list):
        return [plain(item) for item in data]
    return data


def shown_time(when: datetime | None) -> str | None:
    """A time in a table as the coordinator wrote it (pydantic's ISO 8601), not as str() would."""
    return TIME.dump_python(when, mode="json") if when is not None else None


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    shown = Table(title=title)
    for c in columns:
        shown.add_column(c)
    for r in rows:
        shown.add_row(*["" if v is None else str(v) for v in r])
    stdout_console().print(shown)


def ask(call: Callable[[FarmClient], T]) -> T:
    """One typed call to the coordinator (FarmClient's methods); its refusal ends the command."""
    with client() as farm:
        try:
            return call(farm)
        except FarmError as exc:
            die(str(exc))


def change(call: Callable[[FarmClient], T]) -> T:
    """One typed call that changes something; a refusal of what was typed exits 2, as a bad option."""
    with client() as farm:
        try:
            return call(farm)
        except FarmError as exc:
            die_farm(exc)
