"""PrusaLink's digest authentication as the Buddy firmware does it (RFC 2069, a 16-hex nonce of 32
random bits and a timestamp). The Prusa-Link (Raspberry Pi) differences are in prusalink_pi.py."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Literal
from urllib.request import parse_http_list, parse_keqv_list

USERNAME = "maker"
REALM = "Printer API"
AuthVerdict = Literal["ok", "stale", "denied"]


class DigestAuthority:
    """Buddy's digest scheme: RFC 2069 (no qop), nonce = 32 random bits + a timestamp, short-lived."""

    def __init__(self, password: str, nonce_lifetime_s: float) -> None:
        self._password = password
        self._lifetime_ms = int(nonce_lifetime_s * 1000)
        self._random = secrets.randbits(32) | 1  # the firmware treats 0 as "not initialised"
        self._epoch = time.monotonic()

    def _now_ms(self) -> int:
        # The firmware stamps seconds; milliseconds let tests use sub-second nonce lifetimes.
        return int((time.monotonic() - self._epoch) * 1000) & 0xFFFFFFFF

    def new_nonce(self) -> str:
        return f"{self._random:08x}{self._now_ms():08x}"

    def _nonce_valid(self, nonce: str) -> bool:
        if len(nonce) != 16 or int(nonce[:8], 16) != self._random:
            return False
        age_ms = (self._now_ms() - int(nonce[8:], 16)) & 0xFFFFFFFF
        return age_ms < self._lifetime_ms

    def _digest(self, method: str, uri: str, nonce: str) -> str:
        def md5(text: str) -> str:
            return hashlib.md5(text.encode()).hexdigest()

        return md5(f"{md5(f'{USERNAME}:{REALM}:{self._password}')}:{nonce}:{md5(f'{method}:{uri}')}")

    def check(self, method: str, uri: str, authorization: str | None, api_key: str | None) -> AuthVerdict:
        if api_key is not None:
            return "ok" if hmac.compare_digest(api_key.encode(), self._password.encode()) else "denied"
        scheme, _, params = (authorization or "").partition(" ")
        if scheme.lower() != "digest":
            return "denied"
        try:
            fields = parse_keqv_list(parse_http_list(params))
            nonce = fields["nonce"]
            int(nonce, 16)
        except (KeyError, ValueError):
            return "denied"
        # Like the firmware, the digest is computed over this request's own method and URI; the
        # username/realm/uri/algorithm fields the client sends are not consulted.
        if not hmac.compare_digest(fields.get("response", "").lower(), self._digest(method, uri, nonce)):
            return "denied"
        # A correct digest over an old nonce means the client knows the password: ask it to retry.
        return "ok" if self._nonce_valid(nonce) else "stale"
