"""Fixtures for the portal and API tests: a gateway served by a real uvicorn on loopback, a small world (two
practices; a practitioner with two patients, their threads, a message with an attachment), cookie-keeping HTTP
clients, and helpers to fill the pages' forms the way a browser would."""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from gateway import links
from gateway.app import Gateway
from gateway.db.tables import ContactPoint, OutboxRow
from gateway.directory.patients import add_care, add_patient
from gateway.directory.practices import add_practice, add_practitioner
from gateway.threads.service import NewAttachment, open_thread, post_message
from gateway.web.app import create_app
from tests.support.http_server import HttpServer
from tests.support.services import free_port
from tests.support.smtp_sink import SmtpSink, smtp_sink_factory  # noqa: F401 - fixture

PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
DOCTOR_EMAIL = "doc-a@example.org"
DOCTOR_PASSWORD = "correct horse battery staple"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass(frozen=True)
class World:
    practice_id: str
    doctor_id: str
    doctor_slug: str
    patient_a: str  # the canary patient: name, email, phone, subject, body, attachment are canaries
    patient_b: str
    thread_a: str
    thread_b: str
    attachment_a: str
    other_practice_patient: str
    other_practice_thread: str
    other_doctor_slug: str


def build_world(gw: Gateway, canaries: dict[str, str]) -> World:
    keys = gw.keys
    with gw.transaction() as s:
        practice = add_practice(s, slug="cab", name="Cabinet des Tilleuls")
        doctor = add_practitioner(s, keys, practice_slug="cab", slug="dr-a", name="Dr Alpha", email=DOCTOR_EMAIL)
        a = add_patient(
            s,
            keys,
            practice_slug="cab",
            name=canaries["name"],
            email=canaries["email"],
            phone=canaries["phone"],
            verified=True,
            locale="fr",
        )
        b = add_patient(
            s, keys, practice_slug="cab", name="Bob Other", email="bob@example.net", verified=True, locale="en"
        )
        add_practice(s, slug="far", name="Cabinet Lointain")
        far_doc = add_practitioner(s, keys, practice_slug="far", slug="dr-z", name="Dr Zulu", email="z@example.net")
        c = add_patient(s, keys, practice_slug="far", name="Carol Far", email="carol@example.net", verified=True)
        s.flush()
        for patient, slug in ((a, "dr-a"), (b, "dr-a"), (c, "dr-z")):
            add_care(s, patient_id=patient.id, practitioner_slug=slug)
        s.flush()
        ta = open_thread(s, keys, patient_id=a.id, practitioner_slug="dr-a", subject=canaries["subject"])
        tb = open_thread(s, keys, patient_id=b.id, practitioner_slug="dr-a", subject="Bob's question")
        tc = open_thread(s, keys, patient_id=c.id, practitioner_slug="dr-z", subject="Carol's question")
        message = post_message(
            s,
            keys,
            ta,
            author="practitioner",
            channel="cli",
            body=canaries["body"],
            attachments=(NewAttachment(canaries["attachment"], "application/pdf", PDF),),
        )
        post_message(s, keys, tb, author="practitioner", channel="cli", body="For Bob only")
        post_message(s, keys, tc, author="practitioner", channel="cli", body="For Carol only")
        s.flush()
        from gateway.db.tables import Attachment

        attachment = s.scalar(select(Attachment.id).where(Attachment.message_id == message.id))
        assert attachment is not None
        return World(
            practice.id, doctor.id, doctor.slug, a.id, b.id, ta.id, tb.id, attachment, c.id, tc.id, far_doc.slug
        )


def csrf_of(html: str) -> str:
    match = CSRF.search(html)
    assert match, "the page has no form with a CSRF token"
    return match.group(1)


