"""The walls around one CAD build: who it runs as, what it sees, what it may call.

Applied inside the child forked from the warm fork server, just before the user's code runs, in
layers built from what the kernel offers without privileges:

- identity: as root, each build runs as a uid of its own (`uid_base + pid`) with no groups, so it
  has no rights to the worker's files, cannot signal other builds, and RLIMIT_NPROC contains a fork
  bomb (root is exempt from it);
- namespaces: user, network (no interface but a downed loopback), mount (a root of its own: the
  Python installation, requirement environment and project read-only, its build folder and a
  private /tmp writable, nothing else), PID (its own /proc; the worker is not there to see or
  signal), IPC and UTS;
- landlock: the same file-system view enforced by the kernel's access control, plus no TCP bind or
  connect (ABI 4) and no signals or abstract sockets out of the build (ABI 6): the file-system wall
  where namespaces are blocked (Docker's default seccomp profile);
- seccomp: no socket() at all (network of any family), no ptrace, no mounts, no new namespaces,
  no io_uring, no kernel keyrings, modules or BPF, no raising its I/O priority;
- no_new_privs and an empty capability set, always.

Landlock and seccomp are in `sandbox_filters`, the libc calls and constants in `sandbox_libc`.

`sandbox_probe.probe()` tries every layer in a throwaway process and says which hold; a worker
refuses CAD work unless both the network and the file system are walled off (`FARM_CAD_SANDBOX=off`
overrides).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import resource
import signal
import struct
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import workers
from workers.sandbox_filters import landlock, seccomp
from workers.sandbox_libc import (
    CLONE_NEWUSER,
    MNT_DETACH,
    MS_BIND,
    MS_NOATIME,
    MS_NODEV,
    MS_NODIRATIME,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_RELATIME,
    MS_REMOUNT,
    NAMESPACE_FLAGS,
    PR_CAP_AMBIENT,
    PR_CAP_AMBIENT_CLEAR_ALL,
    PR_CAPBSET_DROP,
    PR_SET_CHILD_SUBREAPER,
    PR_SET_DUMPABLE,
    PR_SET_NO_NEW_PRIVS,
    PR_SET_PDEATHSIG,
    libc,
    prctl,
    raise_errno,
)

LAYERS = ("identity", "userns", "netns", "mountns", "pidns", "landlock", "seccomp")
# What FARM_CAD_SANDBOX_DISABLE may force off.
SWITCHES = ("identity", "namespaces", "landlock", "seccomp")
UID_BASE = 1_900_000_000  # builds run as UID_BASE + pid: unused by any distribution, unique while alive
INNER_ID = 1000  # who the build is inside its user namespace
ROOT_DIR = ".sandbox-root"  # in the build's work folder: the mount point of its new root

# os.statvfs flags that a remount inside a user namespace must keep (the kernel locks them).
_LOCKED_FLAGS = {
    os.ST_NOSUID: MS_NOSUID,
    os.ST_NODEV: MS_NODEV,
    os.ST_NOEXEC: MS_NOEXEC,
    os.ST_NOATIME: MS_NOATIME,
    os.ST_NODIRATIME: MS_NODIRATIME,
    os.ST_RELATIME: MS_RELATIME,
}
DEVICES = ("null", "zero", "full", "random", "urandom")
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "nsswitch.conf", "fonts", "mime.types")
SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin")


@dataclass(frozen=True)
class Policy:
    """How a worker sandboxes builds. Plain data: it travels to the child in the build's job."""

    enabled: bool = True
    disabled: tuple[str, ...] = ()  # layers forced off (FARM_CAD_SANDBOX_DISABLE), for hosts and tests
    uid_base: int = UID_BASE
    procs: int = 128  # processes and threads a build may have (RLIMIT_NPROC, over its own uid)
    tmp_mb: int = 512  # the private /tmp, in memory

    def wants(self, layer: str) -> bool:
        """Whether to try a switch of SWITCHES."""
        return self.enabled and layer not in self.disabled

    @classmethod
    def from_settings(cls, mode: str, disable: str) -> Policy:
        """FARM_CAD_SANDBOX (on | off) and FARM_CAD_SANDBOX_DISABLE (comma-separated SWITCHES)."""
        disabled = tuple(name.strip() for name in disable.split(",") if name.strip())
        unknown = sorted(set(disabled) - set(SWITCHES))
        if unknown:
            raise ValueError(
                f"FARM_CAD_SANDBOX_DISABLE: unknown layer(s) {', '.join(unknown)}; "
                f"choose from {', '.join(SWITCHES)}"
            )
        return cls(enabled=mode != "off", disabled=disabled)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Policy:
        return cls(**{**data, "disabled": tuple(data.get("disabled", ()))})


