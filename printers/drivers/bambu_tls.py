"""TLS as Bambu printers speak it: TLS 1.2 without a CA (their certificates are self-signed), an
optional certificate pin checked inside the handshake, and the implicit FTPS of port 990."""

from __future__ import annotations

import ftplib
import hashlib
import socket
import ssl
from typing import Any


def tls_context(cert_sha256: str | None) -> _PinnedContext:
    """TLS 1.2 (X1C/H2D refuse anything else), no CA check; optional fingerprint pin."""
    ctx = _PinnedContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.pin = cert_sha256.replace(":", "").lower() if cert_sha256 else None
    return ctx


class _PinnedSocket(ssl.SSLSocket):
    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        pin = getattr(self.context, "pin", None)
        if pin is None:
            return
        der = self.getpeercert(binary_form=True) or b""
        seen = hashlib.sha256(der).hexdigest()
        if seen != pin:
            message = f"the printer's TLS certificate has SHA-256 {seen}, not the pinned {pin}"
            if isinstance(self.context, _PinnedContext):
                self.context.pin_error = message
            raise ssl.SSLCertVerificationError(message)


class _PinnedContext(ssl.SSLContext):
    """Checks the pin in the handshake itself, before any password goes over the connection."""

    sslsocket_class = _PinnedSocket
    pin: str | None = None
    pin_error: str | None = None


class ImplicitFTPS(ftplib.FTP_TLS):
    """FTPS with TLS from the first byte, and the data channel resuming the control session.

    vsFTPd on the printer requires session reuse (`require_ssl_reuse`); plain FTP_TLS does not
    resume, and the printer then drops the data connection."""

    def connect(
        self, host: str = "", port: int = 0, timeout: float = -999, source_address: Any = None
    ) -> str:
        self.host, self.port = host, port
        if timeout != -999:
            self.timeout = timeout
        raw = socket.create_connection((host, port), self.timeout)
        self.af = raw.family
        self.sock = self.context.wrap_socket(raw, server_hostname=host)
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome

    def ntransfercmd(self, cmd: str, rest: int | str | None = None) -> tuple[socket.socket, int | None]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:  # type: ignore[attr-defined]  # FTP_TLS's own PROT P flag, private in typeshed
            session = self.sock.session  # type: ignore[union-attr]  # connect() made it an SSLSocket
            conn = self.context.wrap_socket(conn, server_hostname=self.host, session=session)
        return conn, size
