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

`probe()` tries every layer in a throwaway process and says which hold; a worker refuses CAD work
unless both the network and the file system are walled off (`FARM_CAD_SANDBOX=off` overrides).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import platform
import resource
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

LAYERS = ("identity", "userns", "netns", "mountns", "pidns", "landlock", "seccomp")
# What FARM_CAD_SANDBOX_DISABLE may force off.
SWITCHES = ("identity", "namespaces", "landlock", "seccomp")
UID_BASE = 1_900_000_000  # builds run as UID_BASE + pid: unused by any distribution, unique while alive
INNER_ID = 1000  # who the build is inside its user namespace
ROOT_DIR = ".sandbox-root"  # in the build's work folder: the mount point of its new root

_libc = ctypes.CDLL(None, use_errno=True)

# <linux/sched.h>, <sys/mount.h>, <linux/prctl.h>
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
CLONE_NEWCGROUP, CLONE_NEWTIME = 0x02000000, 0x00000080
NAMESPACE_FLAGS = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER = 1, 4, 24, 36
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 38, 22, 47, 4
SECCOMP_MODE_FILTER = 2
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


class SandboxError(RuntimeError):
    """A layer that should have held could not be set up; the build must not run."""


class Unavailable(RuntimeError):
    """This host cannot wall builds off from the network and the file system."""

    def __init__(self, report: Report) -> None:
        missing = [
            w
            for w, ok in (("network", report.network_isolated), ("files", report.filesystem_isolated))
            if not ok
        ]
        lines = [
            f"  {layer.name:9} {'on ' if layer.active else 'off'}  {layer.detail}" for layer in report.layers
        ]
        super().__init__(
            f"refusing CAD work: builds would not be isolated from the {' and '.join(missing)}.\n"
            + "\n".join(lines)
            + "\nRun `farm worker --check-sandbox` for details; set FARM_CAD_SANDBOX=off only if every design"
            " this worker builds is trusted."
        )
        self.report = report


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
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
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
    if _libc.unshare(flags) != 0:
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
    _prctl(PR_SET_DUMPABLE, 0)
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
    _prctl(PR_SET_DUMPABLE, 0)
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
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    go_read, go_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(go_write)
        _die_with_parent()
        with contextlib.suppress(OSError):
            os.read(go_read, 1)  # until this process is undumpable
        os.close(go_read)
        return
    _prctl(PR_SET_DUMPABLE, 0)

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
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


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
    if _libc.pivot_root(str(root).encode(), str(old).encode()) != 0:
        _raise("pivot_root")
    os.chdir("/")
    if _libc.umount2(b"/.old", MNT_DETACH) != 0:
        _raise("umount the host's root")
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
    if _libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        _raise(f"mount {target}")


# --- capabilities, Landlock, seccomp


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
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() == errno.EINVAL:
            break  # past the last capability this kernel knows
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)


def _clear_capabilities() -> None:
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    if _libc.capset(ctypes.byref(header), data) != 0:
        _raise("capset")


def _restrict(policy: Policy, view: View, proc: bool) -> None:
    if policy.wants("landlock"):
        _landlock(view, proc)
    if policy.wants("seccomp"):
        _seccomp()


# Landlock (linux/landlock.h). Rights by ABI version: 1 the first 13, 2 REFER, 3 TRUNCATE, 5 IOCTL_DEV.
LL_EXECUTE, LL_WRITE_FILE, LL_READ_FILE, LL_READ_DIR = 1, 2, 4, 8
LL_MAKE_CHAR, LL_MAKE_BLOCK, LL_REFER, LL_TRUNCATE, LL_IOCTL_DEV = 1 << 6, 1 << 11, 1 << 13, 1 << 14, 1 << 15
LL_NET_BIND_TCP, LL_NET_CONNECT_TCP = 1, 2
LL_SCOPE_ABSTRACT_UNIX, LL_SCOPE_SIGNAL = 1, 2
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446


def landlock_abi() -> int:
    abi = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(abi, 0)


