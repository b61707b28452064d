"""An agent's configuration file (TOML): where the coordinator is, and how to reach its printer.

Mistakes are caught when the agent starts, one line each: a host it cannot parse, a model the
farm does not know (it would register and never get work), a missing token.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, PrivateAttr, ValidationError

from farm.core.printer_models import ALIASES, UnknownChoice, check_model
from printers.drivers.base import PrinterConfig


class CoordinatorConfig(BaseModel):
    url: str = "http://127.0.0.1:8000"
    token: str | None = None  # else FARM_TOKEN, else the admin token in the data dir (same machine)


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """The TOML file `path`, or a ValueError that says what is wrong with it, naming it `what`
    ("agent config")."""
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{what} {path} is not valid TOML: {exc}") from None


def problems(exc: ValidationError) -> list[str]:
    """A validation error as one line per problem (`[printer] port: …`), without pydantic's noise."""
    lines = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        msg = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "missing":
            msg = (
                "table is missing"
                if loc and loc[0] in ("coordinator", "printer") and len(loc) == 1
                else "missing"
            )
        if loc and loc[0] in ("coordinator", "printer"):
            where = f"[{loc[0]}]" + (f" {'.'.join(loc[1:])}:" if len(loc) > 1 else "")
        else:
            where = f"{'.'.join(loc)}:" if loc else ""
        lines.append(f"{where} {msg}".strip())
    return lines


class AgentConfig(BaseModel):
    coordinator: CoordinatorConfig
    printer: PrinterConfig
    poll_s: float = 2.0  # how often it asks the printer how a print goes
    # An idle printer's claim waits this long at the coordinator for a job (a long poll: work
    # arrives as soon as it is ready). 0: ask every poll_s instead, as agents before 0.2 did.
    wait_s: float = 5.0
    spool_dir: Path | None = None  # downloaded G-code and the agent's memory of its current job
    _source: Path | None = PrivateAttr(default=None)  # the file it was loaded from

    @classmethod
    def load(cls, path: Path) -> AgentConfig:
        try:
            data = read_toml(path, "agent config")
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
        try:
            cfg = cls.model_validate(data)
        except ValidationError as exc:
            raise SystemExit("\n".join(f"agent config {path}: {line}" for line in problems(exc))) from None
        try:  # what people type: "Mini+" is a MINI
            model = check_model(cfg.printer.model)
        except UnknownChoice as exc:  # it would register and never get work: jobs are sliced per model
            aliases = ", ".join(f"{alias} for {name}" for alias, name in ALIASES.items())
            raise SystemExit(
                f"agent config {path}: [printer] model: {exc}; also taken: {aliases}; "
                "a printer of another model gets no work"
            ) from None
        cfg.printer.model = model.name  # registered as the farm's name, which jobs are sliced for
        if cfg.spool_dir is None:
            cfg.spool_dir = path.parent / f"spool-{cfg.printer.name}"
        cfg._source = path
        return cfg

    def token(self) -> tuple[str, str]:
        """(token, where it came from): agent.toml's [coordinator] token, else FARM_TOKEN, else the
        admin token `farm up` left in the data dir. SystemExit, in one line, when there is none."""
        where = self._source or "agent.toml"
        if self.coordinator.token:
            return self.coordinator.token, f"the [coordinator] token in {where}"
        if env := os.environ.get("FARM_TOKEN", "").strip():
            return env, "FARM_TOKEN (agent config has no [coordinator] token)"
        from farm.core.settings import get_settings  # lazy: pydantic-settings and asyncio, +4.6 MB RSS

        admin = get_settings().admin_token_file
        try:
            found = admin.read_text().strip()
        except OSError:
            found = ""
        if found:
            return found, f"{admin} (neither the agent config nor FARM_TOKEN gives a token)"
        raise SystemExit(
            f'agent config {where}: no token: put token = "pf_…" under [coordinator] '
            "(farm tokens create agent-NAME --role agent --printer NAME), or set FARM_TOKEN"
        )

    def to_toml(self) -> str:
        def line(key: str, value: object) -> str:
            # JSON strings and numbers are valid TOML values.
            return f"{key} = {json.dumps(value if isinstance(value, int | float) else str(value))}"

        top = [line("poll_s", self.poll_s), line("wait_s", self.wait_s)]
        top += [line("spool_dir", self.spool_dir)] if self.spool_dir else []
        coord = ["[coordinator]", line("url", self.coordinator.url)]
        coord += [line("token", self.coordinator.token)] if self.coordinator.token else []
        printer = ["[printer]"] + [line(k, v) for k, v in self.printer.model_dump(exclude_none=True).items()]
        return "\n".join([*top, "", *coord, "", *printer]) + "\n"
