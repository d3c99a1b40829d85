"""A gateway with its SMTP server on loopback, and a small world: one practice, two practitioners (one
with messaging off), a verified patient with an open thread."""
from __future__ import annotations

import smtplib
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid

import pytest

from gateway.app import Gateway
from gateway.directory.patients import add_care, add_patient
from gateway.directory.practices import add_practice, add_practitioner
from gateway.ingress.smtp import SmtpServer
from gateway.threads.service import open_thread, thread_reply_address
from tests.support.services import free_port

DOMAIN = "msg.example.test"
PATIENT_EMAIL = "jeanne@patient.example"
DOCTOR_EMAIL = "martin@cabinet.example"


@dataclass
class World:
    gw: Gateway
    patient_id: str
    thread_id: str
    reply_address: str
    practitioner_reply_address: str
    port: int

    def smtp(self) -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", self.port, timeout=30)
        client.ehlo("client.example")
        return client

    def send(self, msg: EmailMessage | bytes, rcpt: str | list[str], mail_from: str = PATIENT_EMAIL) -> tuple[int, str]:
        """DATA's reply code and text, or the RCPT refusal."""
        raw = msg if isinstance(msg, bytes) else msg.as_bytes()
        with self.smtp() as client:
            client.mail(mail_from)
            for r in [rcpt] if isinstance(rcpt, str) else rcpt:
                code, text = client.rcpt(r)
                if code >= 300:
                    return code, text.decode()
            code, text = client.data(raw)
            return code, text.decode()


def make_email(
    *, to: str, sender: str = PATIENT_EMAIL, subject: str = "Re: votre message", body: str = "Bonjour docteur,\nmerci.\n",
    message_id: str | None = None, headers: dict[str, str] | None = None,
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = message_id or make_msgid(domain="patient.example")
    for k, v in (headers or {}).items():
        msg[k] = v
    msg.set_content(body)
    return msg


def build_world(gw: Gateway, **server_kwargs) -> World:  # type: ignore[no-untyped-def]
    keys = gw.keys
    with gw.transaction() as s:
        add_practice(s, slug="cab", name="Cabinet Test")
        add_practitioner(s, keys, practice_slug="cab", slug="dr-martin", name="Dr Martin", email=DOCTOR_EMAIL)
        add_practitioner(s, keys, practice_slug="cab", slug="dr-off", name="Dr Off", email="off@cabinet.example", messaging=False)
    with gw.transaction() as s:
        p = add_patient(s, keys, practice_slug="cab", name="Jeanne", email=PATIENT_EMAIL, verified=True)
        add_care(s, patient_id=p.id, practitioner_slug="dr-martin")
        add_care(s, patient_id=p.id, practitioner_slug="dr-off")
        t = open_thread(s, keys, patient_id=p.id, practitioner_slug="dr-martin", subject="Résultats")
        world = World(
            gw, p.id, t.id, thread_reply_address(keys, t, "patient", DOMAIN),
            thread_reply_address(keys, t, "practitioner", DOMAIN), 0,
        )
    return world


@pytest.fixture
def smtp_world(settings_factory) -> Iterator[World]:  # type: ignore[no-untyped-def]
    yield from _world(settings_factory)


def _world(settings_factory, **overrides) -> Iterator[World]:  # type: ignore[no-untyped-def]
    port = free_port()
    values = dict(sender_auth="none", smtp_port=port, mail_domain=DOMAIN)
    values.update(overrides)
    gw = Gateway(settings_factory(**values))
    gw.init()
    world = build_world(gw)
    world.port = port
    server = SmtpServer(gw)
    server.start()
    try:
        yield world
    finally:
        server.stop(drain_timeout=5)
        gw.close()


@pytest.fixture
def world_factory(settings_factory):  # type: ignore[no-untyped-def]
    """A world with other settings (sender auth mode, size limit, LMTP...)."""
    generators = []

    def make(**overrides) -> World:  # type: ignore[no-untyped-def]
        gen = _world(settings_factory, **overrides)
        generators.append(gen)
        return next(gen)

    yield make
    for gen in generators:
        next(gen, None)
