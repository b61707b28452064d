"""The kernel's own rules for a CAD build, applied last by `sandbox.enter`: Landlock (the files it
may touch, no TCP bind or connect, no signals or abstract sockets out of the build) and a seccomp
filter (the system calls it may not make), with the per-architecture syscall tables it needs."""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat
import struct
from collections.abc import Sequence

from workers.sandbox_libc import (
    CLONE_NEWCGROUP,
    CLONE_NEWTIME,
    NAMESPACE_FLAGS,
    PR_SET_SECCOMP,
    SECCOMP_MODE_FILTER,
    SandboxError,
    libc,
    raise_errno,
)

# Landlock (linux/landlock.h). Rights by ABI version: 1 the first 13, 2 REFER, 3 TRUNCATE, 5 IOCTL_DEV.
LL_EXECUTE, LL_WRITE_FILE, LL_READ_FILE, LL_READ_DIR = 1, 2, 4, 8
LL_MAKE_CHAR, LL_MAKE_BLOCK, LL_REFER, LL_TRUNCATE, LL_IOCTL_DEV = 1 << 6, 1 << 11, 1 << 13, 1 << 14, 1 << 15
LL_NET_BIND_TCP, LL_NET_CONNECT_TCP = 1, 2
LL_SCOPE_ABSTRACT_UNIX, LL_SCOPE_SIGNAL = 1, 2
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446


def landlock_abi() -> int:
    abi = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
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


def landlock(read_only: Sequence[str], writable: Sequence[str], devices: Sequence[str], proc: bool) -> None:
    """Allow only these paths (same path inside), the named /dev devices, and with `proc` (a PID
    namespace of the build's own) /proc, /etc, /tmp and /dev/shm."""
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
    ruleset = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, buf, ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        raise_errno("landlock_create_ruleset")
    try:
        file_rights = LL_EXECUTE | LL_WRITE_FILE | LL_READ_FILE | (handled & (LL_TRUNCATE | LL_IOCTL_DEV))
        read_only_rights = LL_EXECUTE | LL_READ_FILE | LL_READ_DIR
        writable_rights = handled & ~(LL_MAKE_CHAR | LL_MAKE_BLOCK | LL_IOCTL_DEV)
        # Without a PID namespace, /proc shows the worker too: only the build's own entry is allowed.
        own = ["/proc", "/etc"] if proc else [f"/proc/{os.getpid()}"]
        rules = [(p, read_only_rights) for p in [*read_only, *own]]
        rules += [(p, writable_rights) for p in [*writable, *(["/tmp", "/dev/shm"] if proc else [])]]
        rules += [(f"/dev/{name}", file_rights & handled) for name in devices]
        for path, rights in rules:
            _landlock_allow(ruleset, path, rights)
        if libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, ctypes.c_uint32(0)) != 0:
            raise_errno("landlock_restrict_self")
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
        if libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, ctypes.c_int(1), attr, ctypes.c_uint32(0)) != 0:
            raise_errno(f"landlock_add_rule {path}")
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


def seccomp() -> None:
    """Install the filter: refused calls fail with EPERM, EACCES or ENOSYS; another ABI is killed."""
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
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, fprog_buf, 0, 0) != 0:
        raise_errno("seccomp")
