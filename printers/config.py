"""An agent's configuration file (TOML): where the coordinator is, and how to reach its printer."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from pydantic import BaseModel, ValidationError

from printers.drivers.base import PrinterConfig


class CoordinatorConfig(BaseModel):
    url: str = "http://127.0.0.1:8000"
    token: str


class AgentConfig(BaseModel):
    coordinator: CoordinatorConfig
    printer: PrinterConfig
    poll_s: float = 2.0
    spool_dir: Path | None = None  # downloaded G-code and the agent's memory of its current job

    @classmethod
    def load(cls, path: Path) -> AgentConfig:
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise SystemExit(f"agent config {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise SystemExit(f"agent config {path} is not valid TOML: {exc}") from None
        try:
            cfg = cls.model_validate(data)
        except ValidationError as exc:
            raise SystemExit(f"agent config {path} is incomplete or wrong:\n{exc}") from None
        if cfg.spool_dir is None:
            cfg.spool_dir = path.parent / f"spool-{cfg.printer.name}"
        return cfg

    def to_toml(self) -> str:
        def line(key: str, value: object) -> str:
            # JSON strings and numbers are valid TOML values.
            return f"{key} = {json.dumps(value if isinstance(value, int | float) else str(value))}"

        top = [line("poll_s", self.poll_s)] + ([line("spool_dir", self.spool_dir)] if self.spool_dir else [])
        coord = ["[coordinator]", line("url", self.coordinator.url), line("token", self.coordinator.token)]
        printer = ["[printer]"] + [line(k, v) for k, v in self.printer.model_dump(exclude_none=True).items()]
        return "\n".join([*top, "", *coord, "", *printer]) + "\n"
