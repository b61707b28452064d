"""Issue #14: agents that are right about the bed and quiet when healthy.

A real farm (`farm up --sim prusalink=1,octoprint=1`) plus agent processes of our own beside
PrusaLink emulators on loopback ports: (4) no traceback or ERROR in any log through prints and idle
spells; (5) a print found finished when an agent starts keeps the bed uncleared; (6) configuration
mistakes end the agent at start with one clear line, and a removed printer's agent says so once.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from farm.core.client import FarmClient
from farm.core.states import PrinterState
from printers.config import AgentConfig
from printers.drivers import make_driver
from printers.drivers.base import PrinterConfig
from printers.emulators.prusalink import PrusaLinkEmulator
from tests.conftest import EXAMPLES, REPO, RunningFarm, run_farm, running_farm, stop_process, wait_until

PASSWORD = "pw-health-7"


@pytest.fixture(scope="module")
def quiet_farm(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    with running_farm(
        redis_url, tmp_path_factory.mktemp("health"), "prusalink=1,octoprint=1", redis_db=6
    ) as running:
        yield running


def admin(farm: RunningFarm) -> httpx.Client:
    token = (farm.data_dir / "admin.token").read_text().strip()
    return httpx.Client(base_url=farm.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def printer(farm: RunningFarm, name: str) -> dict | None:
    return next((p for p in admin(farm).get("/api/printers").json() if p["name"] == name), None)


def write_config(
    path: Path, *, url: str, name: str, printer_port: int, token: str | None, **extra: str
) -> Path:
    printer_table = {"name": name, "model": "MINI", "driver": "prusalink", "password": PASSWORD}
    printer_table |= {"host": "127.0.0.1", "port": printer_port, **extra}
    lines = ["poll_s = 0.5", f'spool_dir = "{path.parent / "spool"}"', "", "[coordinator]", f'url = "{url}"']
    lines += [f'token = "{token}"'] if token else []
    lines += [
        "",
        "[printer]",
        *(f"{k} = {v!r}" if k == "port" else f'{k} = "{v}"' for k, v in printer_table.items()),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def agent_process(farm: RunningFarm, config: Path, log: Path, **env: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "farm", "agent", "--config", str(config)]
    with log.open("ab") as out:
        return subprocess.Popen(argv, env={**farm.env, **env}, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[PrusaLinkEmulator]:
    emu = PrusaLinkEmulator(password=PASSWORD, model="MINI", storage_dir=tmp_path / "usb", speed=600).start()
    yield emu
    emu.stop()


def finish_a_print_on(emu: PrusaLinkEmulator, tmp_path: Path) -> None:
    """Someone printed on this printer before its agent started: the part is on the bed."""
    gcode = tmp_path / "earlier.gcode"
    gcode.write_text('M862.3 P "MINI"\nG28\nG1 X10 Y10\n; estimated printing time (normal mode) = 1m 0s\n')
    config = PrinterConfig(name="x", model="MINI", driver="prusalink", port=emu.port, password=PASSWORD)
    driver = make_driver(config)
    try:
        driver.upload(gcode, "earlier.gcode", start=True)
        wait_until(lambda: driver.status().state == PrinterState.FINISHED, 30, "the earlier print to finish")
    finally:
        driver.close()


# -- finding 4: quiet when healthy --------------------------------------------------------------


def test_nothing_queued_is_none_not_a_json_error(quiet_farm: RunningFarm) -> None:
    """GET /api/agents/next answers 204 when nothing is queued; the client returns None for it."""
    token = (quiet_farm.data_dir / "admin.token").read_text().strip()
    with FarmClient(quiet_farm.url, token) as client:
        assert client.get("/api/agents/next", printer="sim-mini-1") is None


def test_a_farm_at_work_and_at_rest_logs_no_error(quiet_farm: RunningFarm) -> None:
    """Prints on both protocols, then idle spells longer than the agents' prefetch period (15 s)
    with finished prints showing and nothing queued: no log may hold a traceback or an ERROR."""
    for _ in range(2):
        for model in ("MINI", "MK3S"):
            code, build = quiet_farm.cli_json(
                "submit", str(EXAMPLES / "cube.stl"), "--printer-model", model, "--wait", timeout=300
            )
            assert code == 0 and build["jobs"][0]["state"] == "done", build
        time.sleep(20)  # the printers show finished, nothing is queued: agents ask what is next
    logs = sorted((quiet_farm.data_dir / "logs").glob("*.log"))
    assert any(p.name.startswith("agent-") for p in logs), logs
    noisy = {
        p.name: [
            line
            for line in p.read_text(errors="replace").splitlines()
            if "Traceback" in line or "ERROR" in line
        ]
        for p in logs
    }
    assert not {name: lines for name, lines in noisy.items() if lines}, noisy


# -- finding 5: right about the bed --------------------------------------------------------------


def test_a_print_finished_before_the_agent_started_keeps_the_bed(
    quiet_farm: RunningFarm, emulator: PrusaLinkEmulator, tmp_path: Path
) -> None:
    finish_a_print_on(emulator, tmp_path)
    token = (quiet_farm.data_dir / "admin.token").read_text().strip()
    config = write_config(
        tmp_path / "agent.toml", url=quiet_farm.url, name="late-1", printer_port=emulator.port, token=token
    )
    agent = agent_process(quiet_farm, config, tmp_path / "agent.log")
    try:
        found = wait_until(lambda: printer(quiet_farm, "late-1"), 30, "the agent to register")
        assert found["bed_clear"] is False, found
        code, build = quiet_farm.cli_json(
            "submit", str(EXAMPLES / "cube.stl"), "--printer", "late-1", "--printer-model", "MINI"
        )
        assert code == 0, build
        job_id = build["jobs"][0]["id"]
        api = admin(quiet_farm)
        wait_until(lambda: api.get(f"/api/jobs/{job_id}").json()["state"] == "ready", 120, "the slice")
        time.sleep(3)  # six agent rounds: the part is on the bed, so nothing may be sent
        assert api.get(f"/api/jobs/{job_id}").json()["state"] == "ready"
        assert len(emulator.printer.history) == 1, emulator.printer.history  # the earlier print only
        code, _ = quiet_farm.cli_json("printers", "clear", "late-1")
        assert code == 0
        done = wait_until(
            lambda: (j := api.get(f"/api/jobs/{job_id}").json())["state"] in ("done", "failed") and j,
            120,
            "the job to print once the bed is clear",
        )
        assert done["state"] == "done" and done["printer"] == "late-1", done
    finally:
        stop_process(agent, 20)
        admin(quiet_farm).delete("/api/printers/late-1")
    log = (tmp_path / "agent.log").read_text()
    assert "Traceback" not in log and "ERROR" not in log, log


@pytest.mark.parametrize(
    ("shows", "auto_eject", "clear"),
    [("finished", False, False), ("failed", False, False), ("finished", True, True), ("idle", False, True)],
)
def test_what_a_printer_shows_when_its_agent_registers_decides_its_bed(
    quiet_farm: RunningFarm, shows: str, auto_eject: bool, clear: bool
) -> None:
    """A failed print at start is a part (or a mess) on the bed as much as a finished one; a printer
    that ejects its own parts has none; an idle one has none either."""
    api, name = admin(quiet_farm), f"reg-{shows}-{int(auto_eject)}"
    reg = {"printer": name, "model": "MINI", "protocol": "prusalink", "auto_eject": auto_eject}
    try:
        assert api.post("/api/agents/register", json=reg | {"state": "idle"}).status_code == 200
        assert printer(quiet_farm, name)["bed_clear"] is True  # type: ignore[index]
        # The agent restarts and finds the printer showing `shows`: the printer is known already.
        assert api.post("/api/agents/register", json=reg | {"state": shows}).status_code == 200
        found = printer(quiet_farm, name)
        assert found is not None and found["bed_clear"] is clear, found
        assert (found["state"] == "awaiting_clear") is not clear, found
    finally:
        api.delete(f"/api/printers/{name}")


def test_a_printer_off_at_start_is_asked_about_its_bed_when_it_comes_back(
    quiet_farm: RunningFarm, emulator: PrusaLinkEmulator, tmp_path: Path
) -> None:
    """Registered while the printer was unreachable, the agent cannot know what is on the bed; it
    registers again once the printer answers, and a finished print there keeps the bed."""
    finish_a_print_on(emulator, tmp_path)
    emulator.go_offline()
    token = (quiet_farm.data_dir / "admin.token").read_text().strip()
    config = write_config(
        tmp_path / "agent.toml", url=quiet_farm.url, name="dark-1", printer_port=emulator.port, token=token
    )
    agent = agent_process(quiet_farm, config, tmp_path / "agent.log")
    try:
        found = wait_until(lambda: printer(quiet_farm, "dark-1"), 30, "the agent to register")
        assert found["state"] == "offline", found
        emulator.come_back()
        back = wait_until(
            lambda: (p := printer(quiet_farm, "dark-1")) and p["state"] != "offline" and p, 30, "the printer"
        )
        assert back["bed_clear"] is False and back["state"] == "awaiting_clear", back
    finally:
        stop_process(agent, 20)
        admin(quiet_farm).delete("/api/printers/dark-1")


# -- finding 6: configuration mistakes and a removed printer ------------------------------------


@pytest.mark.parametrize(
    ("host", "port", "url"),
    [
        ("127.0.0.1:42553", None, "http://127.0.0.1:42553"),
        ("http://127.0.0.1", None, "http://127.0.0.1:80"),
        ("http://127.0.0.1:8080/", None, "http://127.0.0.1:8080"),
        ("https://mini-1.local", None, "https://mini-1.local:443"),
        ("mini-1.local", 8080, "http://mini-1.local:8080"),
        ("192.168.1.50", None, "http://192.168.1.50:80"),
        ("[fe80::1]:8080", None, "http://[fe80::1]:8080"),
        ("[::1]", None, "http://[::1]:80"),
        ("fe80::1", None, "http://[fe80::1]:80"),
    ],
)
def test_host_forms(host: str, port: int | None, url: str) -> None:
    config = PrinterConfig(name="m", model="MINI", driver="prusalink", host=host, port=port, password="x")
    driver = make_driver(config)
    try:
        assert driver.base_url == url  # type: ignore[attr-defined]
    finally:
        driver.close()


@pytest.mark.parametrize(
    ("host", "says"),
    [
        ("ftp://10.0.0.5", "only http:// or https://"),
        ("http://10.0.0.5/api", "without a path"),
        ("10.0.0.5:99999", "not a number from 1 to 65535"),
        ("[fe80::1", "in brackets"),
        ("fe80::1:zz", "goes in brackets"),
        ("my printer", "not a host name"),
    ],
)
def test_bad_hosts_say_why(host: str, says: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(says)):
        PrinterConfig(name="m", model="MINI", driver="prusalink", host=host, password="x")


@pytest.mark.parametrize("form", ["127.0.0.1:{port}", "http://127.0.0.1:{port}", "[::1]:{port}"])
def test_host_with_port_reaches_the_printer(form: str, tmp_path: Path) -> None:
    host = "::1" if form.startswith("[") else "127.0.0.1"
    try:
        emu = PrusaLinkEmulator(host=host, password=PASSWORD, storage_dir=tmp_path / "usb").start()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        config = PrinterConfig(
            name="m", model="MINI", driver="prusalink", host=form.format(port=emu.port), password=PASSWORD
        )
        driver = make_driver(config)
        try:
            assert driver.status().state == PrinterState.IDLE
        finally:
            driver.close()
    finally:
        emu.stop()


def test_model_aliases_become_the_farm_model(tmp_path: Path) -> None:
    """`model = "Mini+"` registered as Mini+ and never got work: jobs are sliced for MINI."""
    config = write_config(
        tmp_path / "agent.toml", url="http://x", name="m", printer_port=1, token="t", model="Mini+"
    )
    assert AgentConfig.load(config).printer.model == "MINI"


def run_agent_cli(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_farm(env, "agent", "--config", str(config), timeout=60)


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"model": "Ender-3"}, "[printer] model: unknown printer model 'Ender-3'"),
        ({"host": "http://[http://127.0.0.1]"}, "[printer] host = 'http://[http://127.0.0.1]'"),
        ({"port": "http"}, "[printer] port: Input should be a valid integer"),
    ],
)
def test_config_mistakes_are_one_line_at_start(extra: dict[str, str], says: str, tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "agent.toml", url="http://127.0.0.1:1", name="m", printer_port=1, token="t", **extra
    )
    done = run_agent_cli(config, {"PATH": "/usr/bin:/bin", "FARM_DATA_DIR": str(tmp_path)})
    assert done.returncode == 2, done
    assert says in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    if "model" in extra:
        assert "MINI" in done.stderr and "MINI+ for MINI" in done.stderr, done.stderr


@pytest.mark.parametrize("where", ["agent.toml", "FARM_TOKEN", "data dir"])
def test_a_wrong_token_names_where_it_came_from(
    quiet_farm: RunningFarm, emulator: PrusaLinkEmulator, tmp_path: Path, where: str
) -> None:
    in_file = "pf_wrong" if where == "agent.toml" else None
    config = write_config(
        tmp_path / "agent.toml", url=quiet_farm.url, name="m", printer_port=emulator.port, token=in_file
    )
    env = {**quiet_farm.env, "FARM_DATA_DIR": str(tmp_path)}
    if where == "FARM_TOKEN":
        env["FARM_TOKEN"] = "pf_wrong"
    (tmp_path / "admin.token").write_text("pf_wrong_admin\n")  # what the data dir holds
    done = run_agent_cli(config, env)
    assert done.returncode == 2, done
    line = done.stderr.strip().splitlines()[-1]
    assert "refused the token" in line and "Traceback" not in done.stderr, done.stderr
    if where == "agent.toml":
        assert str(config) in line and "FARM_TOKEN" not in line, line
    elif where == "FARM_TOKEN":
        assert "FARM_TOKEN" in line and "admin.token" not in line, line
    else:
        assert str(tmp_path / "admin.token") in line, line


def test_a_removed_printers_agent_says_so_once_and_waits(
    quiet_farm: RunningFarm, emulator: PrusaLinkEmulator, tmp_path: Path
) -> None:
    token = (quiet_farm.data_dir / "admin.token").read_text().strip()
    config = write_config(
        tmp_path / "agent.toml", url=quiet_farm.url, name="gone-1", printer_port=emulator.port, token=token
    )
    log = tmp_path / "agent.log"
    agent = agent_process(quiet_farm, config, log)
    try:
        wait_until(lambda: printer(quiet_farm, "gone-1"), 30, "the agent to register")
        code, _ = quiet_farm.cli_json("printers", "remove", "gone-1")
        assert code == 0
        time.sleep(6)  # twelve rounds of the agent
        assert agent.poll() is None  # it waits: a restart puts the printer back
        assert printer(quiet_farm, "gone-1") is None  # and does not undo the removal
    finally:
        stop_process(agent, 20)
    text = log.read_text()
    said: Callable[[str], int] = lambda s: sum(s in line for line in text.splitlines())  # noqa: E731
    assert said("no longer knows this printer") == 1, text
    assert said("not registered") == 1, text  # the one line quotes the coordinator, once
    assert "Traceback" not in text, text
