"""Push hooks from GitHub, Gitea/Forgejo and GitLab: who signed it, what it says was pushed.

Each service proves a delivery its own way, as its documentation says:
- GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body, keyed with the secret>`;
- Gitea and Forgejo: `X-Gitea-Signature` (Forgejo also `X-Forgejo-Signature`): the same hex HMAC,
  no prefix;
- GitLab: `X-Gitlab-Token`: the secret itself (no signature: a captured request can be replayed
  with another body; use HTTPS).
Every comparison is constant-time (hmac.compare_digest). The signatures cover the body only, not
the delivery id, so a replay is recognised by either (farm/coordinator/models.py HookDelivery).
Nothing here touches the database or git: hook_runner.py does the work, api/hooks.py
the HTTP.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs

from farm.core.gitsource import BadGitSource, check_commit, check_ref

SERVICES = ("github", "gitea", "gitlab")
MAX_BODY = 25 << 20  # GitHub's own cap on a payload
ZERO = "0" * 40


class Refused(Exception):
    """The delivery is refused: `status` and a message for the service's delivery log."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Push:
    ref: str  # refs/heads/main or refs/tags/v1
    commit: str  # `after` (for a GitLab tag: checkout_sha, the commit)

    @property
    def branch(self) -> str | None:
        return self.ref.removeprefix("refs/heads/") if self.ref.startswith("refs/heads/") else None

    @property
    def tag(self) -> str | None:
        return self.ref.removeprefix("refs/tags/") if self.ref.startswith("refs/tags/") else None


def signature_header(service: str, headers: Mapping[str, str]) -> str | None:
    """The proof the service sent, or None."""
    if service == "github":
        return headers.get("x-hub-signature-256")
    if service == "gitea":
        return headers.get("x-gitea-signature") or headers.get("x-forgejo-signature")
    return headers.get("x-gitlab-token")


def missing_proof(service: str) -> str:
    header = {
        "github": "X-Hub-Signature-256",
        "gitea": "X-Gitea-Signature",
        "gitlab": "X-Gitlab-Token",
    }[service]
    field = "Secret token" if service == "gitlab" else "Secret"
    return f"no {header} header: set the webhook's {field} to the secret `farm projects add` printed"


def verify(service: str, secret: str, body: bytes, proof: str) -> bool:
    if service == "gitlab":
        return hmac.compare_digest(proof.encode(), secret.encode())
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    expected = f"sha256={digest}" if service == "github" else digest
    return hmac.compare_digest(proof.strip().encode(), expected.encode())


def sign(service: str, secret: str, body: bytes) -> str:
    """What the service would send (for tests and for `curl` by hand)."""
    if service == "gitlab":
        return secret
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}" if service == "github" else digest


def event(service: str, headers: Mapping[str, str]) -> str:
    """push, tag, ping, or the service's own name for another event."""
    if service == "github":
        name = headers.get("x-github-event", "")
        return {"push": "push", "ping": "ping"}.get(name, name or "unnamed")
    if service == "gitea":
        return headers.get("x-gitea-event") or headers.get("x-forgejo-event") or "unnamed"
    name = headers.get("x-gitlab-event", "")
    return {"Push Hook": "push", "Tag Push Hook": "push"}.get(name, name or "unnamed")


def delivery_key(service: str, headers: Mapping[str, str], body: bytes) -> str:
    """The service's id for this delivery (the same when it redelivers), else the body's hash."""
    if service == "github":
        found = headers.get("x-github-delivery")
    elif service == "gitea":
        found = headers.get("x-gitea-delivery") or headers.get("x-forgejo-delivery")
    else:  # GitLab 17.4+ keeps Idempotency-Key across retries; the event's UUID before that
        found = headers.get("idempotency-key") or headers.get("x-gitlab-event-uuid")
    return (found or "")[:200].strip() or "sha256:" + hashlib.sha256(body).hexdigest()


def parse_push(service: str, body: bytes, content_type: str) -> Push | None:
    """The pushed ref and commit; None for a deletion (nothing to build). Refused (422) when the
    payload is not a push as the service documents it."""
    data = _payload(body, content_type)
    ref, after = data.get("ref"), data.get("after")
    if service == "gitlab" and data.get("checkout_sha"):
        after = data["checkout_sha"]  # a tag's commit, where `after` may be the tag object
    if not isinstance(ref, str) or not isinstance(after, str):
        raise Refused(422, "not a push event: the payload has no 'ref' and 'after'")
    if data.get("deleted") is True or after.strip("0") == "":
        return None
    if not ref.startswith(("refs/heads/", "refs/tags/")):
        raise Refused(422, f"ref {ref[:100]!r} is neither a branch (refs/heads/) nor a tag (refs/tags/)")
    try:
        check_ref(ref)
        check_commit(after)
    except BadGitSource as exc:
        raise Refused(422, str(exc)) from None
    return Push(ref=ref, commit=after)


def _payload(body: bytes, content_type: str) -> dict:
    """JSON, or GitHub's and Gitea's form encoding (`payload=<JSON>`)."""
    text = body.decode("utf-8", errors="replace")
    if content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        text = (parse_qs(text).get("payload") or [""])[0]
    try:
        data = json.loads(text)
    except ValueError:
        raise Refused(422, "the payload is not JSON (content type application/json)") from None
    if not isinstance(data, dict):
        raise Refused(422, "the payload is not a JSON object")
    return data
