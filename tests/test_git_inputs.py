"""Git URLs and refs from users never reach git as options or remote helpers; file:// and local
paths only where the git_schemes setting lists "file". Each attack's command would touch a file:
the test shows that it was refused with a message and that the file never appeared."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from farm.coordinator.api import create_app
from farm.core.gitsource import DEFAULT_GIT_SCHEMES, allow_protocol
from farm.core.project import ProjectError, _git, pack_file, pack_git
from farm.core.settings import Settings
from tests.conftest import free_port, run_farm

WITH_FILE = (*DEFAULT_GIT_SCHEMES, "file")
PART = "from build123d import Box\n\nresult = Box(10, 10, 10)\n"


def git(cwd: Path, *args: str) -> str:
    ident = ["-c", "user.name=t", "-c", "user.email=t@t"]
    done = subprocess.run(["git", *ident, *args], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.fixture
def bare(tmp_path: Path) -> Path:
    """A bare repository with part.py at tag v1."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "part.py").write_text(PART)
    git(work, "init", "-q", "-b", "main")
    git(work, "add", ".")
    git(work, "commit", "-q", "-m", "v1")
    git(work, "tag", "v1")
    git(tmp_path, "clone", "-q", "--bare", str(work), str(tmp_path / "repo.git"))
    return tmp_path / "repo.git"


def hostile(pwned: Path, bare: Path) -> list[tuple[str, str | None]]:
    """(url, ref) pairs whose command, were it run, would create `pwned`."""
    touch = f"touch {pwned}"
    return [
        (f"file://{bare}", f"--upload-pack={touch}"),
        (f"file://{bare}", f"-c core.sshCommand={touch}"),
        (f"file://{bare}", "--upload-pack=/bin/touch"),
        (f"--upload-pack={touch}", None),
        (f"-c core.sshCommand={touch}", None),
        (f"ext::sh -c touch% {pwned}", None),
        (f"ext::touch {pwned}", None),
        (f"ssh://-oProxyCommand=touch%20{pwned}/repo", None),
        (f"git@-oProxyCommand=x:{pwned}", None),
    ]


def test_farm_submit_refuses_options_and_helpers_in_url_and_ref(bare: Path, tmp_path: Path) -> None:
    """The real CLI, with file:// allowed so that the bare repository itself is reachable."""
    pwned = tmp_path / "pwned"
    env = {
        **os.environ,
        "FARM_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens: the refusal comes first
        "FARM_TOKEN": "x",
        "FARM_GIT_SCHEMES": json.dumps(WITH_FILE),
    }
    for url, ref in hostile(pwned, bare):
        ref_arg = [f"--ref={ref}"] if ref else []  # `--` and `=`: the values reach farm, not the parser
        done = run_farm(env, "submit", "--file", "part.py", *ref_arg, "--", url)
        assert done.returncode == 2, (url, ref, done.stdout, done.stderr)
        words = ("option", "remote helper", "not a branch", "does not exist", "plain host", "plain user")
        assert any(w in done.stderr for w in words), (url, ref, done.stderr)
        assert "Traceback" not in done.stderr
        assert not pwned.exists(), (url, ref)


def test_pack_git_refuses_them_too(bare: Path, tmp_path: Path) -> None:
    pwned = tmp_path / "pwned"
    for url, ref in hostile(pwned, bare):
        with pytest.raises(ProjectError):
            pack_git(url, ref, "part.py", tmp_path, schemes=WITH_FILE)
    assert not pwned.exists()


def test_git_itself_refuses_transports_outside_the_setting(tmp_path: Path) -> None:
    """Defence in depth: were a check to let `ext::` through, GIT_ALLOW_PROTOCOL stops git."""
    pwned = tmp_path / "pwned"
    env = {"GIT_ALLOW_PROTOCOL": allow_protocol(WITH_FILE)}
    done = _git(["clone", "--", f"ext::sh -c touch% {pwned}", str(tmp_path / "c")], None, env)
    assert done.returncode != 0 and "not allowed" in done.stderr
    assert not pwned.exists()


