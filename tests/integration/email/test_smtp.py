"""Real SMTP on loopback against the running server, for every reply code of the inbound-email path."""
from __future__ import annotations

import logging
import smtplib
import ssl
import subprocess

import pytest
from sqlalchemy import func, select, text, update

from gateway.db.tables import ContactPoint, Message, OutboxRow, PostmasterMail, Thread
from gateway.threads.service import close_thread, get_thread, read_thread
from tests.integration.email.conftest import DOCTOR_EMAIL, DOMAIN, PATIENT_EMAIL, make_email


def _messages(world) -> list[dict]:
    with world.gw.transaction() as s:
        return read_thread(s, world.gw.keys, get_thread(s, world.thread_id), actor="test")["messages"]


def _count(world, model, *where) -> int:
    with world.gw.readers() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where)) or 0


def test_reply_is_stored_with_notice_and_acknowledgement(smtp_world):
    body = "Bonjour docteur,\nvoici ma réponse.\n\nLe lun. 3 nov. 2025 à 10:00, Cabinet <x@y> a écrit :\n> ancien message\n"
    assert smtp_world.send(make_email(to=smtp_world.reply_address, body=body), smtp_world.reply_address) == (250, "2.0.0 Message accepted")
    (msg,) = _messages(smtp_world)
    assert msg["author"] == "patient" and msg["channel"] == "email"
    assert "voici ma réponse" in msg["body"] and "ancien message" not in msg["body"]
    with smtp_world.gw.readers() as s:
        kinds = sorted((o.kind, o.practitioner_id is not None) for o in s.scalars(select(OutboxRow)))
        original = s.scalar(select(Message.original_ct))
    assert kinds == [("acknowledgement", False), ("new_message", True)]
    assert original and b"ancien message" not in original
    # A second message the same day gets no second acknowledgement.
    smtp_world.send(make_email(to=smtp_world.reply_address, body="Encore moi"), smtp_world.reply_address)
    assert _count(smtp_world, OutboxRow, OutboxRow.kind == "acknowledgement") == 1


def test_reply_address_is_case_insensitive(smtp_world):
    upper = smtp_world.reply_address.upper()
    assert smtp_world.send(make_email(to=upper), upper)[0] == 250
    assert len(_messages(smtp_world)) == 1


@pytest.mark.parametrize(
    "rcpt",
    ["nobody@" + DOMAIN, "dr-martin@other.example", "r-aaaaaaaaaaaaaaaaaaaa@" + DOMAIN, "r-@" + DOMAIN, "not an address"],
)
def test_unknown_recipients_are_550_5_1_1_at_rcpt(smtp_world, rcpt):
    code, text_ = smtp_world.send(make_email(to="x@y"), rcpt)
    assert code == 550 and text_.startswith("5.1.1")


def test_tampered_token_is_unknown(smtp_world):
    local, domain = smtp_world.reply_address.split("@")
    flipped = local[:-1] + ("a" if local[-1] != "a" else "b")
    assert smtp_world.send(make_email(to="x"), f"{flipped}@{domain}")[0:1] == (550,)


def test_closed_thread_is_550_5_7_1_with_advice(smtp_world):
    with smtp_world.gw.transaction() as s:
        close_thread(s, get_thread(s, smtp_world.thread_id), actor="test")
    code, text_ = smtp_world.send(make_email(to=smtp_world.reply_address), smtp_world.reply_address)
    assert code == 550 and text_.startswith("5.7.1") and "new conversation" in text_


def test_new_thread_by_practitioner_address_and_messaging_off(smtp_world):
    assert smtp_world.send(make_email(to="x", subject="Question ordonnance"), "Dr-Martin@" + DOMAIN)[0] == 250
    assert _count(smtp_world, Thread) == 2
    code, text_ = smtp_world.send(make_email(to="x"), "dr-off@" + DOMAIN)
    assert code == 550 and "does not use secure messaging" in text_


