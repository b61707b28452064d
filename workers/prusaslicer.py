"""The PrusaSlicer binary: finding it, asking it what it is and what it accepts, running it, and
turning what it says when it fails into a message for the person who submitted."""

from __future__ import annotations

import difflib
import functools
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path

from farm.core.printer_models import PrinterModel
from farm.core.slice_error import SliceError
from workers.mesh_bbox import bed_text


def find_slicer(path: str | Path | None = None) -> Path:
    """The PrusaSlicer binary: `path` if given (the `slicer_path` setting), else from PATH."""
    if path:
        p = Path(path).expanduser()
        if p.is_file() and os.access(p, os.X_OK):
            return p
        on_path = None if p.parent != Path() else shutil.which(str(p))  # a bare name, e.g. "prusa-slicer"
        if on_path:
            return Path(on_path)
        raise SliceError(f"the configured slicer {p} does not exist or is not executable")
    found = shutil.which("prusa-slicer")
    if not found:
        raise SliceError(
            "PrusaSlicer is not installed on this worker: install it (apt-get install prusa-slicer) "
            "or set slicer_path"
        )
    return Path(found)


@functools.cache
def _help_text(slicer: Path, flag: str) -> str:
    try:
        proc = subprocess.run(
            [str(slicer), flag], capture_output=True, text=True, errors="replace", env=_env(), timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SliceError(f"cannot run the slicer {slicer}: {exc}") from exc
    return proc.stdout + proc.stderr


def slicer_version(path: Path) -> str:
    """The version PrusaSlicer reports, e.g. "2.5.0+UNKNOWN" (cached per binary)."""
    m = re.search(r"^PrusaSlicer-(\S+)", _help_text(Path(path), "--help"), re.MULTILINE)
    if not m:
        raise SliceError(f"{path} does not look like PrusaSlicer (no version in its --help)")
    return m.group(1)


def _slicer_config_keys(slicer: Path) -> frozenset[str]:
    """Config keys the binary accepts; an .ini key it does not know is ignored without a word."""
    opts = re.findall(r"^ --([a-z0-9][a-z0-9-]*)", _help_text(slicer, "--help-fff"), re.MULTILINE)
    return frozenset(o.replace("-", "_") for o in opts)


def _env() -> dict[str, str]:
    # With a display set, the GTK build may try to reach it; headless it works without one.
    return {k: v for k, v in os.environ.items() if k not in {"DISPLAY", "WAYLAND_DISPLAY"}}


def _is_noise(line: str) -> bool:
    return (
        not line
        or "Initializing StaticPrintConfigs" in line
        or re.match(r"\d+ => ", line) is not None  # progress
        or line.startswith("terminate called after throwing")
    )


def slicer_complaint(stdout: str, stderr: str) -> str:
    """The last meaningful lines PrusaSlicer wrote: its [error] log lines, then stderr."""
    lines = []
    for line in stdout.splitlines():
        m = re.match(r"\[[^\]]*\] \[[^\]]*\] \[(?:error|fatal)\]\s*(.*)", line)
        if m:
            lines.append(m.group(1).strip())
    lines += [s.strip().removeprefix("what():").strip() for s in stderr.splitlines()]
    meaningful = [s for s in lines if not _is_noise(s)]
    return "; ".join(meaningful[-2:]) or "no message"


def run_slicer(cmd: list[str], cwd: Path, timeout_s: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, errors="replace", env=_env(), cwd=cwd, timeout=timeout_s
        )
    except subprocess.TimeoutExpired as exc:
        raise SliceError(
            f"the slicer did not finish within {timeout_s:g} s; simplify the mesh or raise the timeout"
        ) from exc
    except OSError as exc:
        raise SliceError(f"cannot run the slicer {cmd[0]}: {exc}") from exc


def check_known_keys(profile: Mapping[str, str], overrides: Mapping[str, str], slicer: Path) -> None:
    """Refuse an override the binary does not know (it would ignore it without a word)."""
    known = _slicer_config_keys(slicer) | profile.keys()
    for key in sorted(overrides):
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3)
            hint = f"did you mean {' or '.join(close)}?" if close else "see `prusa-slicer --help-fff`"
            raise SliceError(f"unknown slicer setting '{key}'; {hint}")


_SUBSTITUTED_RE = re.compile(r'key = "([^"]+)"\s+loaded = "([^\t\n]*)\s+substituted = "([^"\n]*)"')
_CONFIG_ERROR_RE = re.compile(r'Failed loading configuration file "[^"]*": (.+)')


def raise_for_failure(
    proc: subprocess.CompletedProcess[str], name: str, model: PrinterModel, out: Path
) -> None:
    """A SliceError saying why the run that should have written `out` failed, if it did."""
    said = proc.stdout + proc.stderr
    complaint = slicer_complaint(proc.stdout, proc.stderr)
    if proc.returncode != 0 and "could not fit on the bed" in said:
        bed = bed_text(model.bed)
        raise SliceError(
            f"{name} does not fit on the {model.name} bed ({bed} mm) once the slicer places it; "
            "scale the part down or choose a printer model with a larger bed (farm profiles lists them)"
        )
    if proc.returncode < 0 or proc.returncode > 128:
        # Killed by a signal: -N from the binary itself, 128+N through a wrapper script.
        signum = -proc.returncode if proc.returncode < 0 else proc.returncode - 128
        try:
            signame = signal.Signals(signum).name
        except ValueError:
            signame = f"signal {signum}"
        hint = (
            "it was probably out of memory: simplify the mesh or give the worker more memory"
            if signame == "SIGKILL"
            else "the mesh may be broken: repair it (e.g. `prusa-slicer --repair`) or try another quality"
        )
        raise SliceError(
            f"the slicer crashed ({signame}, exit code {proc.returncode}) on {name}: {complaint}; {hint}"
        )
    if proc.returncode != 0:
        if m := _CONFIG_ERROR_RE.search(said):
            raise SliceError(f"the slicer refused the settings: {m.group(1).strip()}")
        raise SliceError(f"the slicer failed on {name} (exit code {proc.returncode}): {complaint}")
    # An .ini value the slicer cannot parse is replaced by a default with only a warning.
    swapped = [f"{k}={v.strip().strip(chr(34))} (it used {s})" for k, v, s in _SUBSTITUTED_RE.findall(said)]
    if swapped:
        raise SliceError(f"the slicer did not accept the setting {', '.join(swapped)}; fix the value")
    if not out.is_file() or out.stat().st_size == 0:
        raise SliceError(f"the slicer wrote no G-code for {name}: {complaint}")
