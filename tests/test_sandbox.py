"""The CAD sandbox under attack: hostile designs (tests/sandbox_attacks.py) learn nothing, break nothing.

Run as root (as CI runs), as an unprivileged user, and once without the sandbox, where the same attacks
must succeed: that control is what shows each attack is real.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO, RunningFarm, farm_server, wait_until
from tests.sandbox_attacks import ATTACKS, SECRET, WORKER_SECRET

# What each attack must come to; anything else must build (having learned nothing) or fail plainly.
EXPECTED_FAILURE: dict[str, tuple[str, str | tuple[str, ...]]] = {
    "fork_bomb": ("limit", "wall-clock limit"),
    "allocate_12gb": ("limit", "memory"),
    "loop_forever": ("limit", ("CPU time", "wall-clock limit")),  # which comes first depends on load
    "session_then_hang": ("limit", "wall-clock limit"),
    "segfault": ("crash", "segmentation fault"),
    # Where it can find its out/ folder (namespaces) it forges; under Landlock alone it cannot.
    "forged_result": ("crash", ("a result that cannot be read", "without a result")),
}
NOBODY = 65534
GOOD_BYTES = b"from build123d import Box\n\nresult = Box(10, 10, 10)\n"


def harness(
    *args: str, wrapper: list[str] | None = None, disable: str = "", timeout: float = 600
) -> dict[str, Any]:
    # The worker's token in its environment from exec on, where /proc/<pid>/environ shows it.
    env = {"FARM_TOKEN": WORKER_SECRET, "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/tmp"}
    env["FARM_CAD_SANDBOX_DISABLE"] = disable
    done = subprocess.run(
        [*(wrapper or []), sys.executable, "-m", "tests.sandbox_attacks", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and lines, f"the harness failed ({done.returncode}):\n{done.stderr[-3000:]}"
    return json.loads(lines[-1])


def as_nobody(uid: int = NOBODY) -> list[str]:
    """Run as `uid` in a mount namespace where the Python installation is reachable by every uid.

    This machine's Python lives under /root (mode 700); a real unprivileged worker would have its own.
    The wrapper shows the installation's folder through a tmpfs over the closed ancestor, nothing else.
    """
    script = ["set -e", "mount --make-rprivate /"]
    for prefix in dict.fromkeys(os.path.realpath(p) for p in (sys.base_prefix, sys.prefix)):
        closed = _closed_ancestor(Path(prefix))
        if closed is None:
            continue
        inner = closed / Path(prefix).relative_to(closed).parts[0]
        script += [
            f"keep=$(mktemp -d); mount --bind {inner} $keep",
            f"mount -t tmpfs -o mode=0755 tmpfs {closed}",
            f"mkdir -p {inner}; mount --move $keep {inner}",
        ]
    if uid:
        script.append(f'exec setpriv --reuid={uid} --regid={uid} --clear-groups --inh-caps=-all -- "$@"')
    else:
        script.append('exec "$@"')
    return ["unshare", "--mount", "--", "sh", "-c", "; ".join(script), "sh"]


def _closed_ancestor(path: Path) -> Path | None:
    for parent in reversed(path.parents):
        if parent != Path("/") and not os.stat(parent).st_mode & 0o001:
            return parent
    return None


def judge(report: dict[str, Any], names: list[str] | None = None) -> None:
    assert report["hits"] == {"coordinator": 0, "other": 0, "dns": 0}, "a build reached the network"
    assert report["files_outside"] == [], "a build wrote outside its folder"
    assert report["stray"] == [], "processes of a build outlived it"
    assert report["build_folders_left"] == [], "a build's folder was left behind"
    for name in names or list(report["results"]):
        outcome = report["results"][name]
        said = outcome["message"] + outcome["log"]
        for secret in report["secrets"]:
            assert secret not in said, f"{name} learned a secret: {said[:500]}"
        assert "LEAKED" not in said, f"{name}: {said[:500]}"
        assert outcome["worker_alive"]
        assert outcome["next"]["built"], f"the build after {name} failed: {outcome['next']['message']}"
        if name in EXPECTED_FAILURE:
            kind, words = EXPECTED_FAILURE[name]
            said_it = any(w in outcome["message"] for w in ([words] if isinstance(words, str) else words))
            assert (outcome["kind"], said_it) == (kind, True), (name, outcome["message"])
        else:
            assert outcome["built"] or outcome["kind"] == "exception", (name, outcome["message"])
        if name == "other_build_folder":
            assert outcome["victim"]["built"], outcome["victim"]["message"]


@pytest.fixture(scope="module")
def as_root() -> dict[str, Any]:
    return harness()


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_hostile_design_learns_nothing_and_the_worker_carries_on(
    as_root: dict[str, Any], attack: str
) -> None:
    assert as_root["uid"] == os.geteuid()
    judge(as_root, [attack])


@pytest.mark.skipif(os.geteuid() != 0, reason="the main suite already ran as an unprivileged user")
def test_the_same_suite_passes_with_the_worker_as_an_unprivileged_user() -> None:
    report = harness(wrapper=as_nobody())
    assert report["uid"] == NOBODY
    assert set(report["results"]) == set(ATTACKS)
    judge(report)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make the test's mount namespace")
@pytest.mark.parametrize("uid", [0, NOBODY], ids=["root", "unprivileged"])
def test_without_namespaces_landlock_and_seccomp_hold_the_walls(uid: int) -> None:
    """As in Docker's default seccomp profile, where no namespace can be made: Landlock and seccomp."""
    report = harness(wrapper=as_nobody(uid), disable="namespaces")
    assert report["uid"] == uid
    assert {"landlock", "seccomp"} <= set(report["layers"]) and "mountns" not in report["layers"]
    judge(report)