def test_new_thread_from_unknown_or_unverified_sender_is_refused(smtp_world):
    code, text_ = smtp_world.send(make_email(to="x", sender="stranger@else.example"), "dr-martin@" + DOMAIN, mail_from="stranger@else.example")
    assert code == 550 and text_.startswith("5.7.1") and "stranger" not in text_
    with smtp_world.gw.transaction() as s:
        s.execute(update(ContactPoint).values(verified_at=None))
    code, text_ = smtp_world.send(make_email(to="x"), "dr-martin@" + DOMAIN)
    assert code == 550 and "not verified" in text_


def test_header_from_mismatch_is_550_even_with_matching_envelope(smtp_world):
    msg = make_email(to=smtp_world.reply_address, sender="impostor@evil.example")
    code, text_ = smtp_world.send(msg, smtp_world.reply_address, mail_from=PATIENT_EMAIL)
    assert code == 550 and text_.startswith("5.7.1") and "impostor" not in text_
    assert _messages(smtp_world) == []


def test_envelope_sender_may_differ_from_header_from(smtp_world):
    # Forwarders rewrite the envelope sender (SRS); the header From decides.
    msg = make_email(to=smtp_world.reply_address)
    assert smtp_world.send(msg, smtp_world.reply_address, mail_from="SRS0=abc=xy=patient.example=jeanne@fwd.example")[0] == 250


def test_practitioner_replies_by_email_to_their_address(smtp_world):
    addr = smtp_world.practitioner_reply_address
    assert smtp_world.send(make_email(to=addr, sender=DOCTOR_EMAIL, body="Résultats normaux."), addr, mail_from=DOCTOR_EMAIL)[0] == 250
    (msg,) = _messages(smtp_world)
    assert msg["author"] == "practitioner"
    # The patient cannot use the practitioner's address.
    assert smtp_world.send(make_email(to=addr), addr)[0] == 550


def test_postmaster_is_accepted_and_kept_sealed(smtp_world):
    assert smtp_world.send(make_email(to="postmaster@" + DOMAIN, body="abuse report"), "postmaster@" + DOMAIN)[0] == 250
    with smtp_world.gw.readers() as s:
        (mail,) = s.scalars(select(PostmasterMail)).all()
    assert b"abuse report" not in mail.raw_ct


def test_size_is_advertised_and_enforced(world_factory):
    world = world_factory(max_message_bytes=20_000)
    with world.smtp() as client:
        assert client.has_extn("size") and client.esmtp_features["size"] == "20000"
        code, _ = client.mail(PATIENT_EMAIL, options=["SIZE=50000"])
        assert code == 552
    big = make_email(to=world.reply_address, body="x" * 70 + ("\n" + "y" * 70) * 400)
    code, text_ = world.send(big, world.reply_address)
    assert (code, text_) == (552, "5.3.4 Message too big for system")
    assert _messages(world) == []


@pytest.mark.parametrize(
    "headers, subject",
    [
        ({"Auto-Submitted": "auto-replied"}, "Re: votre message"),
        ({"X-Autoreply": "yes"}, "Re"),
        ({"Precedence": "bulk"}, "Newsletter"),
        ({}, "Réponse automatique : absent du cabinet"),
        ({}, "Out of Office: back Monday"),
        ({"X-Gateway-Notice": "1", "Auto-Submitted": "auto-generated"}, "Nouveau message"),
    ],
)
def test_auto_replies_and_our_notices_are_accepted_but_never_posted(smtp_world, headers, subject):
    msg = make_email(to=smtp_world.reply_address, subject=subject, headers=headers)
    assert smtp_world.send(msg, smtp_world.reply_address)[0] == 250
    assert _messages(smtp_world) == []
    assert _count(smtp_world, OutboxRow) == 0


def test_exchange_suppress_header_alone_is_an_ordinary_message(smtp_world):
    msg = make_email(to=smtp_world.reply_address, headers={"X-Auto-Response-Suppress": "All"})
    assert smtp_world.send(msg, smtp_world.reply_address)[0] == 250
    assert len(_messages(smtp_world)) == 1


