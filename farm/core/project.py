"""Packing a design's project for the farm: the folder it lives in, or a git commit.

A `.py` file is sent with its project, the nearest folder up that holds `pyproject.toml`,
`requirements.txt` or `.git`, so that its local imports and declared requirements travel with it.
A script in no project is sent with its own folder, under the same limits, so that files beside it
(`Path(__file__).parent / "assets" / ...`) load on the farm too. Files that `.gitignore` excludes
(and `.git` itself) stay behind. The archive is a deterministic
tar.gz (sorted names, no times or owners): the same tree always packs to the same bytes.

Stdlib only, and nothing here runs the user's code: the CLI and `farm build` use it.
"""

from __future__ import annotations

import fnmatch
import gzip
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from farm.core.gitsource import DEFAULT_GIT_SCHEMES, BadGitSource, allow_protocol, check_ref, check_url

MARKERS = ("pyproject.toml", "requirements.txt", ".git")
MAX_PROJECT_MB = 50  # unpacked; a CAD project is code, not data
MAX_PROJECT_FILES = 5000
GIT_TIMEOUT_S = 300
ARCHIVE_SUFFIX = ".tar.gz"
BUILD_OUTPUT_SUFFIXES = (".stl", ".3mf", ".png", ".step")  # what `farm build` writes, named after the script


class ProjectError(Exception):
    """The project cannot be packed or fetched; the message says what to do."""


@dataclass
class Packed:
    archive: Path  # the tar.gz
    root: Path  # the project folder (a temporary checkout for a git URL)
    entry: str  # the entry file's path inside the project, with '/'
    files: list[str]
    size: int  # bytes of the packed files, unpacked
    git_url: str | None = None
    git_ref: str | None = None
    git_commit: str | None = None


def find_root(path: Path) -> Path | None:
    """The nearest folder at or above `path`'s folder that holds a project marker."""
    folder = path.resolve().parent
    for candidate in (folder, *folder.parents):
        if any((candidate / marker).exists() for marker in MARKERS):
            return candidate
    return None


def pack_file(path: Path, dest_dir: Path, leave_out: Sequence[Path] = ()) -> Packed:
    """Pack the project `path` belongs to into `dest_dir`; in none, the script's own folder, minus
    the files and folders `leave_out` (where `farm build` writes its outputs and keeps its cache,
    the --params file it read)."""
    root = find_root(path)
    if root is not None:
        return pack(root, path.resolve().relative_to(root).as_posix(), dest_dir)
    root = path.resolve().parent
    # What `farm build` leaves beside the script (<stem>.stl, .3mf, .png, .step, or in a folder it
    # was given) and Python's caches stay behind: packed, they would change the build's cache key
    # at every build.
    outputs = {f"{path.stem}{suffix}" for suffix in BUILD_OUTPUT_SUFFIXES}
    skipped = [other.resolve() for other in leave_out]
    files = [
        name
        for name in project_files(root)
        if name not in outputs
        and "__pycache__" not in PurePosixPath(name).parts
        and not any((root / name).resolve().is_relative_to(other) for other in skipped)
    ]
    return pack(root, path.name, dest_dir, files, lone=True)