@dataclass
class View:
    """What a build sees of the file system: read-only and writable paths (same path inside).

    The last writable path is the build's temporary folder (TMPDIR), used only where there is no
    mount namespace to give it a /tmp of its own. `scratch` is the build's private folder, where the
    new root's mount point is made.
    """

    read_only: list[str] = field(default_factory=list)
    writable: list[str] = field(default_factory=list)
    cwd: str = "/"
    scratch: str = "/tmp"


# --------------------------------------------------------------------------------------------------
# Entering the sandbox (in the build child)


def enter(policy: Policy, view: View) -> None:
    """Wall this process in; returns in the process that should run the build.

    With namespaces this forks twice (an init for the new PID namespace, then the build under it);
    the first two processes never return: they wait and pass the build's exit status up, so the
    parent sees the same exit codes and signals as without a sandbox.
    """
    if not policy.enabled:
        return
    sys.dont_write_bytecode = True  # the installation is read-only; no point trying
    as_root = os.geteuid() == 0
    build_uid = policy.uid_base + os.getpid() if as_root and policy.wants("identity") else None
    if build_uid is not None:
        for path in view.writable:
            os.chown(path, build_uid, build_uid, follow_symlinks=False)
        _set_nproc(policy.procs)  # over a uid no one else has: this build's own processes
    # Not root: the build shares the worker's uid, and cad_child's RLIMIT_NPROC counts its tasks too.
    namespaced = policy.wants("namespaces") and _unshare(as_root)
    status_fd = -1
    if namespaced:
        status_fd = _fork_into_pid_namespace()
        _build_root(view, policy)  # as root, or as the worker with a user namespace's capabilities
        os.environ["TMPDIR"] = "/tmp"
    else:
        os.environ["TMPDIR"] = view.writable[-1]  # the build's own tmp/ folder
    _drop_bounding_set()
    if build_uid is not None:
        os.setgroups([])
        os.setresgid(build_uid, build_uid, build_uid)
        os.setresuid(build_uid, build_uid, build_uid)
    _die_with_parent()  # a change of uid clears it
    _clear_capabilities()
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    if not namespaced and build_uid is None:
        _fork_under_reaper()  # neither a PID namespace nor a uid of its own finds what it leaves
    _restrict(policy, view, proc=namespaced)
    if namespaced:
        _fork_build_under_init(status_fd)
    os.environ["HOME"] = os.environ["TMPDIR"]
    tempfile.tempdir = None  # computed again from TMPDIR on first use
    os.chdir(view.cwd)


def _unshare(as_root: bool) -> bool:
    """New namespaces. Root needs no user namespace: it drops to the build's uid after the mounts."""
    uid, gid = os.geteuid(), os.getegid()
    flags = NAMESPACE_FLAGS if not as_root else NAMESPACE_FLAGS & ~CLONE_NEWUSER
    if libc.unshare(flags) != 0:
        return False
    if not as_root:
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"{INNER_ID} {uid} 1")
        Path("/proc/self/gid_map").write_text(f"{INNER_ID} {gid} 1")
    return True


