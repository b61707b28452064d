"""Push events as GitHub, Gitea/Forgejo and GitLab send them: the payload shapes and headers of
their documentation (docs.github.com "Webhook events and payloads: push"; docs.gitea.com
"Webhooks"; docs.gitlab.com "Webhook events: Push events, Tag events"), signed the way each
documents. The tests send these to the coordinator's hooks."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from typing import Any

ZERO = "0" * 40


def _commit(sha: str, url: str) -> dict[str, Any]:
    person = {"name": "Ada", "email": "ada@example.com", "username": "ada"}
    return {
        "id": sha,
        "tree_id": "4b825dc642cb6eb9a060e54bf8d69288fbee4904",
        "distinct": True,
        "message": "Thicker lid",
        "timestamp": "2026-12-07T10:00:00+00:00",
        "url": f"{url}/commit/{sha}",
        "author": person,
        "committer": person,
        "added": [],
        "removed": [],
        "modified": ["main.py"],
    }


def github(ref: str, before: str, after: str, head: str, url: str, pushed_at: int = 1765100000) -> dict:
    """`head`: the commit (for an annotated tag, `after` is the tag object)."""
    tag = ref.startswith("refs/tags/")
    return {
        "ref": ref,
        "before": before,
        "after": after,
        "repository": {
            "id": 1296269,
            "name": "trays",
            "full_name": "ada/trays",
            "private": False,
            "clone_url": url,
            "default_branch": "main",
            "pushed_at": pushed_at,
        },
        "pusher": {"name": "ada", "email": "ada@example.com"},
        "sender": {"login": "ada", "id": 1},
        "created": tag,
        "deleted": False,
        "forced": False,
        "base_ref": "refs/heads/main" if tag else None,
        "compare": f"{url}/compare/{before[:12]}...{after[:12]}",
        "commits": [] if tag else [_commit(head, url)],
        "head_commit": _commit(head, url),
    }


def gitea(ref: str, before: str, after: str, url: str) -> dict:
    return {
        "ref": ref,
        "before": before,
        "after": after,
        "compare_url": f"{url}/compare/{before}...{after}",
        "commits": [_commit(after, url)],
        "total_commits": 1,
        "head_commit": _commit(after, url),
        "repository": {"id": 140, "name": "trays", "full_name": "ada/trays", "clone_url": url},
        "pusher": {"id": 1, "login": "ada", "email": "ada@example.com"},
        "sender": {"id": 1, "login": "ada"},
    }


def gitlab(ref: str, before: str, after: str, checkout_sha: str, url: str) -> dict:
    tag = ref.startswith("refs/tags/")
    kind = "tag_push" if tag else "push"
    return {
        "object_kind": kind,
        "event_name": kind,
        "before": before,
        "after": after,
        "ref": ref,
        "ref_protected": True,
        "checkout_sha": checkout_sha,
        "message": None,
        "user_id": 4,
        "user_name": "Ada",
        "user_username": "ada",
        "user_email": "",
        "user_avatar": "",
        "project_id": 15,
        "project": {"id": 15, "name": "trays", "git_http_url": url, "default_branch": "main"},
        "commits": [] if tag else [_commit(after, url)],
        "total_commits_count": 0 if tag else 1,
        "push_options": {},
        "repository": {"name": "trays", "url": url, "git_http_url": url, "visibility_level": 0},
    }


def headers(
    service: str, secret: str | None, body: bytes, *, event: str = "push", delivery: str = ""
) -> dict:
    """The headers the service sends, signed with `secret` (None: unsigned)."""
    delivery = delivery or str(uuid.uuid4())
    mac = hmac.new((secret or "").encode(), body, hashlib.sha256).hexdigest()
    sent = {"Content-Type": "application/json"}
    if service == "github":
        sent |= {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery, "User-Agent": "GitHub-Hookshot/abc"}
        if secret is not None:
            sent["X-Hub-Signature-256"] = f"sha256={mac}"
    elif service == "gitea":
        # Gitea also sends the GitHub and Gogs names of each header.
        sent |= {
            "X-Gitea-Event": event,
            "X-Gitea-Event-Type": event,
            "X-Gitea-Delivery": delivery,
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery,
            "X-Gogs-Event": event,
            "X-Gogs-Delivery": delivery,
        }
        if secret is not None:
            sent |= {"X-Gitea-Signature": mac, "X-Hub-Signature-256": f"sha256={mac}"}
    else:
        name = {"push": "Push Hook", "tag": "Tag Push Hook"}.get(event, event)
        sent |= {
            "X-Gitlab-Event": name,
            "X-Gitlab-Event-UUID": str(uuid.uuid4()),
            "X-Gitlab-Webhook-UUID": str(uuid.uuid4()),
            "Idempotency-Key": delivery,
            "X-Gitlab-Instance": "https://gitlab.example.com",
            "User-Agent": "GitLab/17.6.0",
        }
        if secret is not None:
            sent["X-Gitlab-Token"] = secret
    return sent


def encode(payload: dict) -> bytes:
    return json.dumps(payload).encode()
