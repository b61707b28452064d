"""Probing the host: which walls of the CAD sandbox hold here, tried from inside a throwaway
process (`python -m workers.sandbox_probe`), and the refusal a worker gives when they do not."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from workers.sandbox import LAYERS, Policy, View, enter, read_only_paths
from workers.sandbox_filters import landlock_abi, seccomp_supported
from workers.sandbox_libc import SandboxError


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
                [sys.executable, "-m", "workers.sandbox_probe"],
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
