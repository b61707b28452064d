"""The coordinator's mirrors of registered projects: fetch a pushed commit, export its tree.

One bare repository per project in `<data dir>/mirrors/`, fetched from the project's own URL (never
a URL a hook's payload names), with its credentials given to git through the environment of that
one command (a credential helper reading two variables): they never reach an argument list, a
URL, a log line or an error message (`scrub`). The tree is exported through a private index, so
the mirror's HEAD and index never change, and packed by farm/core/project.py into the same bytes
`farm submit URL --ref` packs for that commit: one CAD cache entry for both.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from farm.core.gitsource import BadGitSource, allow_protocol, check_commit, check_ref, check_url

GIT_TIMEOUT_S = 300
# Reads the two variables set for the one git command; `get` is the only question git asks here.
_HELPER = (
    '!f() { test "$1" = get && printf "username=%s\\npassword=%s\\n" "$FARM_GIT_USER" "$FARM_GIT_PASS"; }; f'
)


class FetchFailed(Exception):
    """git could not fetch (network, credentials, a server down): worth trying again later."""


class BadCommit(Exception):
    """The repository, fetched, does not hold what the push named: trying again will not help."""


@dataclass(frozen=True)
class Remote:
    url: str
    username: str | None = None
    token: str | None = None

    def scrub(self, text: str) -> str:
        """`text` without the token (git does not print it; this makes sure of it)."""
        return text.replace(self.token, "***") if self.token else text


def mirror_path(data_dir: Path, project: str) -> Path:
    return data_dir / "mirrors" / f"{project}.git"


@contextlib.contextmanager
def locked(mirror: Path) -> Iterator[None]:
    """One git at a time per mirror, across the coordinator's processes."""
    mirror.parent.mkdir(parents=True, exist_ok=True)
    with (mirror.parent / f"{mirror.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def fetch(mirror: Path, remote: Remote, ref: str, commit: str, schemes: Sequence[str]) -> str:
    """Fetch `ref` (refs/heads/X or refs/tags/X) into the mirror; the commit `commit` peels to."""
    try:
        check_url(remote.url, schemes)
        check_ref(ref)
        check_commit(commit)
    except BadGitSource as exc:
        raise BadCommit(str(exc)) from None
    if not (mirror / "HEAD").exists():
        shutil.rmtree(mirror, ignore_errors=True)
        _run(["init", "--quiet", "--bare", str(mirror)], None, remote, schemes, check=True)
    fetched = _run(
        ["fetch", "--quiet", "--no-tags", "--force", "--", remote.url, f"+{ref}:{ref}"],
        mirror,
        remote,
        schemes,
    )
    if not _has(mirror, commit, remote, schemes):
        # The ref moved on and dropped it (a force push), or it never was fetched: ask for it by id.
        again = _run(["fetch", "--quiet", "--no-tags", "--", remote.url, commit], mirror, remote, schemes)
        if not _has(mirror, commit, remote, schemes):
            failed = fetched if fetched.returncode else again
            if failed.returncode:
                raise FetchFailed(
                    f"git could not fetch {remote.url}: {_last_line(remote.scrub(failed.stderr))}"
                )
            raise BadCommit(f"{remote.url} has no commit {commit[:12]} (was it force-pushed away?)")
    peeled = _run(
        ["rev-parse", "--verify", "--end-of-options", f"{commit}^{{commit}}"], mirror, remote, schemes
    )
    return peeled.stdout.strip()


def export(mirror: Path, commit: str, dest: Path, remote: Remote, schemes: Sequence[str]) -> list[str]:
    """Write `commit`'s tree to `dest`; the files to pack: regular files, and links that stay inside
    the tree (a link to /etc/passwd or the data dir would send the coordinator's file to a build)."""
    check_commit(commit)
    dest.mkdir(parents=True)
    index = {"GIT_INDEX_FILE": str(dest.parent / f"{dest.name}.index")}
    _run(["read-tree", "--end-of-options", commit], mirror, remote, schemes, env=index, check=True)
    listed = _run(["ls-files", "--stage", "-z"], mirror, remote, schemes, env=index, check=True).stdout
    work = ["--work-tree", str(dest), "checkout-index", "--all", "--force"]
    _run(work, mirror, remote, schemes, env=index, check=True)
    os.unlink(index["GIT_INDEX_FILE"])
    root = dest.resolve()
    files = []
    for line in listed.split("\0"):
        if not line:
            continue
        meta, _, name = line.partition("\t")
        mode = meta.split(" ", 1)[0]
        path = dest / name
        if mode in ("100644", "100755") or (
            mode == "120000" and path.resolve().is_relative_to(root) and path.resolve().is_file()
        ):
            files.append(name)
    return files


def _has(mirror: Path, commit: str, remote: Remote, schemes: Sequence[str]) -> bool:
    found = _run(["cat-file", "-e", f"{commit}^{{commit}}"], mirror, remote, schemes)
    return found.returncode == 0


def _run(
    args: list[str],
    mirror: Path | None,
    remote: Remote,
    schemes: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    extra = {
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ALLOW_PROTOCOL": allow_protocol(schemes),
        "GIT_CONFIG_NOSYSTEM": "1",
        **(env or {}),
    }
    if remote.token:
        # An empty helper first drops any the coordinator's user has: these are the only credentials.
        extra |= {
            "GIT_CONFIG_COUNT": "2",
            "GIT_CONFIG_KEY_0": "credential.helper",
            "GIT_CONFIG_VALUE_0": "",
            "GIT_CONFIG_KEY_1": "credential.helper",
            "GIT_CONFIG_VALUE_1": _HELPER,
            "FARM_GIT_USER": remote.username or "git",
            "FARM_GIT_PASS": remote.token,
        }
    where = ["--git-dir", str(mirror)] if mirror is not None else []
    argv = ["git", "-c", "core.hooksPath=/dev/null", *where, *args]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=GIT_TIMEOUT_S, env={**os.environ, **extra}
        )
    except subprocess.TimeoutExpired:
        raise FetchFailed(f"git {args[0]} took longer than {GIT_TIMEOUT_S} s") from None
    if check and done.returncode != 0:
        raise FetchFailed(f"git {args[0]} failed: {_last_line(remote.scrub(done.stderr))}")
    return done


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"