def test_hard_bounce_to_notice_address_marks_contact_bouncing(smtp_world):
    notices = "notifications@" + DOMAIN
    dsn = (
        "From: MAILER-DAEMON@mx.patient.example\r\nTo: " + notices + "\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        "Message-ID: <dsn1@mx.patient.example>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nDelivery failed.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.patient.example\r\n\r\n"
        f"Final-Recipient: rfc822; {PATIENT_EMAIL}\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n--B--\r\n"
    ).encode()
    assert smtp_world.send(dsn, notices, mail_from="")[0] == 250
    with smtp_world.gw.readers() as s:
        assert s.scalar(select(ContactPoint.bouncing_at).where(ContactPoint.patient_id == smtp_world.patient_id)) is not None
    assert _messages(smtp_world) == []
    # Anything else to the no-reply address is dropped, never posted.
    assert smtp_world.send(make_email(to=notices), notices)[0] == 250
    assert _count(smtp_world, Message) == 0


def test_forged_report_to_another_address_marks_nothing(smtp_world):
    dsn = (
        "From: MAILER-DAEMON@evil.example\r\nTo: x\r\nSubject: Undelivered\r\nMessage-ID: <f1@evil.example>\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; evil.example\r\n\r\n"
        f"Final-Recipient: rfc822; {PATIENT_EMAIL}\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n--B--\r\n"
    ).encode()
    assert smtp_world.send(dsn, smtp_world.reply_address, mail_from="")[0] == 250
    with smtp_world.gw.readers() as s:
        assert s.scalar(select(ContactPoint.bouncing_at).where(ContactPoint.patient_id == smtp_world.patient_id)) is None


def test_one_recipient_per_smtp_transaction(smtp_world):
    # One reply covers all recipients in SMTP, so a second one is deferred rather than answered ambiguously.
    with smtp_world.smtp() as client:
        client.mail(PATIENT_EMAIL)
        assert client.rcpt(smtp_world.reply_address)[0] == 250
        code, text_ = client.rcpt("dr-martin@" + DOMAIN)
        assert code == 452 and text_.decode().startswith("4.5.3")
        assert client.data(make_email(to=smtp_world.reply_address).as_bytes())[0] == 250
    assert len(_messages(smtp_world)) == 1


def test_reply_into_an_erased_patients_thread_is_refused(smtp_world):
    from gateway.directory.patients import erase_patient

    with smtp_world.gw.transaction() as s:
        erase_patient(s, smtp_world.patient_id)
    addr = smtp_world.practitioner_reply_address
    code, text_ = smtp_world.send(make_email(to=addr, sender=DOCTOR_EMAIL), addr, mail_from=DOCTOR_EMAIL)
    assert code == 550 and text_.startswith("5.7.1")


def test_duplicate_message_id_is_stored_once(smtp_world):
    msg = make_email(to=smtp_world.reply_address, message_id="<same-1@patient.example>")
    assert smtp_world.send(msg, smtp_world.reply_address)[0] == 250
    assert smtp_world.send(msg, smtp_world.reply_address)[0] == 250
    assert len(_messages(smtp_world)) == 1
    # Without a Message-ID the raw bytes decide.
    raw = b"From: " + PATIENT_EMAIL.encode() + b"\r\nTo: x\r\nSubject: s\r\n\r\nno id here\r\n"
    assert smtp_world.send(raw, smtp_world.reply_address)[0] == 250
    assert smtp_world.send(raw, smtp_world.reply_address)[0] == 250
    assert len(_messages(smtp_world)) == 2


def test_same_message_to_new_thread_address_twice_opens_one_thread(smtp_world):
    msg = make_email(to="dr-martin@" + DOMAIN, message_id="<new-1@patient.example>")
    assert smtp_world.send(msg, "dr-martin@" + DOMAIN)[0] == 250
    assert smtp_world.send(msg, "dr-martin@" + DOMAIN)[0] == 250
    assert _count(smtp_world, Thread) == 2  # the fixture's thread and one new


def test_sender_rate_limit_is_451_4_7_0(world_factory):
    world = world_factory(sender_rate_limit=2)
    for _ in range(2):
        assert world.send(make_email(to=world.reply_address), world.reply_address)[0] == 250
    code, text_ = world.send(make_email(to=world.reply_address), world.reply_address)
    assert code == 451 and text_.startswith("4.7.0")