def _fork_into_pid_namespace() -> int:
    """Fork the new PID namespace's init; this process then only passes on how the build ended.

    Returns, in init, the pipe on which init reports the build's wait status.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _die_with_parent()
        os.set_inheritable(write_end, False)
        return write_end
    os.close(write_end)
    prctl(PR_SET_DUMPABLE, 0)
    # This process keeps its capabilities: its death must be able to deliver init's parent-death
    # signal, which the kernel checks like a kill() from it, and init runs as another uid.
    data = b""
    with contextlib.suppress(OSError):
        data = os.read(read_end, 4)
    _, status = os.waitpid(pid, 0)
    if len(data) == 4:
        status = struct.unpack("i", data)[0]
    _exit_like(status)


def _fork_build_under_init(status_fd: int) -> None:
    """In the namespace's init: fork the build, reap whatever it leaves, report its status."""
    go_read, go_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(status_fd)
        os.close(go_write)
        _die_with_parent()
        # Wait until init is undumpable: a build scheduled first could read its environment.
        with contextlib.suppress(OSError):
            os.read(go_read, 1)
        os.close(go_read)
        return
    # Undumpable: the build, same uid and one PID away, cannot read init's memory or environment.
    prctl(PR_SET_DUMPABLE, 0)
    os.close(go_read)
    os.close(go_write)  # the build's read returns at end of file
    status = 0
    while True:
        try:
            reaped, st = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if reaped == pid:
            status = st
            break
    with contextlib.suppress(OSError):
        os.write(status_fd, struct.pack("i", status))
    os._exit(0)  # init's exit kills whatever the build left running in the namespace


def _fork_under_reaper() -> None:
    """Without a PID namespace and as the worker's own uid, a build's process that starts a session
    of its own escapes both the runner's group kill and its sweep by uid. This process stays behind
    as the build's subreaper instead: whatever the build leaves running is reparented here, and is
    killed when the build ends, or when the runner ends it early (SIGTERM, before its group kill).

    Forked before Landlock: the build's domain is nested in none of this process's, so with
    Landlock's signal scope (ABI 6) the build cannot signal it either.
    """
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    go_read, go_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(go_write)
        _die_with_parent()
        with contextlib.suppress(OSError):
            os.read(go_read, 1)  # until this process is undumpable
        os.close(go_read)
        return
    prctl(PR_SET_DUMPABLE, 0)

    def stop(signum: int, frame: Any) -> None:
        _kill_children()
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    os.close(go_read)
    os.close(go_write)
    status = 0
    while True:
        try:
            reaped, st = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if reaped == pid:
            status = st
            break
    _kill_children()
    _exit_like(status)


def _kill_children() -> None:
    """SIGKILL this process's children, and what they leave (orphans come here), until none is left."""
    me = str(os.getpid())
    while True:
        for stat_file in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                if stat_file.read_text().rpartition(")")[2].split()[1] == me:
                    os.kill(int(stat_file.parent.name), signal.SIGKILL)
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _exit_like(status: int) -> NoReturn:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        with contextlib.suppress(OSError, ValueError):  # SIGKILL has no handler to reset
            signal.signal(sig, signal.SIG_DFL)
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


def _die_with_parent() -> None:
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


# --- the mount namespace: a root of the build's own


