"""`verify` and `trust-header` modes end to end: real SMTP on loopback, a real DNS server on loopback
serving test zones, messages signed with dkimpy and a test key."""
from __future__ import annotations

import pytest

from gateway.directory.patients import add_care, add_patient
from gateway.threads.service import open_thread, thread_reply_address
from tests.integration.email.conftest import DOMAIN
from tests.support import mailsign
from tests.support.dns_server import DNSTestServer

SIGNED = "patient@signed.example"  # aligned DKIM, DMARC p=reject
SPF_ONLY = "patient@spf.example"  # no DKIM, SPF allows 127.0.0.1, DMARC p=quarantine
NO_DMARC = "patient@nodmarc.example"
SLOW = "patient@slow.example"


@pytest.fixture
def dns():
    with DNSTestServer() as server:
        mailsign.key("sender").publish(server, "signed.example", "s1")
        server.add("_dmarc.signed.example", "TXT", "v=DMARC1; p=reject")
        server.add("signed.example", "TXT", "v=spf1 -all")
        server.add("spf.example", "TXT", "v=spf1 ip4:127.0.0.1 -all")
        server.add("_dmarc.spf.example", "TXT", "v=DMARC1; p=quarantine")
        server.add("nodmarc.example", "TXT", "v=spf1 -all")
        mailsign.key("sender").publish(server, "nodmarc.example", "s1")
        server.black_hole("_dmarc.slow.example")
        server.black_hole("slow.example")
        server.black_hole("s1._domainkey.slow.example")
        yield server


def _patient_thread(world, address: str) -> str:
    gw = world.gw
    keys = gw.keys
    with gw.transaction() as s:
        p = add_patient(s, keys, practice_slug="cab", name="P", email=address, verified=True)
        add_care(s, patient_id=p.id, practitioner_slug="dr-martin")
        t = open_thread(s, keys, patient_id=p.id, practitioner_slug="dr-martin", subject="S")
        return thread_reply_address(keys, t, "patient", DOMAIN)


def _send(world, raw: bytes, rcpt: str, mail_from: str) -> tuple[int, str]:
    return world.send(raw, rcpt, mail_from=mail_from)


def test_verify_mode_over_smtp(world_factory, dns):
    world = world_factory(sender_auth="verify", dns_resolver=dns.address, dns_timeout=0.5)
    key = mailsign.key("sender")

    to = _patient_thread(world, SIGNED)
    signed = mailsign.dkim_sign(mailsign.message(from_addr=SIGNED, to_addr=to, body="Bonjour signé.\r\n"), key, "signed.example")
    assert _send(world, signed, to, SIGNED)[0] == 250

    altered = signed.replace("Bonjour signé".encode(), b"Bonjour modifie")
    code, text = _send(world, altered.replace(b"Message-ID: <", b"Message-ID: <x"), to, SIGNED)
    assert code == 550 and text.startswith("5.7.1")

    unsigned = mailsign.message(from_addr=SIGNED, to_addr=to, subject="no sig")
    code, _ = _send(world, unsigned, to, SIGNED)
    assert code == 550  # p=reject domain, no aligned pass

    to_spf = _patient_thread(world, SPF_ONLY)
    assert _send(world, mailsign.message(from_addr=SPF_ONLY, to_addr=to_spf), to_spf, SPF_ONLY)[0] == 250

    to_nodmarc = _patient_thread(world, NO_DMARC)
    plain = mailsign.message(from_addr=NO_DMARC, to_addr=to_nodmarc, subject="plain")
    assert _send(world, plain, to_nodmarc, NO_DMARC)[0] == 550
    signed_nodmarc = mailsign.dkim_sign(mailsign.message(from_addr=NO_DMARC, to_addr=to_nodmarc), key, "nodmarc.example")
    assert _send(world, signed_nodmarc, to_nodmarc, NO_DMARC)[0] == 250

    to_slow = _patient_thread(world, SLOW)
    code, text = _send(world, mailsign.message(from_addr=SLOW, to_addr=to_slow), to_slow, SLOW)
    assert code == 451 and text.startswith("4.7.0")


def test_trust_header_mode_over_smtp(world_factory):
    world = world_factory(sender_auth="trust-header", trusted_authserv_id="mx.practice.example")
    to = world.reply_address
    base = mailsign.message(from_addr="jeanne@patient.example", to_addr=to, subject="trusted")
    trusted = b"Authentication-Results: mx.practice.example; dmarc=pass header.from=patient.example\r\n" + base
    assert world.send(trusted, to)[0] == 250

    forged_below = (
        b"Authentication-Results: mx.practice.example; dmarc=fail header.from=patient.example\r\n"
        + b"Authentication-Results: mx.practice.example; dmarc=pass header.from=patient.example\r\n"
        + base.replace(b"Subject: trusted", b"Subject: forged")
    )
    assert world.send(forged_below, to)[0] == 550
    other_authserv = b"Authentication-Results: evil.example; dmarc=pass header.from=patient.example\r\n" + base.replace(
        b"Subject: trusted", b"Subject: other"
    )
    assert world.send(other_authserv, to)[0] == 550
    temperror = b"Authentication-Results: mx.practice.example; dmarc=temperror header.from=patient.example\r\n" + base.replace(
        b"Subject: trusted", b"Subject: temp"
    )
    assert world.send(temperror, to)[0] == 451
