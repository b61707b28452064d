"""Which git URLs and refs the farm takes from users, checked before git ever sees them.

git reads an argument starting with `-` as an option (`--upload-pack=<command>` runs a command),
`ext::<command>` as a remote helper that runs it, and `ssh://-oProxyCommand=...` as ssh options.
So: refs are plain names, URLs use a scheme listed in the `git_schemes` setting, and local
repositories (file:// or a path) only where `file` is listed. Stdlib only: the CLI uses it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import urlsplit

DEFAULT_GIT_SCHEMES = ("https", "ssh", "git")
_REF = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/+-]*")
_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_HELPER = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*::")  # `ext::`, `fd::`: git's remote helpers
_SCP = re.compile(r"(?P<user>[A-Za-z0-9._~+-]+)@(?P<host>[A-Za-z0-9.-]+):(?P<path>[^:]+)")
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*|[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*")  # a name, or IPv6


class BadGitSource(ValueError):
    """A URL or ref the farm does not pass to git; the message says what is allowed."""


def check_ref(ref: str) -> str:
    """A branch, tag or commit name by `git check-ref-format`'s rules, narrowed: never an option."""
    parts = ref.split("/")
    if (
        len(ref) > 255
        or not _REF.fullmatch(ref)
        or ".." in ref
        or "@{" in ref
        or ref.endswith(".lock")
        or any(not p or p.startswith(".") or p.endswith(".") for p in parts)
    ):
        raise BadGitSource(
            f"ref {ref!r} is not a branch, tag or commit name: use letters, digits and . _ / + -, "
            "not starting with '-' or '.', without '..'"
        )
    return ref


def check_commit(commit: str) -> str:
    if not _COMMIT.fullmatch(commit):
        raise BadGitSource(f"commit {commit!r} is not a full lowercase hex commit id")
    return commit


def file_hint(schemes: Sequence[str]) -> str:
    listed = ", ".join(f'"{s}"' for s in (*schemes, "file"))
    return (
        f'add "file" to the git_schemes setting to allow them (farm.toml: git_schemes = [{listed}]; '
        f"environment: FARM_GIT_SCHEMES='[{listed}]')"
    )


def check_url(url: str, schemes: Sequence[str]) -> str:
    """`url` if git may fetch it under the `git_schemes` setting, else BadGitSource saying why."""
    allowed = [s.lower() for s in schemes]
    if url.startswith("-"):
        raise BadGitSource(f"git URL {url!r} starts with '-', which git would read as an option")
    if _HELPER.match(url):
        raise BadGitSource(f"git URL {url!r} names a git remote helper ('::'), which runs commands")
    if not url or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise BadGitSource(f"git URL {url!r} is empty or holds spaces or control characters")
    if "://" in url:
        scheme = url.split("://", 1)[0].lower()
        try:
            where = urlsplit(url)
        except ValueError as exc:
            raise BadGitSource(f"git URL {url!r} cannot be read: {exc}") from None
        if scheme == "file":
            if "file" not in allowed:
                raise BadGitSource(f"file:// URLs are off on this farm: {file_hint(schemes)}")
            return url
        if scheme not in allowed:
            raise BadGitSource(
                f"git URL scheme '{scheme}' is not allowed here; allowed: {', '.join(allowed)} "
                "(the git_schemes setting, FARM_GIT_SCHEMES)"
            )
        if not _HOST.fullmatch(where.hostname or "-"):
            raise BadGitSource(f"git URL {url!r} has no plain host name")
        if where.username and where.username.startswith("-"):
            raise BadGitSource(f"git URL {url!r} has a user name starting with '-'")
        return url
    if ":" in url.split("/", 1)[0]:  # git reads host:path as ssh; only a plain user@host:path passes
        scp = _SCP.fullmatch(url)
        if scp is None:
            raise BadGitSource(f"git URL {url!r} has no plain user and host (user@host:path)")
        if "ssh" not in allowed:
            raise BadGitSource(
                f"ssh git URLs are not allowed here; allowed: {', '.join(allowed)} (git_schemes)"
            )
        if not _HOST.fullmatch(scp["host"]) or scp["user"].startswith("-"):
            raise BadGitSource(f"git URL {url!r} has no plain user and host")
        return url
    if "file" not in allowed:  # anything else is a local path to git
        raise BadGitSource(f"{url!r} is a local repository path; those are off here: {file_hint(schemes)}")
    return url


def allow_protocol(schemes: Sequence[str]) -> str:
    """GIT_ALLOW_PROTOCOL for git itself: it refuses any other transport (ext::, fd::) too."""
    return ":".join(s.lower() for s in schemes if re.fullmatch(r"[a-z0-9+.-]+", s.lower()))