def _build_root(view: View, policy: Policy) -> None:
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    root = Path(view.scratch) / ROOT_DIR
    root.mkdir(exist_ok=True)
    _mount("tmpfs", str(root), "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=4m")
    # The last writable folder is the build's tmp/: here an in-memory /tmp takes its place.
    plan: list[tuple[str, str]] = [(p, "ro") for p in view.read_only] + [
        (p, "rw") for p in view.writable[:-1]
    ]
    plan += [("/tmp", "tmpfs"), ("/dev/shm", "tmpfs"), ("/proc", "proc"), ("/etc", "etc"), ("/dev", "dev")]
    for path, kind in sorted(plan, key=lambda item: (item[0].count("/"), item[0])):
        target = str(root) + path
        if kind == "tmpfs":
            os.makedirs(target, exist_ok=True)
            size = f"{policy.tmp_mb}m" if path == "/tmp" else "64m"
            _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,size={size}")
        elif kind == "proc":
            os.makedirs(target, exist_ok=True)
            _mount("proc", target, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        elif kind == "etc":
            _make_etc(Path(target))
        elif kind == "dev":
            os.makedirs(target, exist_ok=True)
            for name in DEVICES:
                _bind(f"/dev/{name}", f"{target}/{name}", read_only=False)
        else:
            _bind(path, target, read_only=kind == "ro")
    old = root / ".old"
    old.mkdir()
    if libc.pivot_root(str(root).encode(), str(old).encode()) != 0:
        raise_errno("pivot_root")
    os.chdir("/")
    if libc.umount2(b"/.old", MNT_DETACH) != 0:
        raise_errno("umount the host's root")
    os.rmdir("/.old")
    _mount("none", "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _bind(source: str, target: str, read_only: bool) -> None:
    if os.path.islink(source):  # /bin -> usr/bin on merged-/usr systems: keep it a link
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.symlink(os.readlink(source), target)
        return
    if not os.path.exists(source):
        return
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target):
            Path(target).touch()
    _mount(source, target, None, MS_BIND)
    locked = 0
    with contextlib.suppress(OSError):
        flags = os.statvfs(source).f_flag
        locked = sum(ms for st, ms in _LOCKED_FLAGS.items() if flags & st)
    extra = MS_RDONLY if read_only else 0
    _mount("none", target, None, MS_REMOUNT | MS_BIND | MS_NOSUID | locked | extra)


def _make_etc(etc: Path) -> None:
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "passwd").write_text(f"build:x:{INNER_ID}:{INNER_ID}:CAD build:/tmp:/usr/sbin/nologin\n")
    (etc / "group").write_text(f"build:x:{INNER_ID}:\n")
    (etc / "hostname").write_text("cad-build\n")
    for name in ETC_FILES:
        _bind(f"/etc/{name}", str(etc / name), read_only=True)


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    if libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        raise_errno(f"mount {target}")


# --- capabilities, then Landlock and seccomp (workers/sandbox_filters.py)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _drop_bounding_set() -> None:
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() == errno.EINVAL:
            break  # past the last capability this kernel knows
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)


def _clear_capabilities() -> None:
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    if libc.capset(ctypes.byref(header), data) != 0:
        raise_errno("capset")


def _restrict(policy: Policy, view: View, proc: bool) -> None:
    if policy.wants("landlock"):
        landlock(view.read_only, view.writable, DEVICES, proc)
    if policy.wants("seccomp"):
        seccomp()


def _set_nproc(limit: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NPROC)
    cap = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
    resource.setrlimit(resource.RLIMIT_NPROC, (cap, cap))


def mount_tmpfs(path: Path, size_mb: int, inodes: int = 10000) -> bool:
    """A size- and inode-limited tmpfs over `path`, where this process may mount (root); else False."""
    if os.geteuid() != 0:
        return False
    data = f"size={size_mb}m,nr_inodes={inodes},mode=0700".encode()
    flags = ctypes.c_ulong(MS_NOSUID | MS_NODEV)
    return libc.mount(b"tmpfs", str(path).encode(), b"tmpfs", flags, data) == 0


def unmount(path: Path) -> None:
    libc.umount2(str(path).encode(), MNT_DETACH)


# --------------------------------------------------------------------------------------------------
# What a build may see (computed in the parent, which knows the paths)


def read_only_paths(extra: Iterable[Path | str] = ()) -> list[str]:
    """The system, the Python installation and our own `workers` package, minus what nests."""
    candidates = [
        *SYSTEM_DIRS,
        sys.base_prefix,
        sys.prefix,
        sys.exec_prefix,
        str(Path(workers.__file__).parent),
    ]
    candidates += [str(p) for p in extra]
    return _outermost(os.path.abspath(p) for p in candidates if os.path.lexists(p))


def _outermost(paths: Iterable[str]) -> list[str]:
    kept: list[str] = []
    for path in sorted(set(paths), key=len):
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return kept
