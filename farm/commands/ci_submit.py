"""`farm ci submit`: send a checkout's parts (printfarm.toml) to a farm, with the commit they came from.

Each part goes as `farm submit` sends a design (its project packed, farm/core/project.py), once per
parameter set. Without --print every build is a preview (CAD only, no jobs). With --print, the parts
whose manifest says so for this checkout's tag or branch (`on-tag`, `on-push`), or those named with
--part, print on each of their targets; the others are still previews.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

import typer

from farm.commands.ci_common import ManifestOpt, read_manifest
from farm.commands.common import die, plain
from farm.coordinator.sources import SourceProblem, check_cad_source
from farm.core.client import FarmClient, FarmError
from farm.core.manifest import MANIFEST_NAME, Part, Target
from farm.core.project import Packed, ProjectError, pack_file
from farm.core.settings import get_settings
from farm.core.wire import BuildView, SubmitOptions

USAGE_STATUSES = (400, 413, 415, 422)


@dataclass
class Checkout:
    """Where the parts come from: the commit, when the work tree is that commit unchanged."""

    git: dict[str, Any] | None = None  # SubmitOptions.git: url, ref, commit
    tag: str | None = None
    branch: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Submission:
    part: Part
    params: dict[str, Any]
    target: Target | None  # None: a preview


def submit(
    manifest_path: ManifestOpt = None,
    url: Annotated[str | None, typer.Option(help="The coordinator (default: FARM_URL).")] = None,
    token: Annotated[
        str | None, typer.Option(help="A submitter token (default: FARM_TOKEN).", show_default=False)
    ] = None,
    print_: Annotated[
        bool,
        typer.Option(
            "--print/--no-print",
            help="Print the parts whose manifest says so for this tag or branch (or named with "
            "--part), on their targets. Without it every part is a preview: built, not printed.",
        ),
    ] = False,
    part_names: Annotated[
        list[str] | None, typer.Option("--part", help="Only this part (repeatable); with --print it prints.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Send every part of the checkout (each parameter set) to a farm with a submitter token.

    In a git checkout with no uncommitted changes, each build records the commit (and the tag or
    branch), as `farm submit` of a git URL does. Every parameter set is checked first: nothing is
    sent unless all of them would be taken.
    """
    folder, manifest = read_manifest(manifest_path)
    parts = _chosen(manifest.parts, part_names, folder)
    checkout = read_checkout(folder)
    for note in checkout.notes:
        typer.secho(f"warning: {note}", err=True, fg="yellow")
    subs = plan(parts, checkout, print_, bool(part_names))
    settings = get_settings()
    token = token or settings.resolved_token()
    if not token:
        die("no token: give --token or set FARM_TOKEN to a submitter token (`farm tokens create`)", 2)
    with tempfile.TemporaryDirectory(prefix="farm-ci-submit-") as tmp:
        packed = _pack_all(folder, parts, Path(tmp))
        _check_all(subs, packed)  # the coordinator's checks first: queued whole or not at all
        sent: list[dict[str, Any]] = []
        with FarmClient(url or settings.url, token) as client:
            for sub in subs:
                pack = packed[sub.part.file]
                try:
                    build = client.submit(pack.archive, _options(sub, pack.entry, checkout))
                except FarmError as exc:
                    done = f" ({len(sent)} builds were sent before it)" if sent else ""
                    die(f"part '{sub.part.name}': {exc}{done}", 2 if exc.status in USAGE_STATUSES else 1)
                sent.append({"part": sub.part.name, "params": sub.params, "print": sub.target is not None,
                             "build": plain(build)})  # fmt: skip
                if not as_json:
                    typer.echo(_line(sub, build))
    if as_json:
        typer.echo(json.dumps({"git": checkout.git, "builds": sent}, default=str))


def _chosen(parts: list[Part], names: list[str] | None, folder: Path) -> list[Part]:
    if names:
        unknown = sorted(set(names) - {p.name for p in parts})
        if unknown:
            die(f"no part {', '.join(unknown)} in the manifest; its parts: {_names(parts)}", 2)
        parts = [p for p in parts if p.name in names]
    if not parts:
        die(f"no parts in {folder}: list them in {MANIFEST_NAME}, or mark functions @artifact", 2)
    return parts


def _pack_all(folder: Path, parts: list[Part], tmp: Path) -> dict[str, Packed]:
    """Each script's project packed once, as `farm submit` packs it."""
    packed: dict[str, Packed] = {}
    try:
        for part in parts:
            if part.file not in packed:
                dest = tmp / str(len(packed))
                dest.mkdir()
                packed[part.file] = pack_file(folder / part.file, dest)
    except ProjectError as exc:
        die(str(exc), 2)
    return packed


def _check_all(subs: list[Submission], packed: dict[str, Packed]) -> None:
    for sub in subs:
        pack = packed[sub.part.file]
        try:
            check_cad_source(pack.archive, pack.entry, sub.part.artifact, sub.params, name=sub.part.file)
        except SourceProblem as exc:
            die(f"part '{sub.part.name}' with {json.dumps(sub.params)}: {exc}; nothing was submitted", 2)


