"""A CAD build's private folders: the project unpacked (or the lone script copied) into them, its
outputs collected out of them, and the folders removed, also those a dead worker left behind.

The build's uid owns what it writes, so nothing here follows a link it may have left.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

from workers import sandbox
from workers.cad_types import OUTPUT_NAMES, CadError, CadLimits, CadRequest

MAX_PROJECT_FILES = 20_000


def _unpack(archive: Path, dest: Path, limits: CadLimits) -> Path:
    """Extract a project archive into the build's private folder: plain files and folders only.

    Written by hand rather than with tarfile's "data" filter, which Python releases before 3.11.13
    let links and long paths slip past (CVE-2025-4517 and friends): no member can be a link, so no
    path written here can lead out of `dest`.
    """
    budget, count = limits.output_mb << 20, 0
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                count += 1
                if count > MAX_PROJECT_FILES:
                    raise CadError("limit", f"the project holds more than {MAX_PROJECT_FILES} files")
                parts = _member_parts(member.name)
                if member.isdir():
                    dest.joinpath(*parts).mkdir(parents=True, exist_ok=True)
                    continue
                if not member.isfile():
                    what = f"{member.name!r}, which is not a plain file (projects travel without links)"
                    raise CadError("entry", f"the project archive holds {what}")
                budget -= member.size
                if budget < 0:
                    raise CadError("limit", f"the project unpacks to more than {limits.output_mb} MB")
                target = dest.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
                with open(fd, "wb") as out, source or io.BytesIO() as data:
                    shutil.copyfileobj(data, out)
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise CadError("entry", f"the project archive cannot be unpacked: {exc}") from None
    return dest.resolve()


def place_source(req: CadRequest, copy: Path, limits: CadLimits) -> tuple[Path | None, Path]:
    """Fill the build's copy: (the project's root or None for a lone script, the entry file)."""
    if req.project:
        root = _unpack(req.project, copy, limits)
        source = (root / req.source).resolve()
        if not source.is_file() or not source.is_relative_to(root):
            raise CadError("entry", f"no file {req.source} in the project")
        return root, source
    return None, _copy_lone_script(req.source.resolve(), copy, limits)


def open_to_owner(copy: Path) -> None:
    """Let the build change and replace its copy's files (a log or an export from an earlier run
    may be among them): the copy's own folder is the build uid's alone (mode 0700), so inside it
    everything may be writable by all."""
    for folder, dirs, files in os.walk(copy):
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o777, follow_symlinks=False)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o666, follow_symlinks=False)


def _member_parts(name: str) -> list[str]:
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or name.startswith("/") or ".." in parts or any("\0" in p for p in parts):
        raise CadError("entry", f"the project archive holds a path that leads outside it: {name!r}")
    return parts


def _copy_lone_script(script: Path, dest: Path, limits: CadLimits) -> Path:
    """A script without a project brings the plain files beside it (its helper modules), no folders.

    Copied rather than shown in place: the folder may be one the build's uid cannot enter.
    """
    budget = limits.output_mb << 20
    siblings = sorted(p for p in script.parent.iterdir() if p.is_file() and not p.is_symlink())
    siblings = [p for p in siblings if p != script]
    for path in [script, *siblings]:
        size = path.stat().st_size
        if path != script and size > budget:
            continue
        budget -= size
        shutil.copyfile(path, dest / path.name)
    return dest / script.name


BUILD_DIR_PREFIX = "cad-build-"


def sweep_stale_build_folders(tmp: Path) -> None:
    """Unmount and remove build folders whose worker died (kill -9 leaves its tmpfs mounts behind).

    Each folder is named `cad-build-<worker pid>-…`; a pid that no longer runs marks it stale.
    """
    try:
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    except OSError:
        mounts = []
    for folder in tmp.glob(f"{BUILD_DIR_PREFIX}*-*"):
        owner = folder.name[len(BUILD_DIR_PREFIX) :].split("-", 1)[0]
        if not owner.isdigit() or Path(f"/proc/{owner}").exists():
            continue
        for point in mounts:
            if point.startswith(f"{folder}/"):
                sandbox.unmount(Path(point))
        remove_tree(folder)


def remove_tree(path: Path) -> None:
    """The build's folder, however the build left it: too deep for shutil.rmtree's recursion, or
    with folders it made unwritable (a worker that is not root shares the build's uid)."""
    with contextlib.suppress(RecursionError):
        shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        for argv in (
            ["chmod", "-R", "u+rwx", "--", str(path)],
            ["rm", "-rf", "--one-file-system", "--", str(path)],
        ):
            subprocess.run(argv, check=False, timeout=600, capture_output=True)


def collect(buildout: Path, outdir: Path) -> None:
    """Copy what the build wrote to `outdir`: regular files only, read through a descriptor.

    The build's uid owns its out/ folder and could leave a link there (to /etc/shadow, say) for the
    worker to upload; opening with O_NOFOLLOW and checking the open file leaves no window to swap it.
    """
    for name in OUTPUT_NAMES:
        try:
            fd = os.open(buildout / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue  # absent, or a link
        with open(fd, "rb") as source:
            info = os.fstat(source.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
                continue
            with open(outdir / name, "wb") as target:
                shutil.copyfileobj(source, target, 1 << 20)