def test_without_the_sandbox_the_same_attacks_succeed() -> None:
    """The control: every attack that reads, connects or writes does so when nothing stops it."""
    names = [
        "glob_admin_token",
        "proc_environ",
        "etc_shadow",
        "connect_coordinator",
        "connect_other_port",
        "udp_dns",
        "write_outside",
        "symlink_out",
    ]
    report = harness("--unsandboxed", *names)
    results = report["results"]
    for name in ("glob_admin_token", "symlink_out"):
        assert SECRET in results[name]["message"], name
    assert WORKER_SECRET in results["proc_environ"]["message"]  # the worker's environment, via /proc
    for name in ("etc_shadow", "connect_coordinator", "connect_other_port", "udp_dns"):
        assert "LEAKED" in results[name]["message"], name
    assert report["hits"]["coordinator"] >= 1 and report["hits"]["other"] >= 1 and report["hits"]["dns"] >= 1
    assert len(report["files_outside"]) == 3


# --------------------------------------------------------------------------------------------------
# The worker: refusing CAD work without isolation, and saying so


def _worker(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "farm", "worker", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    return {**env, "FARM_DATA_DIR": str(tmp_path), "FARM_TOKEN": "unused", **extra}


def test_check_sandbox_lists_every_layer_and_accepts_this_host(tmp_path: Path) -> None:
    done = _worker(_env(tmp_path), "--check-sandbox", "--json")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0, done.stdout
    assert report["usable"] and report["network_isolated"] and report["filesystem_isolated"]
    active = {layer["name"] for layer in report["layers"] if layer["active"]}
    assert {"identity", "netns", "mountns", "pidns", "landlock", "seccomp"} <= active
    text = _worker(_env(tmp_path), "--check-sandbox")
    assert "CAD work: accepted" in text.stdout and "landlock  on" in text.stdout


@pytest.mark.parametrize(
    ("disabled", "usable"),
    [
        ("namespaces,landlock,seccomp", False),
        ("namespaces,landlock", False),  # seccomp keeps the network out, nothing keeps files in
        ("namespaces,seccomp", False),  # Landlock: files and TCP, but UDP would get out
        ("namespaces", True),  # as in Docker: Landlock and seccomp hold both walls
    ],
)
def test_check_sandbox_says_which_walls_hold_with_layers_forced_off(
    tmp_path: Path, disabled: str, usable: bool
) -> None:
    done = _worker(_env(tmp_path, FARM_CAD_SANDBOX_DISABLE=disabled), "--check-sandbox")
    assert done.returncode == (0 if usable else 1), done.stdout
    assert ("CAD work: accepted" if usable else "CAD work: REFUSED") in done.stdout
    for layer in ("netns", "mountns", "pidns"):
        assert f"{layer:9} off  forced off" in done.stdout


def test_the_worker_refuses_cad_work_without_isolation(tmp_path: Path, redis_url: str) -> None:
    env = _env(tmp_path, FARM_REDIS_URL=redis_url, FARM_CAD_SANDBOX_DISABLE="namespaces,landlock,seccomp")
    done = _worker(env, "--queues", "cad")
    assert done.returncode == 1
    assert "refusing CAD work: builds would not be isolated from the network and files" in done.stderr
    assert "FARM_CAD_SANDBOX=off" in done.stderr  # says what would override it
    assert "Traceback" not in done.stderr


def test_farm_cad_sandbox_off_runs_warns_and_status_shows_it(tmp_path: Path, redis_url: str) -> None:
    queue = redis_url.rsplit("/", 1)[0] + "/13"
    coordinator_env = _env(tmp_path / "coordinator", FARM_REDIS_URL=queue)
    with farm_server(coordinator_env, tmp_path / "coordinator.log") as (_, base):
        admin = (tmp_path / "coordinator" / "admin.token").read_text().strip()
        api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {admin}"}, timeout=30)
        made = api.post("/api/tokens", json={"name": "off-worker", "role": "worker"})
        assert made.status_code == 201, made.text
        env = _env(
            tmp_path / "worker",
            FARM_REDIS_URL=queue,
            FARM_URL=base,
            FARM_TOKEN=made.json()["token"],
            FARM_CAD_SANDBOX="off",
            FARM_CAD_SANDBOX_DISABLE="namespaces,landlock,seccomp",
        )
        log = tmp_path / "worker.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "farm", "worker", "--queues", "cad"],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            ready = lambda: "worker ready" in log.read_text() or proc.poll() is not None  # noqa: E731
            wait_until(ready, 120, "the worker")
            assert proc.poll() is None, log.read_text()
            assert "FARM_CAD_SANDBOX=off: CAD builds run with this worker's rights" in log.read_text()

            def listed() -> list[dict[str, Any]]:
                return [w for w in api.get("/api/status").json()["workers"] if "cad" in w["queues"]]

            wait_until(listed, 30, "the worker's announcement")
            assert [w["sandbox"] for w in listed()] == ["off"]
            shown = subprocess.run(
                [sys.executable, "-m", "farm", "status"],
                cwd=REPO,
                env={**coordinator_env, "FARM_URL": base, "FARM_TOKEN": admin},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert "(cad): UNSANDBOXED (FARM_CAD_SANDBOX=off)" in shown.stdout, shown.stdout + shown.stderr
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            api.close()


# --------------------------------------------------------------------------------------------------
# Through the farm: a submitter's design against `farm up`


HOSTILE_DESIGN = """\
import os, socket
from build123d import Box
found = []
for path in ({token!r}, "/etc/shadow", f"/proc/{{os.getppid()}}/environ"):
    try:
        found.append(open(path).read())
    except OSError:
        pass
try:
    socket.create_connection(("127.0.0.1", {port}), 2)
    found.append("reached the coordinator")
except OSError:
    pass
if found:
    raise RuntimeError("LEAKED " + repr(found))
result = Box(5, 5, 5)
"""


def test_a_submitters_hostile_design_on_farm_up_learns_nothing(farm: RunningFarm, tmp_path: Path) -> None:
    admin = (farm.data_dir / "admin.token").read_text().strip()
    code, created = farm.cli_json("tokens", "create", f"mallory-{time.time_ns()}", "--role", "submitter")
    assert code == 0, created
    design = tmp_path / "innocent.py"
    port = int(farm.url.rsplit(":", 1)[1])
    design.write_text(HOSTILE_DESIGN.format(token=str(farm.data_dir / "admin.token"), port=port))
    env = {**farm.env, "FARM_TOKEN": created["token"]}  # type: ignore[index]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "farm",
            "submit",
            str(design),
            "--no-project",
            "--no-cache",
            "--wait",
            "--json",
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    build = json.loads(done.stdout.strip().splitlines()[-1])
    assert admin not in done.stdout and "LEAKED" not in done.stdout, done.stdout
    assert build["stage"] != "failed", build  # it learned nothing, so it built its box
    status = httpx.get(f"{farm.url}/api/status", headers={"Authorization": f"Bearer {admin}"}).json()
    cad_workers = [w for w in status["workers"] if "cad" in w["queues"]]
    assert cad_workers and all(w["sandbox"] == "isolated" for w in cad_workers), status["workers"]
    shown = farm.cli("status")
    assert "sandboxed" in shown.stdout and "UNSANDBOXED" not in shown.stdout


# --------------------------------------------------------------------------------------------------
# Project archives: unpacked by the worker, before any sandbox, so nothing in them may lead out


def _archive(path: Path, members: list[tuple[str, bytes | None, str | None]]) -> Path:
    """A .tar.gz of (name, content, link target): a file when content is given, else a symlink."""
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        for name, content, target in members:
            info = tarfile.TarInfo(name)
            if content is not None:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
            else:
                info.type, info.linkname = tarfile.SYMTYPE, target or ""
                tar.addfile(info)
    return path


@pytest.mark.parametrize(
    ("members", "said"),
    [
        ([("main.py", GOOD_BYTES, None), ("escape", None, "/etc")], "not a plain file"),
        # The long-symlink chain of CVE-2025-4517: links that overflow realpath in tarfile's filter.
        (
            [("main.py", GOOD_BYTES, None)] + [("d" * 200 + f"{i}", None, "../" * 40) for i in range(20)],
            "plain",
        ),
        ([("main.py", GOOD_BYTES, None), ("../../outside.py", b"x = 1\n", None)], "leads outside"),
        ([("main.py", GOOD_BYTES, None), ("/abs/outside.py", b"x = 1\n", None)], "leads outside"),
    ],
    ids=["symlink", "symlink-chain", "dot-dot", "absolute"],
)
def test_a_project_archive_with_links_or_paths_out_is_refused(
    cad_runner: Any, tmp_path: Path, members: list[tuple[str, bytes | None, str | None]], said: str
) -> None:
    from workers.cad_types import CadError, CadRequest

    archive = _archive(tmp_path / "project.tar.gz", members)
    with pytest.raises(CadError) as caught:
        cad_runner.build(CadRequest(source=Path("main.py"), outdir=tmp_path / "out", project=archive))
    assert caught.value.kind == "entry" and said in caught.value.message, caught.value.message
    assert not (tmp_path / "outside.py").exists() and not (tmp_path.parent / "outside.py").exists()


def test_a_project_archive_of_plain_files_builds(cad_runner: Any, tmp_path: Path) -> None:
    from workers.cad_types import CadRequest

    members = [
        ("pkg/__init__.py", b"SIZE = 7\n", None),
        ("main.py", b"from pkg import SIZE\n" + GOOD_BYTES, None),
    ]
    archive = _archive(tmp_path / "project.tar.gz", members)
    result = cad_runner.build(CadRequest(source=Path("main.py"), outdir=tmp_path / "out", project=archive))
    assert result.volume > 0