@dataclass
class Site:
    """One running gateway: its app on a loopback uvicorn, its world, clients that talk to it over HTTP, and
    its notices: email through a loopback SMTP relay (`sink`), SMS written to files by the real worker."""

    gw: Gateway
    url: str
    world: World
    sink: SmtpSink
    clients: list[httpx.Client]

    def deliver(self) -> None:
        """Send every due outbox row with the real notices worker (its dispatcher query and notifier)."""
        from gateway.workers.notify import Notifier
        from gateway.workers.senders import make_senders
        from tests.support.notice_world import drain

        notifier = Notifier(self.gw, make_senders(self.gw.settings))
        try:
            drain(self.gw, notifier)
        finally:
            notifier.close()

    def mails(self) -> list[EmailMessage]:
        return [message_from_bytes(m.content, policy=default_policy) for m in self.sink.messages]  # type: ignore[misc]

    def mail_text(self, index: int = -1) -> str:
        return self.mails()[index].get_body(("plain",)).get_content()  # type: ignore[union-attr]

    def sms_bodies(self) -> list[str]:
        folder = self.gw.settings.data_dir / "outbox-sms"
        files = sorted(folder.glob("*.json"), key=lambda f: f.stat().st_mtime_ns) if folder.is_dir() else []
        return [json.loads(f.read_text())["body"] for f in files]

    def last_code(self) -> str:
        bodies = self.sms_bodies()
        assert bodies, "no SMS was sent"
        match = re.search(r"\b(\d{6})\b", bodies[-1])
        assert match, "the SMS carries no code"
        return match.group(1)

    def client(self, **options: Any) -> httpx.Client:
        client = httpx.Client(base_url=self.url, follow_redirects=False, timeout=30, **options)
        self.clients.append(client)
        return client

    def issue(
        self,
        purpose: str = "login",
        *,
        patient_id: str | None = None,
        practitioner_id: str | None = None,
        thread_id: str | None = None,
        contact_id: str | None = None,
        ttl: timedelta = timedelta(hours=1),
    ) -> str:
        with self.gw.transaction() as s:
            return links.issue(
                s,
                purpose,
                ttl=ttl,
                patient_id=patient_id,
                practitioner_id=practitioner_id,
                thread_id=thread_id,
                contact_id=contact_id,
            ).token

    def sign_in(self, client: httpx.Client, patient_id: str, thread_id: str | None = None) -> httpx.Response:
        """Open a login link and press its button; returns the POST's answer (a redirect)."""
        token = self.issue(patient_id=patient_id, thread_id=thread_id)
        page = client.get(f"/l/{token}")
        assert page.status_code == 200
        answer = client.post(f"/l/{token}", data={"csrf": csrf_of(page.text)})
        assert answer.status_code == 303, answer.text
        return answer

    def doctor(self, client: httpx.Client | None = None) -> httpx.Client:
        """A client signed in as the practitioner, who set their password from an invitation link."""
        client = client or self.client()
        token = self.issue("invite", practitioner_id=self.world.doctor_id)
        page = client.get(f"/l/{token}")
        answer = client.post(
            f"/l/{token}", data={"csrf": csrf_of(page.text), "password": DOCTOR_PASSWORD, "password2": DOCTOR_PASSWORD}
        )
        assert answer.status_code == 303 and answer.headers["location"] == "/portal/pro/", answer.text
        return client

    def post_form(
        self,
        client: httpx.Client,
        page_path: str,
        action: str,
        data: dict[str, str],
        files: list[tuple[str, tuple[str, bytes, str]]] | None = None,
    ) -> httpx.Response:
        page = client.get(page_path)
        assert page.status_code == 200, page.status_code
        return client.post(action, data={"csrf": csrf_of(page.text), **data}, files=files)

    def outbox(self, kind: str | None = None) -> list[OutboxRow]:
        with self.gw.readers() as s:
            stmt = select(OutboxRow).order_by(OutboxRow.created_at)
            if kind:
                stmt = stmt.where(OutboxRow.kind == kind)
            rows = list(s.scalars(stmt))
            s.expunge_all()
            return rows

    def contact(self, patient_id: str, kind: str) -> ContactPoint:
        with self.gw.readers() as s:
            contact = s.scalar(
                select(ContactPoint).where(ContactPoint.patient_id == patient_id, ContactPoint.kind == kind)
            )
            assert contact is not None
            s.expunge(contact)
            return contact


@pytest.fixture
def site_factory(
    settings_factory: Any,
    canaries: dict[str, str],
    smtp_sink_factory: Callable[..., SmtpSink],  # noqa: F811
) -> Iterator[Callable[..., Site]]:
    """`site_factory(**setting overrides)`: a gateway with the world, served on a loopback port."""
    made: list[tuple[Site, HttpServer]] = []

    def make(**overrides: Any) -> Site:
        port = free_port()
        sink = smtp_sink_factory()
        values: dict[str, Any] = {
            "public_url": f"http://127.0.0.1:{port}",
            "outbound_smtp_url": f"smtp://{sink.host}:{sink.port}",
            "notice_from": "Notifications <notices@msg.example.test>",
        }
        values.update(overrides)
        gw = Gateway(settings_factory(**values))
        gw.init()
        world = build_world(gw, canaries)
        server = HttpServer(create_app(gw), port=port).start()
        site = Site(gw, server.url, world, sink, [])
        made.append((site, server))
        return site

    yield make
    for site, server in made:
        for client in site.clients:
            client.close()
        server.stop()
        site.gw.close()


@pytest.fixture
def site(site_factory: Callable[..., Site]) -> Site:
    return site_factory()
