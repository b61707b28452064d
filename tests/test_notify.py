"""Notifications (#18): a webhook receiver on loopback gets signed deliveries for job done, job
failed and printer attention, checks each signature itself, and gets them again after it was
down for a while; a real SMTP server (aiosmtpd) on loopback receives the failure e-mail."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller

from farm.coordinator.notify import REPLAY_WINDOW_S, sign, verify
from tests.conftest import EXAMPLES, RunningFarm, free_port, running_farm, wait_until

SECRET = "a-shared-webhook-secret"


class Receiver:
    """A webhook endpoint on a fixed loopback port that can be taken down and brought back."""

    def __init__(self) -> None:
        self.port = free_port()
        self.got: list[dict[str, Any]] = []
        self._server: ThreadingHTTPServer | None = None

    def up(self) -> None:
        got = self.got

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                got.append({"headers": dict(self.headers), "body": body})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def down(self) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(d["body"]) for d in self.got]


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:  # aiosmtpd's hook
        self.messages.append(envelope.content)
        return "250 OK"


@pytest.fixture(scope="module")
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box, port = Mailbox(), free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()


@pytest.fixture(scope="module")
def notifying_farm(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory, mailbox: tuple[Mailbox, int]
) -> Iterator[RunningFarm]:
    env = {"FARM_NOTIFY_INTERVAL_S": "0.5", "FARM_SMTP_HOST": "127.0.0.1", "FARM_SMTP_PORT": str(mailbox[1])}
    with running_farm(redis_url, tmp_path_factory.mktemp("notify"), "1", redis_db=9, env=env) as running:
        yield running


def _api(farm: RunningFarm) -> httpx.Client:
    token = (farm.data_dir / "admin.token").read_text().strip()
    return httpx.Client(base_url=farm.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _check_signed(delivery: dict[str, Any]) -> dict[str, Any]:
    """What a receiver does: HMAC-SHA256 over timestamp "." body, and a fresh timestamp."""
    headers, body = delivery["headers"], delivery["body"]
    stamp = headers["X-Farm-Timestamp"]
    expected = "sha256=" + hmac.new(SECRET.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Farm-Signature"], expected)
    assert abs(time.time() - int(stamp)) < REPLAY_WINDOW_S
    event = json.loads(body)
    assert headers["X-Farm-Event"] == event["event"] and headers["X-Farm-Delivery"] == str(event["delivery"])
    return event


def _attention(api: httpx.Client, printer: str) -> None:
    """What an agent says when its printer waits for a person (a heartbeat, as printers/agent.py sends)."""
    idle = api.post("/api/agents/heartbeat", json={"printer": printer, "state": "idle"})
    assert idle.status_code == 200, idle.text
    time.sleep(2.0)  # the notifier's watcher (every 0.5 s) sees it idle first
    beat = {"printer": printer, "state": "attention", "message": "Filament runout"}
    assert api.post("/api/agents/heartbeat", json=beat).status_code == 200


def test_signed_deliveries_arrive_and_come_again_after_the_receiver_was_down(
    notifying_farm: RunningFarm, mailbox: tuple[Mailbox, int], tmp_path: Path
) -> None:
    farm, api = notifying_farm, _api(notifying_farm)
    receiver = Receiver()
    receiver.up()
    hook = f"http://127.0.0.1:{receiver.port}/hook"
    events = ["--event", "job.done", "--event", "job.failed", "--event", "printer.attention"]
    code, target = farm.cli_json("notify", "add", hook, *events, "--format", "json", "--secret", SECRET)
    assert (
        code == 0 and target["signed"] and target["events"] == ["job.done", "job.failed", "printer.attention"]
    )
    code, mail = farm.cli_json("notify", "add", "mailto:ops@example.com", "--event", "job.failed")
    assert code == 0 and mail["format"] == "email"
    refused = farm.cli("notify", "add", hook, "--event", "job.exploded")
    assert refused.returncode == 2 and "unknown events" in refused.stderr

    code, build = farm.cli_json("submit", str(EXAMPLES / "cube.stl"), "--wait")
    assert code == 0, build
    done_job = build["jobs"][0]["id"]
    broken = tmp_path / "broken.py"
    broken.write_text("def part(:\n")
    code, build = farm.cli_json("submit", str(broken), "--wait")
    assert code == 1, build
    failed_job = build["jobs"][0]["id"]
    assert api.post(
        "/api/agents/register", json={"printer": "desk", "model": "MINI", "protocol": "prusalink"}
    )
    _attention(api, "desk")

    def kinds() -> list[str]:
        return sorted(e["event"] for e in receiver.events())

    wait_until(lambda: kinds() == ["job.done", "job.failed", "printer.attention"], 30, "three deliveries")
    by_kind = {e["event"]: e for e in map(_check_signed, receiver.got)}
    assert by_kind["job.done"]["data"]["job"] == done_job
    assert by_kind["job.failed"]["data"]["job"] == failed_job
    assert "SyntaxError" in by_kind["job.failed"]["data"]["error"]
    assert by_kind["printer.attention"]["data"] == {
        "printer": "desk",
        "model": "MINI",
        "state": "attention",
        "message": "Filament runout",
    }
    # Only what the target asked for: no queue.empty, build.failed or printer.bed here.
    assert len(receiver.got) == 3

    wait_until(lambda: mailbox[0].messages, 30, "the failure e-mail")
    email = message_from_bytes(mailbox[0].messages[0])
    assert email["To"] == "ops@example.com" and f"Job {failed_job}" in email["Subject"]
    assert "failed" in email["Subject"] and "SyntaxError" in email.get_payload()

    # The receiver goes away; what happens meanwhile waits in the outbox and is retried.
    receiver.down()
    code, build = farm.cli_json("submit", str(EXAMPLES / "cube.stl"), "--wait")
    assert code == 0, build
    second_done = build["jobs"][0]["id"]
    _attention(api, "desk")

    def failing() -> list[dict]:
        log = farm.cli_json("notify", "log")[1]
        return [d for d in log if d["url"] == hook and d["state"] == "pending" and d["attempts"] >= 1]

    wait_until(lambda: len(failing()) == 2, 30, "two deliveries failing while the receiver is down")
    assert all("ConnectError" in d["last_error"] and d["next_at"] for d in failing())
    time.sleep(3)
    receiver.got.clear()
    receiver.up()
    wait_until(lambda: kinds() == ["job.done", "printer.attention"], 60, "the deliveries after the outage")
    again = {e["event"]: e for e in map(_check_signed, receiver.got)}
    assert again["job.done"]["data"]["job"] == second_done
    log = farm.cli_json("notify", "log")[1]
    sent = [d for d in log if d["url"] == hook and d["state"] == "sent"]
    assert len(sent) == 5 and max(d["attempts"] for d in sent) >= 2, log

    # The tables people read, a test delivery, and a target removed.
    listed = farm.cli("notify", "list")
    assert listed.returncode == 0 and hook in listed.stdout and "mailto:ops@example.com" in listed.stdout
    logged = farm.cli("notify", "log", "--limit", "3")
    assert logged.returncode == 0 and "sent" in logged.stdout, logged.stdout
    receiver.got.clear()
    tested = farm.cli("notify", "test", str(target["id"]))
    assert tested.returncode == 0, tested.stderr
    wait_until(lambda: kinds() == ["test"], 30, "the test delivery")
    assert _check_signed(receiver.got[0])["summary"] == "A test notification from printfarm"
    assert farm.cli("notify", "remove", str(target["id"])).returncode == 0
    assert [t["url"] for t in farm.cli_json("notify", "list")[1]] == ["mailto:ops@example.com"]
    gone = farm.cli("notify", "test", str(target["id"]))
    assert gone.returncode == 1 and f"no notification target {target['id']}" in gone.stderr
    receiver.down()


def test_signatures_refuse_a_changed_body_or_an_old_timestamp() -> None:
    body, stamp = b'{"event": "job.done"}', str(int(time.time()))
    good = sign(SECRET, stamp, body)
    assert verify(SECRET, stamp, body, good)
    assert not verify(SECRET, stamp, body + b" ", good)
    assert not verify("another secret", stamp, body, good)
    old = str(int(time.time()) - REPLAY_WINDOW_S - 60)
    assert not verify(SECRET, old, body, sign(SECRET, old, body))  # a replay of an old delivery


def test_a_pending_delivery_survives_a_coordinator_restart(redis_url: str, tmp_path: Path) -> None:
    """The outbox is in the database: what the receiver missed while the farm was stopped arrives
    once it runs again."""
    receiver, data = Receiver(), tmp_path / "farm"
    data.mkdir()
    hook = f"http://127.0.0.1:{receiver.port}/hook"
    env = {"FARM_NOTIFY_INTERVAL_S": "0.5"}
    with running_farm(redis_url, data, "1", redis_db=10, env=env) as farm:
        code, _ = farm.cli_json("notify", "add", hook, "--event", "job.done", "--secret", SECRET)
        assert code == 0
        code, build = farm.cli_json("submit", str(EXAMPLES / "cube.stl"), "--wait")
        assert code == 0, build

        def tried() -> bool:
            log = farm.cli_json("notify", "log")[1]
            return bool(log) and log[0]["attempts"] >= 1 and log[0]["state"] == "pending"

        wait_until(tried, 30, "a first, failed delivery attempt")
    receiver.up()
    time.sleep(2)
    assert receiver.got == []  # nothing sends while the farm is stopped
    with running_farm(redis_url, data, "1", redis_db=10, env=env) as farm:
        wait_until(lambda: receiver.got, 60, "the delivery after the restart")
        event = _check_signed(receiver.got[0])
        assert event["event"] == "job.done" and event["data"]["job"] == build["jobs"][0]["id"]
        log = farm.cli_json("notify", "log")[1]
        assert log[0]["state"] == "sent" and log[0]["attempts"] >= 2
    receiver.down()
