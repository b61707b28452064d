"""`farm emulate`: printer emulators that speak a real printer protocol, for trying the farm out.

Each emulator is imported inside its command: `farm emulate bambu` loads no PrusaLink server.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer

from farm.commands.common import setup_logging
from farm.core.printer_models import find_model
from farm.core.stopping import stop_on_signals

emulate_app = typer.Typer(
    help="Run a printer emulator that speaks a real printer protocol.", no_args_is_help=True
)

StorageOpt = Annotated[
    Path | None,
    typer.Option(help="Where received files are kept (default: a temporary folder, removed on exit)."),
]


def emulated_model(name: str, *, bambu: bool) -> str:
    """The model an emulator claims to be, by the farm's name when `name` is one of its models or
    aliases ("MK3S+" and "mk3s" are MK3S, "Core One" COREONE, "A1 mini" A1MINI): the PrusaLink
    emulator compares it with the G-code's `M862.3 P`, which uses those names, and a mismatch
    leaves the print waiting at the screen. Other names (MK3, MK2.5) are kept as given."""
    model = find_model(name)
    if model is not None and (model.protocol == "bambu") == bambu:
        return model.name
    return name.strip()


@contextlib.contextmanager
def _emulator_storage(storage: Path | None, kind: str) -> Iterator[Path]:
    """The folder an emulator keeps received files in: `storage`, or a temporary one that goes when
    the emulator does (never the current directory: an emulator run from a checkout must not
    litter it)."""
    if storage is not None:
        yield storage
        return
    with tempfile.TemporaryDirectory(prefix=f"farm-emulate-{kind}-") as tmp:
        yield Path(tmp)


HostOpt = Annotated[str, typer.Option(help="Address to listen on.")]
PortOpt = Annotated[int, typer.Option(help="Port to listen on (0: any free port).")]
SpeedOpt = Annotated[float, typer.Option(help="How much faster than the G-code's estimate it prints.")]


@emulate_app.command("prusalink")
def emulate_prusalink(
    port: PortOpt = 8080,
    password: Annotated[str, typer.Option(help="The PrusaLink password (user 'maker').")] = "maker",
    host: HostOpt = "127.0.0.1",
    model: Annotated[
        str,
        typer.Option(
            help="The printer model it claims to be. MK3/MK3S/MK2.5: Prusa-Link on a Raspberry Pi "
            "(storages local and read-only sdcard); others: Buddy firmware (storage usb)."
        ),
    ] = "MINI",
    storage: StorageOpt = None,
    speed: SpeedOpt = 60.0,
    upload_kbps: Annotated[
        float | None, typer.Option(help="Receive uploads at this many kB/s, like a real printer.")
    ] = None,
) -> None:
    """Emulate a Prusa printer's PrusaLink API (digest auth, uploads, jobs) over HTTP."""
    from printers.emulators.prusalink import PrusaLinkEmulator  # lazy: its servers cost every `farm` 3-6 ms

    model = emulated_model(model, bambu=False)
    _serve_emulator(
        "prusalink",
        f"PrusaLink {model}",
        storage,
        partial(
            PrusaLinkEmulator,
            host=host,
            port=port,
            password=password,
            model=model,
            speed=speed,
            upload_bytes_per_s=upload_kbps * 1000 if upload_kbps else None,
        ),
        after_url=" (user maker)",
    )


@emulate_app.command("octoprint")
def emulate_octoprint(
    port: PortOpt = 5000,
    api_key: Annotated[str, typer.Option(help="The API key clients must send as X-Api-Key.")] = "printfarm",
    host: HostOpt = "127.0.0.1",
    storage: StorageOpt = None,
    speed: SpeedOpt = 60.0,
) -> None:
    """Emulate an OctoPrint server (REST API, uploads, job control) with a connected printer."""
    from printers.emulators.octoprint import OctoPrintEmulator  # lazy: its servers cost every `farm` 3-6 ms

    _serve_emulator(
        "octoprint",
        "OctoPrint",
        storage,
        partial(OctoPrintEmulator, host=host, port=port, api_key=api_key, speed=speed),
    )


@emulate_app.command("moonraker")
def emulate_moonraker(
    port: PortOpt = 7125,
    api_key: Annotated[str | None, typer.Option(help="Require this X-Api-Key (default: trust all).")] = None,
    host: HostOpt = "127.0.0.1",
    storage: StorageOpt = None,
    speed: SpeedOpt = 60.0,
) -> None:
    """Emulate Moonraker (the Klipper API server): uploads, print_stats, pause/resume/cancel."""
    from printers.emulators.moonraker import MoonrakerEmulator  # lazy: its servers cost every `farm` 3-6 ms

    _serve_emulator(
        "moonraker",
        "Moonraker",
        storage,
        partial(MoonrakerEmulator, host=host, port=port, api_key=api_key, speed=speed),
    )


@emulate_app.command("bambu")
def emulate_bambu(
    host: HostOpt = "127.0.0.1",
    mqtt_port: Annotated[int, typer.Option(help="MQTT over TLS port (8883 on a printer; 0: any).")] = 8883,
    ftps_port: Annotated[int, typer.Option(help="Implicit FTPS port (990 on a printer; 0: any).")] = 990,
    camera_port: Annotated[
        int,
        typer.Option(
            help="The camera: a P1/A1's JPEG stream over TLS (6000 on a printer), an X1's RTSPS (322); 0: any"
        ),
    ] = 6000,
    serial: Annotated[str, typer.Option(help="The printer's serial number.")] = "01S00A000000001",
    access_code: Annotated[str, typer.Option(help="The LAN access code (user bblp).")] = "12345678",
    model: Annotated[str, typer.Option(help="X1C, P1S, A1 or A1MINI.")] = "X1C",
    storage: StorageOpt = None,
    speed: SpeedOpt = 60.0,
    developer_mode: Annotated[
        bool, typer.Option(help="LAN-only Developer Mode (off: commands refused).")
    ] = True,
) -> None:
    """Emulate a Bambu Lab printer in LAN mode: MQTT over TLS and implicit FTPS."""
    from printers.emulators.bambu import BambuEmulator  # lazy: its servers cost every `farm` 3-6 ms

    model = emulated_model(model, bambu=True)
    _serve_emulator(
        "bambu",
        f"Bambu {model}",
        storage,
        partial(
            BambuEmulator,
            host=host,
            mqtt_port=mqtt_port,
            ftps_port=ftps_port,
            camera_port=camera_port,
            serial=serial,
            access_code=access_code,
            model=model,
            speed=speed,
            developer_mode=developer_mode,
        ),
    )


def _serve_emulator(
    name: str, kind: str, storage: Path | None, make: Callable[..., Any], after_url: str = ""
) -> None:
    """Run the emulator `make(storage_dir=FOLDER)` builds until Ctrl-C or SIGTERM; a temporary
    FOLDER is named for `name`."""
    setup_logging()
    with _emulator_storage(storage, name) as files:
        emu = make(storage_dir=files)
        # Ctrl-C is ours before anyone is told the emulator is up: a SIGINT just after that line used
        # to raise KeyboardInterrupt past emu.stop(), and its server threads kept the process alive.
        stop = stop_on_signals()
        emu.start()
        try:
            typer.echo(f"{kind} emulator on {emu.url}{after_url}, files in {files}", err=True)
            stop.wait()
        finally:
            emu.stop()
