"""A small world for notice tests (practice, practitioner, patient, thread; canaries in every field), a way
to run the outbox through its real dispatcher claim and notifier in this thread, and a slow SMTP sink.

    world = make_world(gw, canaries)                       # both parties, verified contacts
    post(gw, world, "practitioner")                        # a message: one outbox row for the patient
    drain(gw, notifier)                                    # claim due rows, deliver each, until none is due
"""
from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email import message_from_bytes
from email.policy import default as default_policy

from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import select

from gateway.app import Gateway
from gateway.db.tables import ContactPoint
from gateway.directory.patients import add_care, add_patient
from gateway.directory.practices import add_practice, add_practitioner
from gateway.threads.service import NewAttachment, get_thread, open_thread, post_message
from gateway.workers.dispatcher import claim_due
from gateway.workers.notify import Notifier
from tests.support.smtp_sink import SmtpSink

PRACTICE_NAME = "Cabinet des Tilleuls"
PRACTITIONER_EMAIL = "canary-doc-9e1f@example.org"
LINK = re.compile(r"https?://[^\s\"'<>]+/l/([A-Za-z0-9_-]{20,})")


@dataclass(frozen=True)
class World:
    practice_slug: str
    practitioner_id: str
    practitioner_slug: str
    patient_id: str
    thread_id: str
    email_contact_id: str | None
    phone_contact_id: str | None


def make_world(
    gw: Gateway,
    canaries: dict[str, str],
    *,
    email: bool = True,
    phone: bool = True,
    locale: str = "fr",
    suffix: str = "",
    patient_email: str | None = None,
    patient_phone: str | None = None,
) -> World:
    keys = gw.keys
    slug = f"cab{suffix}"
    with gw.transaction() as s:
        add_practice(s, slug=slug, name=PRACTICE_NAME, sms_number=f"+337{int(suffix or 1):08d}")
        doc = add_practitioner(
            s, keys, practice_slug=slug, slug=f"dr-canary{suffix}", name=canaries["name"] + " (Dr)",
            email=PRACTITIONER_EMAIL if not suffix else f"doc{suffix}@example.net",
        )
        patient = add_patient(
            s, keys, practice_slug=slug, name=canaries["name"],
            email=(patient_email or canaries["email"]) if email else None,
            phone=(patient_phone or canaries["phone"]) if phone else None,
            verified=True, locale=locale,
        )
        s.flush()
        add_care(s, patient_id=patient.id, practitioner_slug=doc.slug)
        s.flush()
        thread = open_thread(s, keys, patient_id=patient.id, practitioner_slug=doc.slug, subject=canaries["subject"])
        contacts = {c.kind: c.id for c in s.scalars(select(ContactPoint).where(ContactPoint.patient_id == patient.id))}
        return World(slug, doc.id, doc.slug, patient.id, thread.id, contacts.get("email"), contacts.get("phone"))


def post(gw: Gateway, world: World, author: str, canaries: dict[str, str] | None = None, *, thread_id: str | None = None,
         original: bytes | None = None, channel: str = "portal") -> str:
    """Post a message (with an attachment named by the canary) and return its id."""
    canaries = canaries or {"body": "Bonjour", "attachment": "note.pdf"}
    keys = gw.keys
    with gw.transaction() as s:
        thread = get_thread(s, thread_id or world.thread_id)
        message = post_message(
            s, keys, thread, author=author, channel=channel, body=canaries["body"],
            attachments=(NewAttachment(canaries["attachment"], "application/pdf", b"%PDF-1.4\n%%EOF\n"),),
            original=original,
        )
        return message.id


def drain(gw: Gateway, notifier: Notifier, *, rounds: int = 20, lease: float | None = None) -> list[str | None]:
    """Claim due rows with the dispatcher's query and deliver each in this thread, until none is due."""
    outcomes: list[str | None] = []
    for _ in range(rounds):
        with gw.transaction() as s:
            ids = claim_due(
                s, now=datetime.now(timezone.utc), lease=timedelta(seconds=lease or gw.settings.notice_lease_seconds)
            )
        if not ids:
            break
        outcomes.extend(notifier.deliver(row_id) for row_id in ids)
    return outcomes


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def parsed(content: bytes):  # type: ignore[no-untyped-def]
    return message_from_bytes(content, policy=default_policy)


def email_texts(content: bytes) -> tuple[str, str]:
    """(text part, HTML part) of a notice email, decoded."""
    msg = parsed(content)
    return msg.get_body(("plain",)).get_content(), msg.get_body(("html",)).get_content()


def login_token(text: str) -> str:
    match = LINK.search(text)
    assert match, "no login link"
    return match.group(1)


class SlowSink(SmtpSink):
    """An SmtpSink whose DATA takes `delay` seconds before its 250 (and that counts DATA in progress, and the
    most at once), so a test can kill a sender mid-transaction or see how many transactions overlap."""

    def __init__(self, *, delay: float = 0.0, **options: object) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self.delay = delay
        self.in_data = 0
        self.most_in_data = 0
        self._count_lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self._count_lock:
            self.in_data += 1
            self.most_in_data = max(self.most_in_data, self.in_data)
        try:
            await asyncio.sleep(self.delay)
            return await super().handle_DATA(server, session, envelope)
        finally:
            with self._count_lock:
                self.in_data -= 1

    def recipients(self) -> list[str]:
        with self._lock:
            return [rcpt for m in self.messages for rcpt in m.rcpt_tos]