def test_file_urls_and_local_paths_need_the_setting(bare: Path, tmp_path: Path) -> None:
    for url in (f"file://{bare}", str(bare)):
        with pytest.raises(ProjectError, match=r'add "file" to the git_schemes setting.*FARM_GIT_SCHEMES'):
            pack_git(url, "v1", "part.py", tmp_path)  # the default setting
    packed = pack_git(f"file://{bare}", "v1", "part.py", tmp_path, schemes=WITH_FILE)
    assert packed.git_commit and packed.entry == "part.py"


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    project = tmp_path / "proj"
    project.mkdir()
    (project / "pyproject.toml").write_text("")
    (project / "part.py").write_text(PART)
    packed = pack_file(project / "part.py", tmp_path)
    assert packed is not None
    return packed.archive


def coordinator(tmp_path: Path, redis_url: str, schemes: tuple[str, ...]) -> Iterator[TestClient]:
    settings = Settings(
        data_dir=tmp_path / f"data-{len(schemes)}",
        redis_url=redis_url.rsplit("/", 1)[0] + "/7",
        git_schemes=list(schemes),
    )
    with TestClient(create_app(settings)) as client:
        token = (settings.data_dir / "admin.token").read_text().strip()
        client.headers["Authorization"] = f"Bearer {token}"
        yield client


def submit_git(client: TestClient, archive: Path, git_source: dict) -> tuple[int, dict]:
    options = {"entry_file": "part.py", "git": git_source}
    resp = client.post(
        "/api/builds",
        files={"file": (archive.name, archive.read_bytes())},
        data={"options": json.dumps(options)},
    )
    return resp.status_code, resp.json()


def test_the_coordinator_refuses_bad_git_sources_with_a_422(
    tmp_path: Path, redis_url: str, archive: Path
) -> None:
    commit = "a" * 40
    bad = [
        ({"url": "ext::sh -c touch% /tmp/x", "commit": commit}, "remote helper"),
        ({"url": "--upload-pack=touch /tmp/x", "commit": commit}, "option"),
        ({"url": "ssh://-oProxyCommand=x/r", "commit": commit}, "plain host"),
        ({"url": "https://h/r.git", "ref": "--upload-pack=touch /tmp/x", "commit": commit}, "not a branch"),
        ({"url": "https://h/r.git", "ref": "-c", "commit": commit}, "not a branch"),
        ({"url": "https://h/r.git", "commit": "--upload-pack=x"}, "hex commit"),
        ({"url": "http://h/r.git", "commit": commit}, "git_schemes"),
        ({"url": "file:///srv/r.git", "commit": commit}, 'add "file" to the git_schemes'),
        ({"url": "/srv/r.git", "commit": commit}, 'add "file" to the git_schemes'),
    ]
    for client in coordinator(tmp_path, redis_url, DEFAULT_GIT_SCHEMES):
        for source, words in bad:
            status, body = submit_git(client, archive, source)
            assert status == 422 and words in body["detail"], (source, body)
        status, body = submit_git(client, archive, {"url": "https://h/r.git", "ref": "v1", "commit": commit})
        assert status == 201, body
    for client in coordinator(tmp_path, redis_url, WITH_FILE):
        status, body = submit_git(
            client, archive, {"url": "file:///srv/r.git", "ref": "v1", "commit": commit}
        )
        assert status == 201 and body["git"]["url"] == "file:///srv/r.git", body


def test_pack_git_leaves_behind_links_that_lead_out_of_the_repository(tmp_path: Path) -> None:
    """A stranger's repository with `leak -> ~/.ssh/id_rsa`: the submitter's file never ships."""
    secret = tmp_path / "id_rsa"
    secret.write_text("PRIVATE KEY of the person submitting\n")
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "part.py").write_text(PART)
    (work / "leak").symlink_to(secret)
    (work / "sub" / "inside").symlink_to("../part.py")  # a link within the repository still ships
    git(work, "init", "-q", "-b", "main")
    git(work, "add", ".")
    git(work, "commit", "-q", "-m", "links")
    git(tmp_path, "clone", "-q", "--bare", str(work), str(tmp_path / "repo.git"))
    out = tmp_path / "out"
    out.mkdir()
    packed = pack_git(f"file://{tmp_path / 'repo.git'}", None, "part.py", out, schemes=WITH_FILE)
    with tarfile.open(packed.archive) as tar:
        names = {m.name: m for m in tar.getmembers()}
        assert "leak" not in names and not any(m.linkname for m in names.values())
        inside = tar.extractfile(names["sub/inside"])
        assert inside is not None and inside.read().decode() == PART
        for member in names.values():
            data = tar.extractfile(member)
            assert data is None or b"PRIVATE KEY" not in data.read()