def plan(parts: list[Part], checkout: Checkout, print_: bool, named: bool) -> list[Submission]:
    """A preview per parameter set, or, for a part that prints, a build per parameter set and target."""
    subs = []
    for part in parts:
        prints = print_ and (
            named
            or (checkout.tag is not None and part.prints_on_tag(checkout.tag))
            or (checkout.branch is not None and part.prints_on_push(checkout.branch))
        )
        # model_validate: without pydantic's mypy plugin, Target() reads as missing its Field(None) defaults.
        targets: list[Target | None] = list(part.targets or [Target.model_validate({})]) if prints else [None]
        subs += [Submission(part, params, t) for params in part.param_sets() for t in targets]
    return subs


def _options(sub: Submission, entry_file: str, checkout: Checkout) -> SubmitOptions:
    options: dict[str, Any] = {"entry": sub.part.artifact, "entry_file": entry_file, "params": sub.params}
    if checkout.git:
        options["git"] = checkout.git
    if sub.target is None:
        return SubmitOptions.model_validate({**options, "preview": True})
    return SubmitOptions.model_validate({**options, **sub.target.model_dump(exclude_none=True)})


def _line(sub: Submission, build: BuildView) -> str:
    params = f" {json.dumps(sub.params)}" if sub.params else ""
    if sub.target is None:
        return f"{sub.part.name}{params}: build {build.id}, preview (CAD only, no print)"
    t = sub.target
    where = f"on {t.printer_model}" if t.printer_model else "on any printer"
    jobs = len(build.jobs)
    return (
        f"{sub.part.name}{params}: build {build.id}, {t.copies} x {t.material} {where} "
        f"({jobs} job{'s' * (jobs != 1)})"
    )


def _names(parts: list[Part]) -> str:
    return ", ".join(p.name for p in parts) or "none"


# -- the checkout ---------------------------------------------------------------------------------
def read_checkout(folder: Path) -> Checkout:
    """The commit, remote URL (without credentials), tag and branch of the checkout at `folder`.

    CI runners check out a detached commit, so the tag or branch comes from their variables first
    (GitHub, Gitea and Forgejo Actions: GITHUB_REF_TYPE/GITHUB_REF_NAME; GitLab: CI_COMMIT_TAG,
    CI_COMMIT_BRANCH), then from git."""
    checkout = Checkout()
    commit = _git(folder, "rev-parse", "--verify", "HEAD^{commit}")
    if commit is None:
        checkout.notes.append(f"{folder} is not a git checkout: the builds record no commit")
    checkout.tag, checkout.branch = _ref_from_env()
    if commit is not None and checkout.tag is None and checkout.branch is None:
        checkout.tag = _git(folder, "describe", "--exact-match", "--tags", "HEAD")
        checkout.branch = None if checkout.tag else _git(folder, "symbolic-ref", "--short", "-q", "HEAD")
    if commit is None:
        return checkout
    if _git(folder, "status", "--porcelain", "--untracked-files=no"):
        checkout.notes.append(
            f"the checkout has uncommitted changes: the builds do not record commit {commit[:12]}"
        )
        return checkout
    remote = _git(folder, "remote", "get-url", "origin") or _url_from_env()
    if remote is None:
        checkout.notes.append("the repository has no remote 'origin': the builds record no commit")
        return checkout
    checkout.git = {
        "url": strip_credentials(remote),
        "ref": checkout.tag or checkout.branch,
        "commit": commit,
    }
    return checkout


def _ref_from_env() -> tuple[str | None, str | None]:
    env = os.environ
    if env.get("GITHUB_REF_NAME") and env.get("GITHUB_REF_TYPE") in ("tag", "branch"):
        name = env["GITHUB_REF_NAME"]
        return (name, None) if env["GITHUB_REF_TYPE"] == "tag" else (None, name)
    if env.get("CI_COMMIT_TAG"):
        return env["CI_COMMIT_TAG"], None
    if env.get("CI_COMMIT_BRANCH"):
        return None, env["CI_COMMIT_BRANCH"]
    return None, None


def _url_from_env() -> str | None:
    server, repository = os.environ.get("GITHUB_SERVER_URL"), os.environ.get("GITHUB_REPOSITORY")
    return f"{server.rstrip('/')}/{repository}" if server and repository else None


def strip_credentials(url: str) -> str:
    """The URL without a user or password: a CI clone URL may carry a token, and builds show theirs."""
    if "://" not in url:
        return url  # scp-like `git@host:path`: a user name, no secret
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:  # a port that is not a number: drop everything before the host's '@'
        return re.sub(r"//[^/]*@", "//", url, count=1)
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _git(folder: Path, *args: str) -> str | None:
    """git's output, stripped, or None when it fails (no git, not a repository, no such ref)."""
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None
