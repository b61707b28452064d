"""Projects and push hooks: a local bare repository holding examples/makerrepo_project, registered
with the coordinator, and push events sent to its hooks as GitHub, Gitea and GitLab send them
(tests/hook_payloads.py). Here the coordinator runs in-process without workers: what a push makes
is read from its builds and jobs. tests/test_hooks_e2e.py takes them through a whole farm."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import http.server
import io
import json
import logging
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select

from farm.coordinator.api import create_app
from farm.coordinator.api.deps import hash_secret, new_secret
from farm.coordinator.models import Build, HookDelivery, Job, Token
from farm.core.project import pack_git
from farm.core.settings import Settings
from tests import hook_payloads as payloads
from tests.conftest import EXAMPLES, free_port, wait_until
from tests.pgserver import PostgresUnavailable, throwaway_postgres
from workers.cad_cache import source_tree_digests

SCHEMES = ["https", "ssh", "git", "file", "http"]
PARTS = {"sample-tray": 1, "tray": 2, "lid": 1}  # builds per part: the manifest's matrix
SECRET = "a-hook-secret-of-some-length"
ZERO = payloads.ZERO


def git(cwd: Path, *args: str) -> str:
    ident = ["-c", "user.name=t", "-c", "user.email=t@t"]
    done = subprocess.run(["git", *ident, *args], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@dataclass
class Repo:
    work: Path
    bare: Path

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def head(self) -> str:
        return git(self.work, "rev-parse", "HEAD")

    def commit(self, message: str, path: str = "NOTES.md") -> str:
        (self.work / path).write_text(message + "\n")
        git(self.work, "add", ".")
        git(self.work, "commit", "-q", "-m", message)
        git(self.work, "push", "-q", str(self.bare), "main")
        return self.head()

    def tag(self, name: str) -> tuple[str, str]:
        """An annotated tag, pushed: (the tag object, its commit)."""
        git(self.work, "tag", "-a", name, "-m", name)
        git(self.work, "push", "-q", str(self.bare), name)
        return git(self.work, "rev-parse", name), git(self.work, "rev-parse", f"{name}^{{commit}}")


def make_repo(root: Path) -> Repo:
    work = root / "work"
    shutil.copytree(EXAMPLES / "makerrepo_project", work, ignore=shutil.ignore_patterns("__pycache__"))
    git(work, "init", "-q", "-b", "main")
    git(work, "add", ".")
    git(work, "commit", "-q", "-m", "trays")
    bare = root / "trays.git"
    git(root, "init", "-q", "--bare", str(bare))
    git(work, "push", "-q", str(bare), "main")
    return Repo(work, bare)


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return make_repo(tmp_path)


@contextlib.contextmanager
def coordinator(data_dir: Path, database_url: str | None = None) -> Iterator[TestClient]:
    """The real app with its lifespan (housekeeper and all), no queue: builds stay queued."""
    settings = Settings(
        data_dir=data_dir,
        database_url=database_url,
        redis_url=None,
        git_schemes=SCHEMES,
        notify_interval_s=0.5,
    )
    with TestClient(create_app(settings)) as client:
        token = (data_dir / "admin.token").read_text().strip()
        client.headers["Authorization"] = f"Bearer {token}"
        yield client


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with coordinator(tmp_path / "data") as c:
        yield c


def engine(client: TestClient):  # type: ignore[no-untyped-def]
    return client.app.state.farm.engine  # type: ignore[attr-defined]


def builds(client: TestClient) -> list[Build]:
    with Session(engine(client)) as session:
        return list(session.exec(select(Build).order_by(col(Build.id))).all())


def jobs_of(client: TestClient, build_id: int) -> list[Job]:
    with Session(engine(client)) as session:
        return list(session.exec(select(Job).where(Job.build_id == build_id)).all())


def deliveries(client: TestClient) -> list[HookDelivery]:
    with Session(engine(client)) as session:
        return list(session.exec(select(HookDelivery).order_by(col(HookDelivery.id))).all())


def register(client: TestClient, name: str, url: str, **more: str) -> dict:
    resp = client.post("/api/projects", json={"name": name, "git_url": url, "secret": SECRET, **more})
    assert resp.status_code == 201, resp.text
    return resp.json()


def send(client: TestClient, service: str, name: str, body: bytes, headers: dict) -> tuple[int, dict]:
    """A hook call: no farm token (the signature is the proof)."""
    sent = {k: v for k, v in headers.items()}
    resp = client.post(f"/api/hooks/{service}/{name}", content=body, headers=sent | {"Authorization": ""})
    return resp.status_code, resp.json()


def settled(client: TestClient) -> list[HookDelivery]:
    """Once no delivery is pending (the hook builds right after answering; the housekeeper after)."""
    wait_until(lambda: all(d.state != "pending" for d in deliveries(client)), 30, "the deliveries")
    return deliveries(client)


def by_part(found: list[Build]) -> dict[str, list[Build]]:
    parts: dict[str, list[Build]] = {}
    for build in found:
        parts.setdefault(build.part_name or "", []).append(build)
    return parts


def test_a_github_push_builds_every_part_at_that_commit(
    client: TestClient, repo: Repo, tmp_path: Path
) -> None:
    push_builds_every_part(client, repo, tmp_path)


def test_the_same_on_postgresql(repo: Repo, tmp_path: Path) -> None:
    """The claims and the replay checks are conditional updates and unique keys: on PostgreSQL too."""
    try:
        with throwaway_postgres() as url, coordinator(tmp_path / "data", database_url=url) as client:
            push_builds_every_part(client, repo, tmp_path)
    except PostgresUnavailable as exc:
        pytest.skip(f"no PostgreSQL here: {exc}")


def push_builds_every_part(client: TestClient, repo: Repo, tmp_path: Path) -> None:
    register(client, "trays", repo.url)
    commit = repo.head()
    body = payloads.encode(payloads.github("refs/heads/main", ZERO, commit, commit, repo.url))
    headers = payloads.headers("github", SECRET, body)
    status, answer = send(client, "github", "trays", body, headers)
    assert status == 202 and answer["status"] == "accepted" and answer["commit"] == commit, answer
    [delivery] = settled(client)
    assert delivery.state == "done" and delivery.error is None, delivery
    made = builds(client)
    assert {part: len(found) for part, found in by_part(made).items()} == PARTS
    expected = pack_git(repo.url, "main", "main.py", tmp_path, schemes=SCHEMES)
    for build in made:
        assert build.project_name == "trays" and build.git_commit == commit and build.git_ref == "main"
        assert build.git_url == repo.url and build.git_tag is None and build.project
        assert build.owner == "hook/trays"
    # The files `farm submit URL --ref main` sends, as the CAD cache sees them: one entry for both.
    store = client.app.state.farm.store  # type: ignore[attr-defined]
    [sent] = {b.source_sha256 for b in made}
    cached = source_tree_digests(Path("main.py"), store.path(sent))
    assert cached == source_tree_digests(Path("main.py"), expected.archive) and len(cached) >= 6
    parts = by_part(made)
    assert sorted(json.loads(b.params_json)["pockets"] for b in parts["tray"]) == [3, 6]
    assert {b.entry for b in parts["tray"]} == {"custom_tray"}
    # Pushed to main: the on-push lid prints (2 copies on one plate); the rest are previews.
    [lid_job] = jobs_of(client, parts["lid"][0].id)  # type: ignore[arg-type]
    assert lid_job.copies == 2 and lid_job.material == "PLA" and lid_job.printer_model is None
    assert all(not jobs_of(client, b.id) for b in parts["tray"] + parts["sample-tray"])  # type: ignore[arg-type]
    assert json.loads(delivery.builds_json) == [b.id for b in made]

    # A replay: the same delivery, then the same body under a new delivery id (the signature
    # covers only the body, so anyone who saw it could send it so).
    assert send(client, "github", "trays", body, headers)[1]["status"] == "already seen"
    again = payloads.headers("github", SECRET, body)
    assert send(client, "github", "trays", body, again)[1]["status"] == "already seen"
    # The same commit pushed again (a new delivery, a new body): nothing new to build.
    later = payloads.encode(payloads.github("refs/heads/main", ZERO, commit, commit, repo.url, pushed_at=2))
    assert send(client, "github", "trays", later, payloads.headers("github", SECRET, later))[0] == 202
    second = settled(client)[-1]
    assert second.state == "done" and json.loads(second.builds_json) == [], second
    assert "4 already built" in (second.message or "")
    assert len(builds(client)) == len(made)


def test_a_tag_queues_the_prints_its_manifest_asks_for(client: TestClient, repo: Repo) -> None:
    register(client, "trays", repo.url)
    tag_object, commit = repo.tag("v1.0")
    body = payloads.encode(payloads.github("refs/tags/v1.0", ZERO, tag_object, commit, repo.url))
    assert send(client, "github", "trays", body, payloads.headers("github", SECRET, body))[0] == 202
    assert settled(client)[0].state == "done"
    parts = by_part(builds(client))
    assert {part: len(found) for part, found in parts.items()} == PARTS
    for build in parts["tray"]:  # on-tag "v*": one MK4 job each, in PETG
        assert build.git_tag == "v1.0" and build.git_ref == "v1.0" and build.git_commit == commit
        [job] = jobs_of(client, build.id)  # type: ignore[arg-type]
        assert (job.printer_model, job.material, build.material) == ("MK4", "PETG", "PETG")
    assert not jobs_of(client, parts["lid"][0].id)  # type: ignore[arg-type]  # on-push: not on a tag


def test_bad_missing_or_foreign_signatures_build_nothing(client: TestClient, repo: Repo) -> None:
    register(client, "trays", repo.url)
    commit = repo.head()
    bodies = {
        "github": payloads.github("refs/heads/main", ZERO, commit, commit, repo.url),
        "gitea": payloads.gitea("refs/heads/main", ZERO, commit, repo.url),
        "gitlab": payloads.gitlab("refs/heads/main", ZERO, commit, commit, repo.url),
    }
    for service, payload in bodies.items():
        body = payloads.encode(payload)
        wrong = payloads.headers(service, "not-the-secret-at-all", body)
        status, answer = send(client, service, "trays", body, wrong)
        assert status == 401 and "does not match" in answer["detail"], (service, answer)
        status, answer = send(client, service, "trays", body, payloads.headers(service, None, body))
        assert status == 401 and "farm projects add" in answer["detail"], (service, answer)
        # Signed for another body: the signature covers every byte.
        tampered = body.replace(commit.encode(), (ZERO[:-1] + "1").encode())
        if service != "gitlab":  # GitLab's token is no signature: its body cannot be checked
            assert send(client, service, "trays", tampered, payloads.headers(service, SECRET, body))[0] == 401
        # Unsigned, an unknown project is refused like a known one; signed, it is a 404.
        assert send(client, service, "nope", body, payloads.headers(service, None, body))[0] == 401
        assert send(client, service, "nope", body, payloads.headers(service, SECRET, body))[0] == 404
    assert [d for d in deliveries(client) if d.commit == commit] == []
    assert builds(client) == []


def test_gitea_and_gitlab_pushes_and_tags(client: TestClient, repo: Repo) -> None:
    register(client, "trays", repo.url)
    first = repo.head()
    body = payloads.encode(payloads.gitea("refs/heads/main", ZERO, first, repo.url))
    headers = payloads.headers("gitea", SECRET, body)
    assert send(client, "gitea", "trays", body, headers)[0] == 202
    assert settled(client)[-1].state == "done"
    assert send(client, "gitea", "trays", body, headers)[1]["status"] == "already seen"
    assert {b.git_commit for b in builds(client)} == {first} and len(builds(client)) == 4

    second = repo.commit("a note")
    body = payloads.encode(payloads.gitlab("refs/heads/main", first, second, second, repo.url))
    headers = payloads.headers("gitlab", SECRET, body)
    assert send(client, "gitlab", "trays", body, headers)[0] == 202
    assert settled(client)[-1].state == "done"
    assert send(client, "gitlab", "trays", body, headers)[1]["status"] == "already seen"  # GitLab's retry
    at_second = [b for b in builds(client) if b.git_commit == second]
    assert {part: len(found) for part, found in by_part(at_second).items()} == PARTS

    tag_object, commit = repo.tag("v2")
    body = payloads.encode(payloads.gitlab("refs/tags/v2", ZERO, tag_object, commit, repo.url))
    assert (
        send(client, "gitlab", "trays", body, payloads.headers("gitlab", SECRET, body, event="tag"))[0] == 202
    )
    assert settled(client)[-1].state == "done"
    tagged = [b for b in builds(client) if b.git_tag == "v2"]
    # The previews of this commit exist already (the GitLab push): only the prints are new.
    assert sorted(b.part_name for b in tagged) == ["tray", "tray"]  # type: ignore[type-var]
    assert all(len(jobs_of(client, b.id)) == 1 for b in tagged)  # type: ignore[arg-type]


def test_what_builds_nothing_is_answered_and_not_stored(client: TestClient, repo: Repo) -> None:
    register(client, "trays", repo.url)
    commit = repo.head()
    ping = payloads.encode({"zen": "Design for failure.", "hook_id": 1, "hook": {"events": ["push"]}})
    assert send(client, "github", "trays", ping, payloads.headers("github", SECRET, ping, event="ping")) == (
        200,
        {"status": "pong", "project": "trays"},
    )
    for name, payload in {
        "another branch": payloads.github("refs/heads/wip", ZERO, commit, commit, repo.url),
        "a deletion": payloads.github("refs/heads/main", commit, ZERO, commit, repo.url),
    }.items():
        body = payloads.encode(payload)
        status, answer = send(client, "github", "trays", body, payloads.headers("github", SECRET, body))
        assert status == 200 and answer["status"] == "ignored", (name, answer)
    # GitHub's and Gitea's other content type, `payload=<JSON>` as a form; Forgejo's own header names.
    wip = payloads.encode(payloads.gitea("refs/heads/wip", ZERO, commit, repo.url))
    form = urlencode({"payload": wip.decode()}).encode()
    signed = payloads.headers("github", SECRET, form) | {"Content-Type": "application/x-www-form-urlencoded"}
    assert send(client, "github", "trays", form, signed)[1]["status"] == "ignored"
    mac = hmac.new(SECRET.encode(), wip, hashlib.sha256).hexdigest()
    forgejo = {"Content-Type": "application/json", "X-Forgejo-Event": "push", "X-Forgejo-Signature": mac}
    assert send(client, "gitea", "trays", wip, forgejo)[1]["reason"].startswith("pushes to 'wip'")
    assert send(client, "gitea", "trays", wip, forgejo | {"X-Forgejo-Signature": mac[::-1]})[0] == 401
    issue = payloads.encode({"action": "opened"})
    answer = send(client, "github", "trays", issue, payloads.headers("github", SECRET, issue, event="issues"))
    assert answer[0] == 200 and "'issues'" in answer[1]["reason"]
    for junk in (
        b"not json",
        b"[1]",
        b'{"ref": "refs/heads/main"}',
        b'{"ref": "-x", "after": "' + b"a" * 40 + b'"}',
    ):
        status, answer = send(client, "github", "trays", junk, payloads.headers("github", SECRET, junk))
        assert status == 422 and answer["detail"], (junk, answer)
    assert deliveries(client) == [] and builds(client) == []


def test_projects_are_for_admins_and_hooks_need_no_token(client: TestClient, repo: Repo) -> None:
    with Session(engine(client)) as session:
        secret = new_secret()
        session.add(Token(name="sam", role="submitter", secret_sha256=hash_secret(secret)))
        session.commit()
    as_sam = {"Authorization": f"Bearer {secret}"}
    assert client.get("/api/projects", headers=as_sam).status_code == 403
    body = {"name": "trays", "git_url": repo.url}
    assert client.post("/api/projects", json=body, headers=as_sam).status_code == 403
    assert client.get("/api/projects", headers={"Authorization": ""}).status_code == 401
    made = client.post("/api/projects", json=body).json()
    assert len(made["secret"]) > 20 and made["hooks"]["github"].endswith("/api/hooks/github/trays")
    assert "secret" not in client.get("/api/projects/trays").json()  # shown once
    assert client.post("/api/projects", json=body).status_code == 409
    for bad, words in [
        ({"name": "../x", "git_url": repo.url}, "name"),
        ({"name": "x", "git_url": "ext::sh -c touch% /tmp/p"}, "remote helper"),
        ({"name": "x", "git_url": "https://ada:hunter2@example.com/t.git"}, "holds a password"),
        ({"name": "x", "git_url": repo.url, "git_username": "ada"}, "token"),
    ]:
        resp = client.post("/api/projects", json=bad)
        assert resp.status_code == 422 and words in json.dumps(resp.json()), (bad, resp.text)
        assert "hunter2" not in resp.text
    assert client.delete("/api/projects/trays").json() == {"removed": "trays"}
    commit = repo.head()
    push = payloads.encode(payloads.github("refs/heads/main", ZERO, commit, commit, repo.url))
    assert send(client, "github", "trays", push, payloads.headers("github", made["secret"], push))[0] == 404


class PrivateGit(http.server.SimpleHTTPRequestHandler):
    """A repository over git's plain HTTP protocol, behind HTTP Basic auth (as a private one is)."""

    password = ""

    def do_GET(self) -> None:
        wanted = "Basic " + base64.b64encode(f"ada:{self.password}".encode()).decode()
        if self.headers.get("Authorization") != wanted:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *_args: object) -> None:
        pass


