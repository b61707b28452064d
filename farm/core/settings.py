"""The one Settings object. Sources, strongest first: arguments, FARM_* environment, .env, farm.toml."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from farm.core.gitsource import DEFAULT_GIT_SCHEMES


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "printfarm"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FARM_",
        env_file=".env",
        extra="ignore",
        toml_file=os.environ.get("FARM_CONFIG", "farm.toml"),
    )

    # Where the CLI, workers and agents find the coordinator.
    url: str = "http://127.0.0.1:8000"
    token: str | None = None
    token_file: Path | None = None  # read when `token` is unset (compose: the worker token's file)
    data_dir: Path = _default_data_dir()

    # Coordinator.
    host: str = "127.0.0.1"
    port: int = 8000
    # The admin token's secret on a first start (else a random one); kept in <data dir>/admin.token.
    admin_token: str | None = None
    # Compose: the coordinator keeps a worker token in this file, which workers mount read-only.
    worker_token_file: Path | None = None
    database_url: str | None = None  # default: SQLite in the data dir; postgresql+psycopg://… accepted
    db_agent_connections: int = 4  # PostgreSQL: connections per server process for agents' calls (x2)
    max_upload_mb: int = 512
    # `farm up`'s simulated PrusaLink printers take uploads this fast (kB/s), as a real MINI's ~300;
    # None: as fast as loopback goes. The chaos test slows them to kill an agent mid-upload.
    sim_upload_kbps: float | None = None
    lease_s: float = 60.0  # how long a claim stays valid without a heartbeat
    # A CAD build or slice is its worker's this long without a heartbeat; then the coordinator sends
    # it again (a worker killed mid-build: back at work within work_lease_s + 5 s).
    work_lease_s: float = 45.0
    work_heartbeat_s: float = 10.0  # how often a worker extends its lease while it builds or slices
    work_attempts: int = 3  # workers lost on one build or slice before it fails
    # Work sent but not begun this long is sent again: its message may sit with a worker that died
    # holding it (Dramatiq prefetches). A duplicate costs one refused start.
    work_resend_s: float = 90.0
    job_attempts: int = 2  # prints per job before it stays failed (`submit --attempts` overrides)
    retry_backoff_s: float = 30.0  # wait before a failed job is offered again; doubles per attempt
    starvation_s: float = 4 * 3600.0  # a job queued this long goes ahead of higher priorities
    heating_per_group: int = 1  # printers of one power group that may heat up at the same time
    heatup_s: float = 300.0  # how long after a claim a printer counts as heating

    # Notifications (farm/coordinator/notify.py): e-mail targets (`farm notify add mailto:...`)
    # go through this server.
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_from: str = "printfarm@localhost"
    smtp_user: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    notify_interval_s: float = 2.0  # how often the coordinator looks for events and due deliveries
    # /metrics: any valid token may scrape; or this one, which may do nothing else (Prometheus'
    # `authorization: {credentials: ...}`).
    metrics_token: str | None = None

    # Queue. Unset: `farm up` starts an embedded server. Two farms on one Redis server need a
    # database each (redis://host:6379/1): on the same one, their workers take each other's messages.
    redis_url: str | None = None

    # Git URLs `farm submit` fetches and the coordinator records. Add "file" for file:// URLs and
    # local repository paths (off by default: they read whatever the submitting machine can).
    git_schemes: list[str] = list(DEFAULT_GIT_SCHEMES)

    # Workers.
    slicer_path: str | None = None
    cad_cpu_s: int = 300
    cad_wall_s: int = 600
    cad_memory_mb: int = 4096
    cad_output_mb: int = 512
    worker_threads: int = 2
    # CAD builds run in a sandbox (workers/sandbox.py); a worker without one refuses CAD work.
    # "off" runs strangers' code with the worker's rights: only for designs you trust.
    cad_sandbox: Literal["on", "off"] = "on"
    cad_sandbox_disable: str = ""  # layers forced off, comma-separated: namespaces,landlock,seccomp,identity
    # Builds and slicing are batch work: `farm worker` lowers itself (and so all it starts) below the
    # coordinator and agents on a shared box. batch_nice is added to the nice value it was started
    # with; 0, batch_ioprio "normal" and batch_policy "normal" leave it as started. ioprio "low" is
    # best effort at its lowest level; "idle" waits for a disk no one else uses. Policy "idle"
    # (SCHED_IDLE) runs only on otherwise idle cores.
    batch_nice: int = Field(10, ge=0, le=19)
    batch_ioprio: Literal["idle", "low", "normal"] = "idle"
    batch_policy: Literal["normal", "batch", "idle"] = "normal"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, dotenv_settings, TomlConfigSettingsSource(settings_cls))

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "farm.coordinator.db"

    @property
    def db_url(self) -> str:
        url = self.database_url or f"sqlite:///{self.sqlite_path}"
        # The URL people copy from PostgreSQL's docs names no driver; psycopg (3) is the one installed.
        for bare in ("postgresql://", "postgres://"):
            if url.startswith(bare):
                return "postgresql+psycopg://" + url.removeprefix(bare)
        return url

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def admin_token_file(self) -> Path:
        return self.data_dir / "admin.token"

    def resolved_token(self) -> str | None:
        """FARM_TOKEN, else FARM_TOKEN_FILE's, else the admin token `farm up` left in the data dir
        (same machine only)."""
        if self.token:
            return self.token
        if self.token_file is not None:
            try:
                return self.token_file.read_text().strip() or None
            except OSError:
                return None
        try:
            return self.admin_token_file.read_text().strip() or None
        except OSError:
            return None


@lru_cache
def get_settings() -> Settings:
    return Settings()