def test_attachments_allowed_kept_and_refused_noted(smtp_world):
    msg = make_email(to=smtp_world.reply_address, body="Voici les documents")
    msg.add_attachment(b"%PDF-1.4\n%%EOF\n", maintype="application", subtype="pdf", filename="ordonnance été.pdf")
    msg.add_attachment(b"MZ\x90\x00" + b"\x00" * 64, maintype="application", subtype="octet-stream", filename="setup.exe")
    assert smtp_world.send(msg, smtp_world.reply_address)[0] == 250
    patient_msg, note = _messages(smtp_world)
    assert [a["filename"] for a in patient_msg["attachments"]] == ["ordonnance été.pdf"]
    assert note["author"] == "system" and "setup.exe" in note["body"]


def test_lmtp_answers_one_reply_per_recipient(world_factory):
    world = world_factory(smtp_protocol="lmtp")
    import smtplib as _s

    client = _s.LMTP("127.0.0.1", world.port, timeout=30)
    try:
        client.ehlo_or_helo_if_needed()
        client.mail(PATIENT_EMAIL)
        assert client.rcpt(world.reply_address)[0] == 250
        assert client.rcpt("dr-martin@" + DOMAIN)[0] == 250
        client.putcmd("data")
        assert client.getreply()[0] == 354
        raw = make_email(to=world.reply_address, body="deux destinataires").as_bytes()
        client.send(raw.replace(b"\n", b"\r\n") + b"\r\n.\r\n")
        replies = [client.getreply()[0] for _ in range(2)]
        assert replies == [250, 250]
    finally:
        client.close()


def _self_signed(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True,
    )
    return cert, key


def test_starttls_when_a_certificate_is_configured(world_factory, tmp_path):
    cert, key = _self_signed(tmp_path)
    world = world_factory(smtp_tls_cert=cert, smtp_tls_key=key)
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.check_hostname = False
    with world.smtp() as client:
        assert client.has_extn("starttls")
        client.starttls(context=ctx)
        client.ehlo("client.example")
        client.mail(PATIENT_EMAIL)
        assert client.rcpt(world.reply_address)[0] == 250
        assert client.data(make_email(to=world.reply_address).as_bytes())[0] == 250


def test_logs_carry_no_content_or_addresses(smtp_world, canaries, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    msg = make_email(to=smtp_world.reply_address, subject=canaries["subject"], body=canaries["body"])
    assert smtp_world.send(msg, smtp_world.reply_address)[0] == 250
    smtp_world.send(make_email(to="x", sender=canaries["email"]), smtp_world.reply_address, mail_from=canaries["email"])
    captured = capsys.readouterr()
    logged = caplog.text + captured.out + captured.err
    assert "email.stored" in logged
    for value in (canaries["subject"], canaries["body"], canaries["email"], PATIENT_EMAIL, smtp_world.reply_address):
        assert value not in logged


def _break_database(world, db_url):
    """A real outage: SQLite's directory moved away, or PostgreSQL refusing this database's connections."""
    gw = world.gw
    if db_url.startswith("sqlite"):
        from pathlib import Path

        db = Path(db_url.removeprefix("sqlite:///"))
        moved = db.parent.with_name(db.parent.name + "-away")
        gw.engine.dispose()
        db.parent.rename(moved)

        def restore():
            moved.rename(db.parent)
            gw.engine.dispose()

        return restore
    from sqlalchemy import create_engine

    from tests.conftest import PG_ADMIN_URL

    name = db_url.rsplit("/", 1)[1]
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
        conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"))

    def restore():
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()
        gw.engine.dispose()

    return restore


def test_database_down_is_451_then_the_resend_is_stored_once(smtp_world, db_url):
    msg = make_email(to=smtp_world.reply_address, message_id="<outage-1@patient.example>")
    keys = smtp_world.gw.keys  # loaded while the database is up, as in a running server
    assert keys is not None
    restore = _break_database(smtp_world, db_url)
    try:
        code, text_ = smtp_world.send(msg, smtp_world.reply_address)
        assert code == 451 and text_.startswith("4.3.0")
    finally:
        restore()
    assert smtp_world.send(msg, smtp_world.reply_address)[0] == 250
    assert smtp_world.send(msg, smtp_world.reply_address)[0] == 250
    assert len(_messages(smtp_world)) == 1
