"""The Bambu printer's implicit FTPS server (protocols.md §A.8): TLS from the first byte, vsFTPd's
replies, a data connection that must resume the control connection's TLS session, and a 226 only
once the file is complete on disk."""

from __future__ import annotations

import contextlib
import socket
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from printers.emulators.bambu_printer import CHUNK_BYTES, USERNAME, CommandError
from printers.emulators.tls_server import TlsThreadServer

if TYPE_CHECKING:  # the emulator owns the server; only its type is needed here
    from printers.emulators.bambu import BambuEmulator


class FtpsServer(TlsThreadServer):
    """Implicit FTPS (vsFTPd replies), one thread per control connection, passive mode only."""

    thread_name = "bambu-ftps"

    def __init__(self, emulator: BambuEmulator, context: ssl.SSLContext, port: int) -> None:
        super().__init__(emulator.host, port, context)
        self.emu = emulator

    def handle(self, sock: ssl.SSLSocket) -> None:
        FtpSession(self, sock).run()


class FtpSession:
    def __init__(self, server: FtpsServer, sock: ssl.SSLSocket) -> None:
        self.server = server
        self.sock = sock
        self.file = sock.makefile("rb")
        self.user: str | None = None
        self.logged_in = False
        self.prot_private = False
        self.passive: socket.socket | None = None

    def reply(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\r\n")

    def run(self) -> None:
        self.reply("220 (vsFTPd 3.0.3)")
        try:
            while line := self.file.readline(4096):
                verb, _, arg = line.decode("utf-8", "replace").strip().partition(" ")
                if not self.command(verb.upper(), arg):
                    return
        finally:
            if self.passive is not None:
                self.passive.close()

    def command(self, verb: str, arg: str) -> bool:
        """Answer one command; False ends the session."""
        if verb == "QUIT":
            self.reply("221 Goodbye.")
            return False
        if verb == "USER":
            self.user = arg
            self.reply("331 Please specify the password.")
        elif verb == "PASS":
            self.logged_in = self.user == USERNAME and arg == self.server.emu.access_code
            self.reply("230 Login successful." if self.logged_in else "530 Login incorrect.")
        elif not self.logged_in:
            self.reply("530 Please login with USER and PASS.")
        else:
            handler = getattr(self, f"_{verb.lower()}", None)
            if handler is None:
                self.reply("500 Unknown command.")
            else:
                handler(arg)
        return True

    # -- session settings

    def _pbsz(self, _: str) -> None:
        self.reply("200 PBSZ set to 0.")

    def _prot(self, arg: str) -> None:
        self.prot_private = arg.upper() == "P"
        self.reply("200 PROT now Private." if self.prot_private else "200 PROT now Clear.")

    def _type(self, arg: str) -> None:
        mode = "ASCII" if arg.upper().startswith("A") else "Binary"
        self.reply(f"200 Switching to {mode} mode.")

    def _syst(self, _: str) -> None:
        self.reply("215 UNIX Type: L8")

    def _noop(self, _: str) -> None:
        self.reply("200 NOOP ok.")

    def _pwd(self, _: str) -> None:
        self.reply('257 "/" is the current directory')

    def _cwd(self, arg: str) -> None:
        if arg in ("/", "."):
            self.reply("250 Directory successfully changed.")
        else:
            self.reply("550 Failed to change directory.")

    def _pasv(self, _: str) -> None:
        port = self._listen()
        host = self.sock.getsockname()[0].replace(".", ",")
        self.reply(f"227 Entering Passive Mode ({host},{port >> 8},{port & 0xFF}).")

    def _epsv(self, _: str) -> None:
        self.reply(f"229 Entering Extended Passive Mode (|||{self._listen()}|)")

    def _listen(self) -> int:
        if self.passive is not None:
            self.passive.close()
        self.passive = socket.create_server((self.sock.getsockname()[0], 0))
        self.passive.settimeout(10.0)
        return int(self.passive.getsockname()[1])

    # -- files

    def _path(self, arg: str) -> Path | None:
        try:
            return self.server.emu.printer.local_path(arg)
        except CommandError:
            return None

    def _size(self, arg: str) -> None:
        path = self._path(arg)
        if path is None or not path.is_file():
            self.reply("550 Could not get file size.")
        else:
            self.reply(f"213 {path.stat().st_size}")

    def _dele(self, arg: str) -> None:
        path = self._path(arg)
        if path is None or not path.is_file():
            self.reply("550 Delete operation failed.")
        else:
            path.unlink()
            self.reply("250 Delete operation successful.")

    def _stor(self, arg: str) -> None:
        path = self._path(arg)
        if path is None or not path.parent.is_dir() or not arg.strip("/"):
            self.reply("553 Could not create file.")
            return
        data = self._data_connection("150 Ok to send data.")
        if data is None:
            return
        tmp = path.with_name(f".{path.name}.part")
        self.server.emu.printer.overwrite(path)
        cut_after, self.server.emu.cut_upload_after = self.server.emu.cut_upload_after, None
        try:
            with data, tmp.open("wb") as out:
                while chunk := data.recv(CHUNK_BYTES):
                    out.write(chunk)
                    if cut_after is not None and out.tell() >= cut_after:  # abort_next_upload
                        data.shutdown(socket.SHUT_RDWR)
                        raise ConnectionAbortedError("upload cut by the fault switch")
                _close_notify(data)
            tmp.replace(path)  # complete on disk before the 226 (§A.8: 0500_C010 otherwise)
        except (OSError, ssl.SSLError):
            tmp.unlink(missing_ok=True)
            self.reply("426 Failure reading network stream.")
            return
        self.server.emu.printer.received.append(path)
        self.reply("226 Transfer complete.")

    def _list(self, _: str, *, names_only: bool = False) -> None:
        data = self._data_connection("150 Here comes the directory listing.")
        if data is None:
            return
        root = self.server.emu.printer.root
        lines = []
        for p in sorted(root.iterdir()):
            if p.name.startswith("."):
                continue
            if names_only:
                lines.append(p.name)
            else:
                kind, size = ("d", 0) if p.is_dir() else ("-", p.stat().st_size)
                lines.append(f"{kind}rw-r--r--    1 0        0        {size:>10} Jan 01 00:00 {p.name}")
        with data:
            data.sendall("".join(f"{line}\r\n" for line in lines).encode())
            _close_notify(data)
        self.reply("226 Directory send OK.")

    def _nlst(self, arg: str) -> None:
        self._list(arg, names_only=True)

    def _data_connection(self, preliminary: str) -> socket.socket | None:
        """Accept the passive connection and, under PROT P, require TLS session reuse like vsFTPd."""
        if self.passive is None:
            self.reply("425 Use PORT or PASV first.")
            return None
        listener, self.passive = self.passive, None
        self.reply(preliminary)
        try:
            with listener:
                conn, _ = listener.accept()
        except OSError:
            self.reply("425 Failed to establish connection.")
            return None
        conn.settimeout(30.0)
        if not self.prot_private:
            return conn
        try:
            tls = self.server.context.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError):
            conn.close()
            self.reply("425 Failed to establish connection.")
            return None
        if not tls.session_reused:
            tls.close()
            self.reply("522 SSL connection failed: session reuse required")
            return None
        return tls


def _close_notify(data: socket.socket) -> None:
    """End TLS cleanly: ftplib's clients unwrap() the data channel and wait for our close_notify."""
    if isinstance(data, ssl.SSLSocket):
        with contextlib.suppress(OSError, ssl.SSLError, ValueError):
            data.unwrap()
