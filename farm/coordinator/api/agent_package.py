"""The agent's package, served by the coordinator it will talk to: `curl URL/agent/install.sh | sh`.

The wheel is this coordinator's own source built with `pip wheel --no-deps` the first time a Pi
asks (once per coordinator process, so an upgraded coordinator serves its new code), so the Pi
runs the same code as the coordinator; its dependencies (the base install: httpx, pydantic,
typer, paho-mqtt) come from the package registry. No token: the code is no secret, and a Pi has
none until it enrols.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from importlib import metadata
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, PlainTextResponse

from farm.coordinator.api.deps import FarmDep
from farm.coordinator.api.errors import errors

# Out of the OpenAPI document: for `curl | sh` and pip, not API clients.
router = APIRouter(prefix="/agent", tags=["agent package"], include_in_schema=False)

SOURCE = Path(__file__).resolve().parents[3]  # the checkout the coordinator runs from
_PARTS = ("pyproject.toml", "README.md", "farm", "printers", "workers")
_lock = threading.Lock()
_built: dict[Path, Path] = {}  # cache dir -> the wheel built there by this process


def _can_build_here() -> bool:
    """Whether this environment's setuptools makes wheels (70.1 on, or with `wheel`); else pip
    fetches one into an isolated build environment from the registry."""
    try:
        major, minor = (int(p) for p in metadata.version("setuptools").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return False
    if (major, minor) >= (70, 1):
        return True
    try:
        metadata.version("wheel")
    except metadata.PackageNotFoundError:
        return False
    return True


def _build(cache: Path) -> Path:
    with _lock:
        if (wheel := _built.get(cache)) is not None and wheel.exists():
            return wheel
        if not (SOURCE / "pyproject.toml").is_file():
            raise HTTPException(
                404,
                f"this coordinator was not installed from a source tree ({SOURCE}); install agents with pip",
            )
        with tempfile.TemporaryDirectory(prefix="farm-agent-src-") as tmp:
            # A copy: the build writes build/ and *.egg-info, which a shared checkout should not get.
            src = Path(tmp) / "src"
            for part in _PARTS:
                if (SOURCE / part).is_dir():
                    shutil.copytree(
                        SOURCE / part, src / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
                    )
                elif (SOURCE / part).is_file():
                    src.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(SOURCE / part, src / part)
            out = Path(tmp) / "out"
            argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)]
            if _can_build_here():
                argv.insert(4, "--no-build-isolation")  # no registry round trip for setuptools
            done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
            wheels = sorted(out.glob("printfarm-*.whl"))
            if done.returncode != 0 or not wheels:
                raise HTTPException(503, f"building the agent wheel failed: {done.stderr.strip()[-500:]}")
            cache.mkdir(parents=True, exist_ok=True)
            wheel = cache / wheels[0].name
            shutil.copy2(wheels[0], wheel.with_suffix(".part"))
            wheel.with_suffix(".part").replace(wheel)
        _built[cache] = wheel
        return wheel


def _cache(farm: FarmDep) -> Path:
    return farm.settings.data_dir / "agent-package"


@router.get("/wheel", response_class=FileResponse, responses=errors(404, 503))
def wheel(farm: FarmDep) -> FileResponse:
    """The agent's wheel (this coordinator's code), under its proper file name."""
    built = _build(_cache(farm))
    return FileResponse(built, media_type="application/zip", filename=built.name)


@router.get("/wheels/{name}", response_class=FileResponse, responses=errors(404, 503))
def wheel_by_name(name: str, farm: FarmDep) -> FileResponse:
    built = _build(_cache(farm))
    if name != built.name:
        raise HTTPException(404, f"this coordinator serves {built.name}")
    return FileResponse(built, media_type="application/zip", filename=built.name)


@router.get("/install.sh", response_class=PlainTextResponse, responses=errors(404, 503))
def install_script(request: Request, farm: FarmDep) -> PlainTextResponse:
    """A shell script that installs the agent into a venv (default /opt/printfarm-agent as root,
    else ~/.local/share/printfarm-agent; FARM_AGENT_VENV overrides) from this coordinator."""
    built = _build(_cache(farm))
    base = str(request.base_url).rstrip("/")
    url = f"{base}/agent/wheels/{built.name}"
    return PlainTextResponse(script(base, url))


def script(base: str, wheel_url: str) -> str:
    return f"""#!/bin/sh
# Installs the printfarm agent from {base}; its dependencies come from the package registry.
set -eu
if [ -z "${{FARM_AGENT_VENV:-}}" ]; then
  if [ "$(id -u)" = 0 ]; then FARM_AGENT_VENV=/opt/printfarm-agent
  else FARM_AGENT_VENV="$HOME/.local/share/printfarm-agent"; fi
fi
python3 -m venv "$FARM_AGENT_VENV"
"$FARM_AGENT_VENV/bin/pip" install --quiet --upgrade {shlex.quote("printfarm[agent] @ " + wheel_url)}
echo "installed: $FARM_AGENT_VENV/bin/farm"
echo "next: $FARM_AGENT_VENV/bin/farm agent enroll {base} CODE"
echo "(an admin gets the code with: farm printers add NAME --model MODEL)"
"""