def _landlock_fs_rights(abi: int) -> int:
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= LL_REFER
    if abi >= 3:
        rights |= LL_TRUNCATE
    if abi >= 5:
        rights |= LL_IOCTL_DEV
    return rights


def _landlock(view: View, proc: bool) -> None:
    abi = landlock_abi()
    if abi < 1:
        raise SandboxError("Landlock is not available on this kernel")
    handled = _landlock_fs_rights(abi)
    attr = struct.pack(
        "=QQQ",
        handled,
        LL_NET_BIND_TCP | LL_NET_CONNECT_TCP if abi >= 4 else 0,
        LL_SCOPE_ABSTRACT_UNIX | LL_SCOPE_SIGNAL if abi >= 6 else 0,
    )
    size = 8 if abi < 4 else (16 if abi < 6 else 24)
    buf = ctypes.create_string_buffer(attr[:size], size)
    ruleset = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, buf, ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        _raise("landlock_create_ruleset")
    try:
        file_rights = LL_EXECUTE | LL_WRITE_FILE | LL_READ_FILE | (handled & (LL_TRUNCATE | LL_IOCTL_DEV))
        read_only = LL_EXECUTE | LL_READ_FILE | LL_READ_DIR
        writable = handled & ~(LL_MAKE_CHAR | LL_MAKE_BLOCK | LL_IOCTL_DEV)
        # Without a PID namespace, /proc shows the worker too: only the build's own entry is allowed.
        own = ["/proc", "/etc"] if proc else [f"/proc/{os.getpid()}"]
        rules = [(p, read_only) for p in [*view.read_only, *own]]
        rules += [(p, writable) for p in [*view.writable, *(["/tmp", "/dev/shm"] if proc else [])]]
        rules += [(f"/dev/{name}", file_rights & handled) for name in DEVICES]
        for path, rights in rules:
            _landlock_allow(ruleset, path, rights)
        if _libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, ctypes.c_uint32(0)) != 0:
            _raise("landlock_restrict_self")
    finally:
        os.close(ruleset)


def _landlock_allow(ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # not on this host: nothing to allow
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= LL_EXECUTE | LL_WRITE_FILE | LL_READ_FILE | LL_TRUNCATE | LL_IOCTL_DEV
        attr = ctypes.create_string_buffer(struct.pack("=Qi", rights, fd), 12)
        if _libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, ctypes.c_int(1), attr, ctypes.c_uint32(0)) != 0:
            _raise(f"landlock_add_rule {path}")
    finally:
        os.close(fd)


