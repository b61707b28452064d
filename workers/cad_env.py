"""Packages a project declares, installed outside the sandbox into environments keyed by requirement set.

A project's `requirements.txt` and `pyproject.toml` `[project] dependencies` name what its code
imports (a parts library, say). What the worker's own environment already satisfies (build123d,
makerrepo, numpy, ...) is never installed again. The rest goes into `<root>/<key>/`: a bare venv
whose `.pth` file points at the worker's site-packages, so pip sees the worker's packages as
installed and leaves them alone, and can never uninstall them (they are outside its environment).
Only wheels are installed: an sdist's build step would run code outside the sandbox.

The build child puts the environment's site-packages on sys.path; nothing else of it is used.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from workers.cad_types import CadError

log = logging.getLogger("farm.cad_env")

ENV_FORMAT = "1"
DONE_NAME = "printfarm-env.json"
PIP_TIMEOUT_S = 600
REQUIREMENT_FILES = ("requirements.txt", "pyproject.toml")


def read_requirements(archive: Path) -> list[str]:
    """The requirement strings a project archive declares, validated, sorted and de-duplicated."""
    texts: dict[str, str] = {}
    with tarfile.open(archive, "r:gz") as tar:
        for name in REQUIREMENT_FILES:
            with contextlib.suppress(KeyError):
                member = tar.extractfile(name)
                if member is not None:
                    texts[name] = member.read().decode("utf-8", "replace")
    lines: list[str] = []
    if "requirements.txt" in texts:
        lines += _requirements_txt(texts["requirements.txt"])
    if "pyproject.toml" in texts:
        lines += _pyproject_dependencies(texts["pyproject.toml"])
    return sorted({str(_parse(line)) for line in lines})


def _requirements_txt(text: str) -> list[str]:
    lines = []
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            raise CadError(
                "requirements",
                f"requirements.txt: {line!r} is not supported; list packages by name, e.g. bd_warehouse>=0.2",
            )
        lines.append(line)
    return lines


def _pyproject_dependencies(text: str) -> list[str]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CadError("requirements", f"pyproject.toml does not parse: {exc}") from None
    deps = data.get("project", {}).get("dependencies", [])
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise CadError("requirements", "pyproject.toml: [project] dependencies must be a list of strings")
    return deps


def _parse(line: str) -> Requirement:
    try:
        req = Requirement(line)
    except InvalidRequirement as exc:
        raise CadError("requirements", f"bad requirement {line!r}: {exc}") from None
    if req.url:
        raise CadError("requirements", f"requirement {line!r}: URLs are not supported; name a package")
    return req


def missing(requirements: list[str]) -> list[str]:
    """The requirements the worker's own environment does not satisfy (its markers applying)."""
    wanted = []
    for line in requirements:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            wanted.append(line)
            continue
        # Extras may pull more packages; let pip decide then (it skips what is installed).
        if req.extras or not req.specifier.contains(installed, prereleases=True):
            wanted.append(line)
    return wanted


class EnvStore:
    """Environments in `root/<key>/`, each built once (under a lock) and then only read."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def ensure(self, requirements: list[str]) -> tuple[Path | None, list[str]]:
        """(site-packages to add to sys.path or None, the installed `name==version`s for cache keys).

        Raises CadError("requirements", ...) with pip's reason when a package cannot be installed.
        """
        wanted = missing(requirements)
        if not wanted:
            return None, []
        key = env_key(wanted)
        env = self.root / key
        with self._locked(key):
            if not (env / DONE_NAME).is_file():
                self._create(env, wanted)
        done = json.loads((env / DONE_NAME).read_text())
        return env / done["site"], list(done["installed"])

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / f"{key}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another thread or worker may be installing the same set
            yield

    def _create(self, env: Path, wanted: list[str]) -> None:
        shutil.rmtree(env, ignore_errors=True)  # a previous attempt that died half-way
        log.info("installing %s into %s", ", ".join(wanted), env)
        created = _run([sys.executable, "-m", "venv", "--without-pip", str(env)])
        if created.returncode != 0:
            raise CadError("requirements", f"could not create an environment: {_tail(created.stderr)}")
        site = Path(_site_packages(env))
        (site / "_printfarm_worker.pth").write_text("\n".join(_worker_site_dirs()) + "\n")
        pip = [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(env / "bin" / "python"),
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-input",
            "--only-binary=:all:",
            *wanted,
        ]
        done = _run(pip)
        if done.returncode != 0:
            shutil.rmtree(env, ignore_errors=True)
            raise CadError(
                "requirements",
                f"could not install the project's requirements ({', '.join(wanted)}): {_pip_reason(done)}",
            )
        installed = sorted(
            f"{canonicalize_name(d.metadata['Name'])}=={d.version}"
            for d in metadata.distributions(path=[str(site)])
        )
        summary = {"format": ENV_FORMAT, "requested": wanted, "installed": installed}
        summary["site"] = str(site.relative_to(env))
        (env / DONE_NAME).write_text(json.dumps(summary))


def env_key(wanted: list[str]) -> str:
    """One environment per requirement set, Python version and worker environment."""
    base = sorted(f"{canonicalize_name(d.metadata['Name'])}=={d.version}" for d in metadata.distributions())
    digest = hashlib.sha256(
        json.dumps([ENV_FORMAT, sys.version, sorted(wanted), base], separators=(",", ":")).encode()
    )
    return digest.hexdigest()[:32]


def _worker_site_dirs() -> list[str]:
    dirs = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    return sorted(d for d in dirs if os.path.isdir(d))


def _site_packages(env: Path) -> str:
    return sysconfig.get_path("purelib", vars={"base": str(env), "platbase": str(env)})


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    # Worker secrets stay out of pip's environment, like out of the sandbox's.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 1, "", f"timed out after {PIP_TIMEOUT_S} s")


def _pip_reason(done: subprocess.CompletedProcess[str]) -> str:
    errors = [line.removeprefix("ERROR: ") for line in done.stderr.splitlines() if line.startswith("ERROR:")]
    return "; ".join(errors[:3]) if errors else _tail(done.stderr)


def _tail(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " ".join(lines[-3:]) if lines else "no message"
