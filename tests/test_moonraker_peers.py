"""Moonraker software written by others: `moonraker-api` (Home Assistant's websocket JSON-RPC client)
against our emulator. The real Moonraker server against our driver is in test_moonraker_server.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from moonraker_api import MoonrakerClient, MoonrakerListener
from moonraker_api.websockets.websocketclient import ClientNotAuthenticatedError

from printers.drivers.base import PrinterConfig
from printers.drivers.moonraker import MoonrakerDriver
from printers.emulators.moonraker import MoonrakerEmulator
from tests.printer_fixtures import write_gcode
from tests.test_moonraker import API_KEY, HEATED

pytestmark = pytest.mark.timeout(30)


class Listener(MoonrakerListener):
    def __init__(self) -> None:
        self.states: list[str] = []

    async def state_changed(self, state: str) -> None:
        self.states.append(state)


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[MoonrakerEmulator]:
    emu = MoonrakerEmulator(api_key=API_KEY, storage_dir=tmp_path / "gcodes", speed=60.0, max_print_s=20.0)
    yield emu.start()
    emu.stop()


def test_moonraker_api_reads_server_printer_and_print_stats(
    emulator: MoonrakerEmulator, tmp_path: Path
) -> None:
    driver = MoonrakerDriver(
        PrinterConfig(name="v", model="MK4S", driver="moonraker", port=emulator.port, api_key=API_KEY)
    )
    write_gcode(tmp_path / "a.gcode", head=HEATED)

    async def scenario() -> None:
        listener = Listener()
        loop = asyncio.get_running_loop()
        session = aiohttp.ClientSession()
        at = {"host": "127.0.0.1", "port": emulator.port, "loop": loop, "timeout": 5, "session": session}
        client = MoonrakerClient(listener, api_key=API_KEY, **at)
        assert await client.connect()
        try:
            server = await client.get_server_info()
            assert (server["klippy_state"], server["websocket_count"]) == ("ready", 1)
            assert "file_manager" in server["components"]
            assert await client.get_klipper_status() == "ready"
            host = await client.get_host_info()
            assert (host["state"], host["hostname"]) == ("ready", "voron-emu")
            modules = await client.get_supported_modules()
            assert modules is not None and {"print_stats", "virtual_sdcard", "heater_bed"} <= set(modules)

            query: dict[str, Any] = {"objects": {"print_stats": None, "extruder": ["target"]}}
            idle = await client.call_method("printer.objects.query", **query)
            assert idle["status"]["print_stats"]["state"] == "standby"

            await asyncio.to_thread(driver.upload, tmp_path / "a.gcode", "a.gcode", start=True)
            printing = (await client.call_method("printer.objects.query", **query))["status"]
            stats = printing["print_stats"]
            assert (stats["state"], stats["filename"]) == ("printing", "a.gcode")
            assert printing["extruder"]["target"] == 240.0  # M104 S240 in the file

            emulator.set_klippy_state("shutdown")
            assert await client.get_klipper_status() == "shutdown"
            emulator.set_klippy_state("disconnected")
            down = await client.call_method("printer.objects.query", **query)
            assert down["error"]["code"] == 503  # printer objects need Klippy
            unknown = await client.call_method("server.no_such_method")
            assert unknown["error"] == {"code": -32601, "message": "Method not found"}
        finally:
            await client.disconnect()
        assert listener.states[-1] == "ws_stopped" and "ws_connected" in listener.states

        stranger = MoonrakerClient(Listener(), api_key="wrong", **at)
        try:
            with pytest.raises(ClientNotAuthenticatedError):
                await stranger.connect()  # the upgrade request is refused with 401
        finally:
            await session.close()

    try:
        asyncio.run(scenario())
    finally:
        driver.close()