# seccomp: a BPF program over (arch, syscall number, args). Numbers per architecture.
_ARCHES: dict[str, tuple[int, dict[str, int]]] = {
    "x86_64": (
        0xC000003E,
        {
            "socket": 41,
            "ptrace": 101,
            "process_vm_readv": 310,
            "process_vm_writev": 311,
            "kcmp": 312,
            "unshare": 272,
            "setns": 308,
            "mount": 165,
            "umount2": 166,
            "pivot_root": 155,
            "chroot": 161,
            "bpf": 321,
            "perf_event_open": 298,
            "userfaultfd": 323,
            "keyctl": 250,
            "add_key": 248,
            "request_key": 249,
            "kexec_load": 246,
            "kexec_file_load": 320,
            "init_module": 175,
            "finit_module": 313,
            "delete_module": 176,
            "reboot": 169,
            "swapon": 167,
            "swapoff": 168,
            "acct": 163,
            "quotactl": 179,
            "syslog": 103,
            "clone": 56,
            "memfd_create": 319,
            "shmget": 29,
            "modify_ldt": 154,
            "ioprio_set": 251,
        },
    ),
    "aarch64": (
        0xC00000B7,
        {
            "socket": 198,
            "ptrace": 117,
            "process_vm_readv": 270,
            "process_vm_writev": 271,
            "kcmp": 272,
            "unshare": 97,
            "setns": 268,
            "mount": 40,
            "umount2": 39,
            "pivot_root": 41,
            "chroot": 51,
            "bpf": 280,
            "perf_event_open": 241,
            "userfaultfd": 282,
            "keyctl": 219,
            "add_key": 217,
            "request_key": 218,
            "kexec_load": 104,
            "kexec_file_load": 294,
            "init_module": 105,
            "finit_module": 273,
            "delete_module": 106,
            "reboot": 142,
            "swapon": 224,
            "swapoff": 225,
            "acct": 89,
            "quotactl": 60,
            "syslog": 116,
            "clone": 220,
            "memfd_create": 279,
            "shmget": 194,
            "ioprio_set": 30,
        },
    ),
}
# The same number on every architecture (the unified table since Linux 5.1).
_COMMON = {
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "mount_setattr": 442,
    "pidfd_getfd": 438,
    "open_tree_attr": 467,
}
# Calls newer than this filter are refused as unknown (ENOSYS) instead of allowed by default.
FIRST_UNKNOWN_SYSCALL = 468
_NO_NETWORK = ("socket",)  # socketpair stays: it reaches nothing outside the build
_DENIED = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "keyctl",
    "add_key",
    "request_key",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "syslog",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "open_tree_attr",
    # Shared memory escapes RLIMIT_AS: /tmp and /dev/shm are size-limited tmpfs instead.
    "memfd_create",
    "shmget",
    "modify_ldt",
    # Any process may raise its I/O class from idle to best effort: the worker's batch priority
    # (workers/priority.py) would not hold. Its nice value and policy need RLIMIT_NICE to undo.
    "ioprio_set",
)
SYS_CLONE3 = 435
RET_ALLOW, RET_KILL_PROCESS = 0x7FFF0000, 0x80000000
RET_ERRNO = 0x00050000
BPF_LD_W_ABS, BPF_JEQ, BPF_JSET, BPF_JGE, BPF_RET = 0x20, 0x15, 0x45, 0x35, 0x06


def seccomp_supported() -> bool:
    return platform.machine() in _ARCHES


def _seccomp() -> None:
    machine = platform.machine()
    if machine not in _ARCHES:
        raise SandboxError(f"no seccomp filter for {machine}")
    arch, numbers = _ARCHES[machine]
    numbers = {**numbers, **_COMMON}
    prog: list[tuple[int, int, int, int]] = [
        (BPF_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        (BPF_JEQ, 1, 0, arch),
        (BPF_RET, 0, 0, RET_KILL_PROCESS),
        (BPF_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
    ]
    if machine == "x86_64":  # the x32 ABI: same calls under other numbers
        prog += [(BPF_JGE, 0, 1, 0x40000000), (BPF_RET, 0, 0, RET_ERRNO | errno.ENOSYS)]
    # clone3's flags sit behind a pointer that BPF cannot read: ENOSYS makes glibc fall back to clone.
    prog += [(BPF_JEQ, 0, 1, SYS_CLONE3), (BPF_RET, 0, 0, RET_ERRNO | errno.ENOSYS)]
    for name in _NO_NETWORK:
        prog += [(BPF_JEQ, 0, 1, numbers[name]), (BPF_RET, 0, 0, RET_ERRNO | errno.EACCES)]
    prog += [(BPF_JGE, 0, 1, FIRST_UNKNOWN_SYSCALL), (BPF_RET, 0, 0, RET_ERRNO | errno.ENOSYS)]
    for name in _DENIED:
        if name in numbers:  # modify_ldt exists on x86 only
            prog += [(BPF_JEQ, 0, 1, numbers[name]), (BPF_RET, 0, 0, RET_ERRNO | errno.EPERM)]
    # clone with a namespace flag: a new user namespace would hand back capabilities.
    ns_flags = NAMESPACE_FLAGS | CLONE_NEWCGROUP | CLONE_NEWTIME
    prog += [
        (BPF_JEQ, 0, 3, numbers["clone"]),
        (BPF_LD_W_ABS, 0, 0, 16),  # the low half of args[0] (little-endian)
        (BPF_JSET, 0, 1, ns_flags),
        (BPF_RET, 0, 0, RET_ERRNO | errno.EPERM),
        (BPF_RET, 0, 0, RET_ALLOW),
    ]
    filters = b"".join(struct.pack("=HBBI", code, jt, jf, k) for code, jt, jf, k in prog)
    buf = ctypes.create_string_buffer(filters, len(filters))
    fprog = struct.pack("=HxxxxxxQ", len(prog), ctypes.addressof(buf))
    fprog_buf = ctypes.create_string_buffer(fprog, len(fprog))
    if _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, fprog_buf, 0, 0) != 0:
        _raise("seccomp")


# --- small helpers


def _prctl(option: int, value: int) -> None:
    if _libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0) != 0:
        _raise(f"prctl({option})")