def test_fetch_credentials_work_and_are_never_shown(
    repo: Repo, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    git(repo.bare, "update-server-info")
    token = "tok-" + new_secret()
    PrivateGit.password = token
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", free_port()), lambda *a: PrivateGit(*a, directory=str(repo.bare.parent))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{repo.bare.name}"
    commit = repo.head()
    caplog.set_level(logging.DEBUG)
    try:
        with coordinator(tmp_path / "data") as client:
            answers = [register(client, "wrong", url, git_username="ada", git_token="not-" + token)]
            answers.append(register(client, "trays", url, git_username="ada", git_token=token))
            assert answers[-1]["credentials"] == "user 'ada' and a token"
            for name in ("wrong", "trays"):
                body = payloads.encode(payloads.github("refs/heads/main", ZERO, commit, commit, url))
                assert send(client, "github", name, body, payloads.headers("github", SECRET, body))[0] == 202
            wait_until(
                lambda: deliveries(client)[0].error and deliveries(client)[1].state == "done", 30, "fetches"
            )
            failed, _done = deliveries(client)
            assert failed.state == "pending" and "could not fetch" in (
                failed.error or ""
            )  # tried again later
            assert {b.project_name for b in builds(client)} == {"trays"} and len(builds(client)) == 4
            answers += [client.get("/api/projects").json(), client.get("/api/projects/wrong").json()]
            answers.append(client.get("/api/projects/trays").json())
            shown = json.dumps(answers) + (failed.error or "")
            assert failed.error and "trays.git" in shown  # the answers were read
    finally:
        server.shutdown()
    assert token not in shown and token not in caplog.text
    for log in (tmp_path / "data").rglob("*.log"):
        assert token not in log.read_text(errors="replace")


def test_a_delivery_outlives_a_fetch_that_fails_and_a_restart(repo: Repo, tmp_path: Path) -> None:
    """Stored before the answer: the repository is away, the coordinator stops; back, it builds."""
    data = tmp_path / "data"
    commit = repo.head()
    away = repo.bare.with_name("away.git")
    with coordinator(data) as client:
        register(client, "trays", repo.url)
        repo.bare.rename(away)
        body = payloads.encode(payloads.github("refs/heads/main", ZERO, commit, commit, repo.url))
        assert send(client, "github", "trays", body, payloads.headers("github", SECRET, body))[0] == 202
        [delivery] = deliveries(client)
        assert delivery.state == "pending" and "could not fetch" in (delivery.error or ""), delivery
        shown = client.get("/api/projects/trays").json()["deliveries"][0]
        assert shown["state"] == "pending" and shown["next_try_at"] and shown["error"]
    away.rename(repo.bare)
    with coordinator(data) as client:
        wait_until(
            lambda: deliveries(client)[0].state == "done", 30, "the delivery to be built after the restart"
        )
        assert len(builds(client)) == 4 and {b.git_commit for b in builds(client)} == {commit}


def test_a_link_out_of_the_repository_is_not_sent_to_the_build(
    client: TestClient, repo: Repo, tmp_path: Path
) -> None:
    """A repository's symlink to a coordinator file (its admin token) would ship that file to a
    build, which could print it into a mesh anyone may download."""
    token_file = tmp_path / "data" / "admin.token"
    (repo.work / "steal.txt").symlink_to(token_file)
    (repo.work / "alias.json").symlink_to("tall.json")  # inside: kept
    commit = repo.commit("links")
    register(client, "trays", repo.url)
    body = payloads.encode(payloads.github("refs/heads/main", ZERO, commit, commit, repo.url))
    assert send(client, "github", "trays", body, payloads.headers("github", SECRET, body))[0] == 202
    assert settled(client)[0].state == "done"
    store = client.app.state.farm.store  # type: ignore[attr-defined]
    archive = store.path(builds(client)[0].source_sha256).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        names = tar.getnames()
        assert "alias.json" in names and "main.py" in names and "steal.txt" not in names
        blob = b"".join(tar.extractfile(m).read() for m in tar.getmembers())  # type: ignore[union-attr]
    assert token_file.read_text().strip().encode() not in blob


HUGE = "".join(
    f'[[parts]]\nname = "p{i}"\nfile = "main.py"\nartifact = "custom_tray"\n'
    f"matrix = {{ pockets = {list(range(1, 201))} }}\n"
    for i in range(3)
)


@pytest.mark.parametrize(
    ("manifest", "words"),
    [
        ('[[parts]]\nname = "lid"\nfile = "main.py"\ncopies = 3\n', "copies"),
        (HUGE, "makes up to 600 builds; a push makes at most 500"),
    ],
)
def test_a_broken_manifest_fails_the_delivery_with_its_error(
    client: TestClient, repo: Repo, manifest: str, words: str
) -> None:
    (repo.work / "printfarm.toml").write_text(manifest)
    commit = repo.commit("broken")
    register(client, "trays", repo.url)
    body = payloads.encode(payloads.github("refs/heads/main", ZERO, commit, commit, repo.url))
    assert send(client, "github", "trays", body, payloads.headers("github", SECRET, body))[0] == 202
    [delivery] = settled(client)
    assert delivery.state == "failed" and "printfarm.toml" in (delivery.error or ""), delivery
    shown = client.get("/api/projects/trays").json()["deliveries"][0]
    assert shown["state"] == "failed" and words in shown["error"]
    assert builds(client) == []
