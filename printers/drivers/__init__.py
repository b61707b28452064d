"""Printer drivers, one module per protocol, loaded by name so an agent imports only its own."""

from __future__ import annotations

import importlib

from printers.drivers.base import Driver, PrinterConfig

DRIVERS = {
    "prusalink": "printers.drivers.prusalink:PrusaLinkDriver",
    "octoprint": "printers.drivers.octoprint:OctoPrintDriver",
    "moonraker": "printers.drivers.moonraker:MoonrakerDriver",
    "bambu": "printers.drivers.bambu:BambuDriver",
}


def make_driver(config: PrinterConfig) -> Driver:
    try:
        module, cls = DRIVERS[config.driver].split(":")
    except KeyError:
        raise ValueError(
            f"unknown driver '{config.driver}'; available: {', '.join(sorted(DRIVERS))}"
        ) from None
    driver = getattr(importlib.import_module(module), cls)(config)
    assert isinstance(driver, Driver), f"{DRIVERS[config.driver]} is not a Driver"
    return driver