def _raise(what: str) -> None:
    code = ctypes.get_errno()
    raise SandboxError(f"{what}: {os.strerror(code)}")


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
    return _libc.mount(b"tmpfs", str(path).encode(), b"tmpfs", flags, data) == 0


def unmount(path: Path) -> None:
    _libc.umount2(str(path).encode(), MNT_DETACH)


# --------------------------------------------------------------------------------------------------
# What a build may see (computed in the parent, which knows the paths)


def read_only_paths(extra: Iterable[Path | str] = ()) -> list[str]:
    """The system, the Python installation and our own `workers` package, minus what nests."""
    import workers

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


# --------------------------------------------------------------------------------------------------
# Probing the host: which layers hold here


@dataclass
class Layer:
    name: str
    active: bool
    detail: str


@dataclass
class Report:
    enabled: bool
    layers: list[Layer]
    network_isolated: bool
    filesystem_isolated: bool

    @property
    def usable(self) -> bool:
        """Whether a worker may take CAD work: isolated, or the sandbox was turned off on purpose."""
        return not self.enabled or (self.network_isolated and self.filesystem_isolated)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "usable": self.usable}


def probe(policy: Policy, timeout: float = 30.0) -> Report:
    """Enter the sandbox in a fresh Python process and try, from inside, to get past each wall."""
    if not policy.enabled:
        return Report(False, [Layer(n, False, "FARM_CAD_SANDBOX=off") for n in LAYERS], False, False)
    found: dict[str, Any] = {}
    failure = ""
    with tempfile.TemporaryDirectory(prefix="cad-sandbox-probe-") as tmp:
        workdir, canary = Path(tmp) / "build", Path(tmp) / "canary"
        workdir.mkdir()
        canary.mkdir()
        (canary / "secret").write_text("the probe must not read this")
        os.chmod(tmp, 0o755)  # as root the build's uid must reach its folder, as a real build can
        request = {
            "policy": asdict(policy),
            "workdir": str(workdir),
            "canary": str(canary),
            "read_only": read_only_paths(),
        }
        try:
            out = subprocess.run(
                [sys.executable, "-m", "workers.sandbox"],
                input=json.dumps(request),
                capture_output=True,
                text=True,
                timeout=timeout,
                env={k: v for k, v in os.environ.items() if k in ("PATH", "LANG")},
            )
            lines = out.stdout.strip().splitlines()
            found = json.loads(lines[-1]) if lines else {}
            failure = out.stderr.strip()[-500:]
        except (subprocess.TimeoutExpired, ValueError) as error:
            failure = str(error)
    layers = [
        Layer(n, bool(found.get(n, {}).get("active")), str(found.get(n, {}).get("detail", "not tried")))
        for n in LAYERS
    ]
    if not found:
        layers.append(Layer("probe", False, f"the probe process failed: {failure or 'no output'}"))
    active = {layer.name for layer in layers if layer.active}
    return Report(
        True, layers, "netns" in active or "seccomp" in active, "mountns" in active or "landlock" in active
    )


