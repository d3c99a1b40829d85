"""`gateway run` as a real process: /healthz and /metrics, the SENDER_AUTH=none warning, and a SIGTERM under
load (inbound SMTP, HTTP, notices being sent) that exits 0 having lost nothing: every inbound email that
got its 250 is stored, every notice is sent (after a restart for those not yet dispatched), none twice."""
from __future__ import annotations

import smtplib
import threading
import uuid
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from gateway.app import Gateway
from gateway.db.tables import Message, OutboxRow
from gateway.threads.service import get_thread, thread_reply_address
from tests.integration.runtime.conftest import Proc, gateway_env
from tests.support.notice_world import SlowSink, World, make_world, post, wait_for

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

PATIENTS = 6


def inbound_email(world: World, reply_address: str, canaries: dict[str, str], address: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = address
    msg["To"] = reply_address
    msg["Subject"] = canaries["subject"]
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@example.net>"
    msg.set_content(canaries["body"])
    return msg


class SmtpLoad(threading.Thread):
    """Sends inbound emails one connection each until refused; remembers which ones got a 250."""

    def __init__(self, port: int, messages: list[tuple[str, str, EmailMessage]]) -> None:
        super().__init__(daemon=True)
        self.port, self.messages = port, messages
        self.accepted: list[str] = []

    def run(self) -> None:
        for sender, rcpt, msg in self.messages:
            try:
                client = smtplib.SMTP("127.0.0.1", self.port, timeout=30)
            except OSError:
                return  # the server stopped accepting: what came before is what counts
            try:
                client.sendmail(sender, [rcpt], msg.as_bytes())
                # Counted at the 250 itself: a QUIT that meets the closing server does not undo it.
                self.accepted.append(str(msg["Message-ID"]))
            except (OSError, smtplib.SMTPException):
                return
            finally:
                try:
                    client.quit()
                except (OSError, smtplib.SMTPException):
                    client.close()


class HttpLoad(threading.Thread):
    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port, self.ok, self.stop = port, 0, threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                try:
                    if client.get(f"http://127.0.0.1:{self.port}/healthz").status_code == 200:
                        self.ok += 1
                except httpx.HTTPError:
                    return


def count(gw: Gateway, stmt: Any) -> int:
    with gw.readers() as s:
        return int(s.scalar(stmt) or 0)


def test_sigterm_under_load_drains_and_loses_nothing(
    spawn: Callable[..., Proc],
    slow_relay: Callable[..., SlowSink],
    settings_factory: Any,
    db_url: str,
    tmp_path: Path,
    canaries: dict[str, str],
) -> None:
    relay = slow_relay(delay=0.2)
    gw = Gateway(settings_factory())
    gw.init()
    addresses = [f"patient{i}@example.net" for i in range(PATIENTS)]
    worlds = [make_world(gw, canaries, phone=False, suffix=str(i + 1), patient_email=a) for i, a in enumerate(addresses)]
    with gw.readers() as s:
        replies = [thread_reply_address(gw.keys, get_thread(s, w.thread_id), "patient", "msg.example.test") for w in worlds]
    env = gateway_env(db_url, tmp_path / "data", relay, GATEWAY_SENDER_AUTH="none", GATEWAY_NOTICE_COALESCE_MINUTES="0")
    run = spawn("run", env=env).wait_ready()
    port = int(env["GATEWAY_HTTP_PORT"])

    health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
    assert health.status_code == 200 and health.json() == {"status": "ok", "database": "ok", "broker": "ok"}
    assert "sender_auth.none" in run.stderr  # development mode is said out loud

    for world in worlds:  # notices to send: practitioner messages
        post(gw, world, "practitioner", canaries)
    mails = [(a, r, inbound_email(w, r, canaries, a)) for _ in range(10) for w, r, a in zip(worlds, replies, addresses)]
    smtp_loads = [SmtpLoad(int(env["GATEWAY_SMTP_PORT"]), mails[i::3]) for i in range(3)]
    http_load = HttpLoad(port)
    for load in (*smtp_loads, http_load):
        load.start()
    wait_for(lambda: relay.in_data > 0 and sum(len(l.accepted) for l in smtp_loads) >= 6, timeout=30)

    assert run.terminate() == 0
    for load in smtp_loads:
        load.join(30)
    http_load.stop.set()
    http_load.join(10)
    accepted = [m for load in smtp_loads for m in load.accepted]
    assert http_load.ok > 0 and accepted
    # Every inbound email that got its 250 was committed before the process exited.
    assert count(gw, select(func.count()).select_from(Message).where(Message.channel == "email")) == len(accepted)
    # Actor runs in progress finished; nothing was left half-claimed.
    assert count(gw, select(func.count()).select_from(OutboxRow).where(OutboxRow.state.in_(("queued", "sending")))) == 0

    # Whatever was not dispatched yet goes out after a restart, and nothing goes out twice.
    again = spawn("run", env=env).wait_ready()
    wait_for(lambda: count(gw, select(func.count()).select_from(OutboxRow).where(OutboxRow.state.not_in(("sent",)))) == 0,
             timeout=60)
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert again.terminate() == 0
    sent = count(gw, select(func.count()).select_from(OutboxRow))
    assert len(relay.messages) == sent
    assert 'gateway_notices_total{channel="email",state="sent"}' in metrics
    for text in (metrics, run.stderr, again.stderr):
        for value in [*canaries.values(), *addresses]:
            assert value not in text
    gw.close()