def pack(
    root: Path, entry: str, dest_dir: Path, files: list[str] | None = None, *, lone: bool = False
) -> Packed:
    """`lone`: `root` is a script's own folder, not a project (it only changes what errors say)."""
    files = sorted(set(files if files is not None else project_files(root)) | {entry})
    if not (root / entry).is_file():
        raise ProjectError(f"{entry} is not a file in {root}")
    if len(files) > MAX_PROJECT_FILES:
        count = f"{len(files)}" if len(files) <= MAX_PROJECT_FILES + 1 else f"more than {MAX_PROJECT_FILES}"
        raise ProjectError(_too_big(root, f"{count} files (limit {MAX_PROJECT_FILES})", lone))
    size = sum((root / name).stat().st_size for name in files)
    if size > MAX_PROJECT_MB << 20:
        raise ProjectError(
            _too_big(root, f"{size / 2**20:.1f} MB of files (limit {MAX_PROJECT_MB} MB)", lone)
        )
    archive = dest_dir / f"{root.name or 'project'}{ARCHIVE_SUFFIX}"
    with (
        archive.open("wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name in files:
            data = (root / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return Packed(archive=archive, root=root, entry=entry, files=files, size=size)


def _too_big(root: Path, what: str, lone: bool = False) -> str:
    if lone:
        return (
            f"the folder {root} holds {what}: a script outside any project (no "
            f"{', '.join(MARKERS)} above it) travels with its folder; list what the build does not "
            "need in a .gitignore there, or send the file alone with --no-project"
        )
    return (
        f"the project {root} holds {what}; list what the build does not need in its .gitignore, "
        "or send the file alone with --no-project"
    )


def project_files(root: Path) -> list[str]:
    """Regular files under `root` (relative, with '/'), minus .git and what .gitignore excludes."""
    listed = _git_files(root)
    names = listed if listed is not None else _walk(root)
    real_root = root.resolve()
    kept = []
    for name in names:
        if ".git" not in PurePosixPath(name).parts and _packable(root / name, real_root):
            kept.append(name)
    return sorted(kept)


def _packable(path: Path, real_root: Path) -> bool:
    """A regular file inside the project. A symlink is packed as the file it points to, if that
    file is inside the project too: a link to ~/.ssh/id_rsa in a stranger's repository stays behind."""
    return path.is_file() and path.resolve().is_relative_to(real_root)


def _git_files(root: Path) -> list[str] | None:
    """What git would track here (tracked plus untracked-not-ignored), or None outside a work tree."""
    if shutil.which("git") is None:
        return None
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return [name for name in os.fsdecode(done.stdout).split("\0") if name]


def _walk(root: Path) -> list[str]:
    """Files under root, honouring each folder's .gitignore (the common subset of its syntax); it
    stops past MAX_PROJECT_FILES, enough to refuse the folder (a home folder is not walked whole)."""
    found: list[str] = []

    def visit(folder: Path, rules: list[tuple[str, str, bool, bool]]) -> None:
        ignore = folder / ".gitignore"
        if ignore.is_file():
            base = folder.relative_to(root).as_posix()
            rules = rules + _parse_gitignore(ignore.read_text(errors="replace"), "" if base == "." else base)
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if len(found) > MAX_PROJECT_FILES:
                return
            relative = Path(entry.path).relative_to(root).as_posix()
            is_dir = entry.is_dir(follow_symlinks=False)
            if entry.name == ".git" or _ignored(relative, is_dir, rules):
                continue
            if is_dir:
                visit(Path(entry.path), rules)
            else:
                found.append(relative)

    visit(root, [])
    return found


def _parse_gitignore(text: str, base: str) -> list[tuple[str, str, bool, bool]]:
    """(base, pattern, negated, dir_only) per rule."""
    rules = []
    for line in text.splitlines():
        line = line.rstrip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line[1:] if negated else line
        dir_only = pattern.endswith("/")
        rules.append((base, pattern.rstrip("/"), negated, dir_only))
    return rules


def _ignored(relative: str, is_dir: bool, rules: list[tuple[str, str, bool, bool]]) -> bool:
    ignored = False
    for base, pattern, negated, dir_only in rules:  # the last matching rule wins, as in git
        if dir_only and not is_dir:
            continue
        path = relative[len(base) + 1 :] if base else relative
        if "/" in pattern.strip("/"):  # anchored to the .gitignore's folder
            hit = fnmatch.fnmatchcase(path, pattern.lstrip("/")) or fnmatch.fnmatchcase(
                path, pattern.lstrip("/").replace("**/", "")
            )
        elif pattern.startswith("/"):
            hit = fnmatch.fnmatchcase(path, pattern[1:])
        else:
            hit = fnmatch.fnmatchcase(PurePosixPath(path).name, pattern)
        if hit:
            ignored = not negated
    return ignored


# -- git URLs ------------------------------------------------------------------------------------
GIT_PREFIXES = ("http://", "https://", "ssh://", "git://", "file://", "git@")


def is_git_url(text: str) -> bool:
    # What git would take as an option or a remote helper (ext::) goes to pack_git too: it says why not.
    return text.startswith((*GIT_PREFIXES, "-")) or "::" in text.split("/", 1)[0]


def pack_git(
    url: str, ref: str | None, entry: str, dest_dir: Path, *, schemes: Sequence[str] = DEFAULT_GIT_SCHEMES
) -> Packed:
    """Check out `ref` (default: the remote's HEAD) of `url` and pack the commit's tracked files.

    `schemes`: the git_schemes setting. The URL and ref are checked first (farm.core.gitsource), every
    user value follows `--end-of-options` or `--`, and git itself refuses other transports."""
    try:
        check_url(url, schemes)
        if ref is not None:
            check_ref(ref)
    except BadGitSource as exc:
        raise ProjectError(str(exc)) from None
    if shutil.which("git") is None:
        raise ProjectError("submitting a git URL needs git on this machine; install git")
    env = {"GIT_ALLOW_PROTOCOL": allow_protocol(schemes)}
    checkout = Path(tempfile.mkdtemp(prefix="checkout-", dir=dest_dir))
    # A branch or tag clones shallowly; a commit id needs the history to find it.
    branch = [f"--branch={ref}"] if ref else []
    shallow = ["clone", "--quiet", "--depth", "1", *branch, "--", url, str(checkout)]
    if _git(shallow, None, env).returncode != 0:
        shutil.rmtree(checkout, ignore_errors=True)
        checkout.mkdir()
        cloned = _git(["clone", "--quiet", "--no-checkout", "--", url, str(checkout)], None, env)
        if cloned.returncode != 0:
            raise ProjectError(f"git could not clone {url}: {_last_line(cloned.stderr)}")
        # The ref becomes a commit id first: rev-parse takes it after --end-of-options (checkout cannot).
        found = _git(["rev-parse", "--verify", "--end-of-options", f"{ref or 'HEAD'}^{{commit}}"], checkout)
        checked = _git(["checkout", "--quiet", "--detach", found.stdout.strip(), "--"], checkout)
        if found.returncode != 0 or checked.returncode != 0:
            error = _last_line(found.stderr if found.returncode else checked.stderr)
            raise ProjectError(f"{url} has no branch, tag or commit {ref!r}: {error}")
    commit = _git(["rev-parse", "HEAD"], checkout).stdout.strip()
    tracked = _git(["ls-files", "-z"], checkout).stdout.split("\0")
    entry = PurePosixPath(entry).as_posix().lstrip("/")
    if entry not in tracked:
        pys = sorted(n for n in tracked if n.endswith(".py"))[:20]
        raise ProjectError(
            f"{entry} is not a file in {url} at {commit[:12]}; .py files there: {', '.join(pys) or 'none'}"
        )
    real_root = checkout.resolve()
    packed = pack(
        checkout, entry, dest_dir, files=[n for n in tracked if n and _packable(checkout / n, real_root)]
    )
    packed.archive = packed.archive.rename(dest_dir / f"{_repo_name(url)}{ARCHIVE_SUFFIX}")
    packed.git_url, packed.git_ref, packed.git_commit = url, ref, commit
    return packed


def _git(
    args: list[str], cwd: Path | None, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    # No prompt for credentials: a private URL fails with git's message instead of hanging.
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", **(extra_env or {})}
    try:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=GIT_TIMEOUT_S, env=env
        )
    except subprocess.TimeoutExpired as exc:
        raise ProjectError(f"git {args[0]} took longer than {GIT_TIMEOUT_S} s") from exc


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def _repo_name(url: str) -> str:
    name = url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    return name.removesuffix(".git") or "repository"