def _probe_child(request: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Runs in the probe process: enter the sandbox, then try to get past each layer."""
    policy = Policy.from_dict(request["policy"])
    view = _probe_view(request)
    as_root = os.geteuid() == 0
    host = {kind: _ns_id(kind) for kind in ("user", "net", "mnt", "pid")}
    parent = os.getpid()
    try:
        enter(policy, view)
    except (SandboxError, OSError) as error:
        return {"identity": {"active": False, "detail": f"could not enter the sandbox: {error}"}}
    status = _status()
    ns = {kind: _ns_id(kind) for kind in host}
    moved = {kind: ns[kind] is not None and ns[kind] != host[kind] for kind in host}
    canary_hidden = not _readable(Path(request["canary"]) / "secret")
    off = "forced off" if not policy.wants("namespaces") else "not allowed on this host"
    results = _identity_results(policy, status, as_root, moved["user"], off)
    results["netns"] = {"active": moved["net"], "detail": "no network interfaces" if moved["net"] else off}
    results["mountns"] = {
        "active": moved["mnt"] and canary_hidden,
        "detail": "a root of its own: the installation read-only, its folders writable"
        if moved["mnt"]
        else off,
    }
    pid_hidden = moved["pid"] and not os.path.exists(f"/proc/{parent}")
    results["pidns"] = {"active": pid_hidden, "detail": "its own PIDs and /proc" if pid_hidden else off}
    results["landlock"] = _landlock_result(policy, status, canary_hidden)
    results["seccomp"] = _seccomp_result(policy, status)
    return results


def _probe_view(request: dict[str, Any]) -> View:
    """The probe's folders, made as a build's are: out/ (its cwd) and tmp/ in the scratch folder."""
    workdir = request["workdir"]
    out_dir = os.path.join(workdir, "out")
    os.mkdir(out_dir)
    tmp_dir = os.path.join(workdir, "tmp")
    os.mkdir(tmp_dir)
    return View(read_only=request["read_only"], writable=[out_dir, tmp_dir], cwd=out_dir, scratch=workdir)


def _identity_results(
    policy: Policy, status: dict[str, str], as_root: bool, own_userns: bool, off: str
) -> dict[str, dict[str, Any]]:
    """The "identity" and "userns" layers: as root, a dropped uid; otherwise a user namespace."""
    if as_root:
        dropped = policy.wants("identity") and os.getuid() != 0 and status.get("CapEff", "").strip("0") == ""
        own = "a uid of its own per build, no groups, no capabilities"
        return {
            "identity": {"active": dropped, "detail": own if dropped else "runs as root"},
            "userns": {"active": False, "detail": "not needed: root makes the namespaces, then drops"},
        }
    return {
        "identity": {"active": True, "detail": f"the worker's uid {os.getuid()}, no capabilities"},
        "userns": {"active": own_userns, "detail": "its own user namespace" if own_userns else off},
    }


def _landlock_result(policy: Policy, status: dict[str, str], canary_hidden: bool) -> dict[str, Any]:
    abi = landlock_abi()
    if not policy.wants("landlock"):
        detail = "forced off"
    elif abi < 1:
        detail = "not in this kernel"
    else:
        detail = f"ABI {abi}: files" + (", TCP" if abi >= 4 else "") + (", signals" if abi >= 6 else "")
    held = policy.wants("landlock") and abi > 0 and status.get("NoNewPrivs") == "1" and canary_hidden
    return {"active": held, "detail": detail}


def _seccomp_result(policy: Policy, status: dict[str, str]) -> dict[str, Any]:
    if not policy.wants("seccomp"):
        detail = "forced off"
    elif not seccomp_supported():
        detail = f"no filter for {platform.machine()}"
    else:
        detail = "no sockets, ptrace, mounts, namespaces or io_uring"
    held = policy.wants("seccomp") and status.get("Seccomp") == "2" and _socket_refused()
    return {"active": held, "detail": detail}


def _readable(path: Path) -> bool:
    try:
        path.read_bytes()
    except OSError:
        return False
    return True


def _socket_refused() -> bool:
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
    except OSError:
        return True
    return False


def _status() -> dict[str, str]:
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def _ns_id(kind: str) -> str | None:
    try:
        return os.readlink(f"/proc/self/ns/{kind}")
    except OSError:
        return None


def _probe_main() -> None:
    request = json.loads(sys.stdin.read())
    results = _probe_child(request)
    sys.stdout.write(json.dumps(results) + "\n")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    _probe_main()
