"""Notices through the real dispatcher claim and notifier, a real SMTP relay on loopback and a Twilio
stand-in: headers, the link, channel choice, coalescing, fallback, retries, failure, idempotence."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from sqlalchemy import select, update

from gateway import links
from gateway.app import Gateway
from gateway.audit import record
from gateway.db.tables import AuditEvent, ContactPoint, OutboxRow
from gateway.outbox import add_notice
from gateway.threads.service import get_thread, thread_reply_address
from gateway.workers.dispatcher import claim_due
from gateway.workers.notify import Notifier
from tests.integration.notices.conftest import PUBLIC_URL
from tests.support.notice_world import PRACTITIONER_EMAIL, drain, email_texts, login_token, make_world, parsed, post
from tests.support.smtp_sink import SmtpSink
from tests.support.twilio_standin import TwilioStandIn

Wired = Callable[..., Gateway]
NotifierFor = Callable[[Gateway], Notifier]


def rows(gw: Gateway) -> list[OutboxRow]:
    with gw.readers() as s:
        return list(s.scalars(select(OutboxRow).order_by(OutboxRow.created_at, OutboxRow.id)))


def contact(gw: Gateway, contact_id: str | None) -> ContactPoint:
    with gw.readers() as s:
        found = s.get(ContactPoint, contact_id)
        assert found is not None
        return found


def test_patient_gets_an_email_notice_with_reply_to_and_a_working_link(
    wired: Wired, notifier_for: NotifierFor, sink: SmtpSink, canaries: dict[str, str]
) -> None:
    gw = wired()
    world = make_world(gw, canaries)
    post(gw, world, "practitioner", canaries)
    assert drain(gw, notifier_for(gw)) == ["sent"]

    (received,) = sink.messages
    assert received.rcpt_tos == (canaries["email"],)
    assert received.mail_from == "notices@msg.example.test"
    msg = parsed(received.content)
    with gw.readers() as s:
        thread = get_thread(s, world.thread_id)
        assert msg["Reply-To"] == thread_reply_address(gw.keys, thread, "patient", "msg.example.test")
    assert msg["From"] == "Notifications <notices@msg.example.test>"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["To"] == canaries["email"]
    text, html = email_texts(received.content)
    token = login_token(text)
    assert f"{PUBLIC_URL}/l/{token}" in html

    # The token is live, bound to this patient and thread, and only its hash is stored.
    with gw.readers() as s:
        stored = links.peek(s, token, "login")
        assert stored is not None and links.usable(stored)
        assert (stored.patient_id, stored.thread_id) == (world.patient_id, world.thread_id)
        assert stored.token_hash != token
    (row,) = rows(gw)
    assert (row.state, row.channel, row.attempts) == ("sent", "email", 1)
    assert row.provider_id == msg["Message-ID"] and row.sent_at is not None


def test_practitioner_gets_an_email_notice_in_the_default_locale(
    wired: Wired, notifier_for: NotifierFor, sink: SmtpSink, canaries: dict[str, str]
) -> None:
    gw = wired(default_locale="en")
    world = make_world(gw, canaries, locale="fr")
    post(gw, world, "patient", canaries)
    assert drain(gw, notifier_for(gw)) == ["sent"]
    (received,) = sink.messages
    assert received.rcpt_tos == (PRACTITIONER_EMAIL,)
    msg = parsed(received.content)
    with gw.readers() as s:
        thread = get_thread(s, world.thread_id)
        assert msg["Reply-To"] == thread_reply_address(gw.keys, thread, "practitioner", "msg.example.test")
    text, _ = email_texts(received.content)
    assert "secure message" in text  # English, although the patient reads French
    with gw.readers() as s:
        stored = links.peek(s, login_token(text), "login")
        assert stored is not None and stored.practitioner_id == world.practitioner_id


def test_sms_when_the_patient_has_no_email(
    wired: Wired, notifier_for: NotifierFor, sink: SmtpSink, twilio_standin: TwilioStandIn, canaries: dict[str, str]
) -> None:
    gw = wired()
    world = make_world(gw, canaries, email=False)
    post(gw, world, "practitioner", canaries)
    assert drain(gw, notifier_for(gw)) == ["sent"]
    assert sink.messages == []
    (sent,) = twilio_standin.messages
    assert sent["to"] == canaries["phone"] and sent["from"] == "+33700000001"
    assert sent["status_callback"] == f"{PUBLIC_URL}/webhooks/twilio/status"
    with gw.readers() as s:
        code = get_thread(s, world.thread_id).code
    assert code in sent["body"] and len(sent["body"]) <= 160
    with gw.readers() as s:
        assert links.peek(s, login_token(sent["body"]), "login") is not None
    (row,) = rows(gw)
    assert (row.state, row.channel, row.provider_id) == ("sent", "sms", sent["sid"])


def test_one_notice_until_the_recipient_comes_back(
    wired: Wired, notifier_for: NotifierFor, sink: SmtpSink, canaries: dict[str, str]
) -> None:
    gw = wired()
    notifier = notifier_for(gw)
    world = make_world(gw, canaries)
    for _ in range(3):
        post(gw, world, "practitioner")
    # Posted together: the first goes out at once, the other two ride on it.
    assert sorted(drain(gw, notifier)) == ["coalesced", "coalesced", "sent"]
    assert len(sink.messages) == 1
    post(gw, world, "practitioner")
    assert drain(gw, notifier) == ["coalesced"]
    # A failed login is not a visit.
    with gw.transaction() as s:
        record(s, f"patient:{world.patient_id}", "session.login_failed", "patient", world.patient_id)
    post(gw, world, "practitioner")
    assert drain(gw, notifier) == ["coalesced"]
    # The other side of the thread has its own notices; a practitioner's audited visit counts as reading.
    post(gw, world, "patient")
    assert drain(gw, notifier) == ["sent"]
    post(gw, world, "patient")
    assert drain(gw, notifier) == ["coalesced"]
    with gw.transaction() as s:
        record(s, f"practitioner:{world.practitioner_id}", "session.login", "practitioner", world.practitioner_id)
    post(gw, world, "patient")
    assert drain(gw, notifier) == ["sent"]

    # The patient logs in with the link: the next message is notified again.
    (first_patient_notice,) = [m for m in sink.messages if m.rcpt_tos == (canaries["email"],)]
    text, _ = email_texts(first_patient_notice.content)
    with gw.transaction() as s:
        assert links.spend(s, login_token(text), "login") is not None
    post(gw, world, "practitioner")
    assert drain(gw, notifier) == ["sent"]

    # Unread, but older than the window: notified again.
    with gw.transaction() as s:
        s.execute(update(OutboxRow).where(OutboxRow.state == "sent").values(sent_at=datetime.now(timezone.utc) - timedelta(minutes=61)))
    post(gw, world, "practitioner")
    assert drain(gw, notifier) == ["sent"]
    assert [r.state for r in rows(gw)].count("sent") == 5
    assert len(sink.messages) == 5


def test_fallback_to_sms_after_a_5xx_and_the_address_marked_bouncing(
    wired: Wired, notifier_for: NotifierFor, sink: SmtpSink, twilio_standin: TwilioStandIn, canaries: dict[str, str]
) -> None:
    gw = wired()
    notifier = notifier_for(gw)
    world = make_world(gw, canaries)
    sink.fail_next(1, "550 5.1.1 Mailbox unavailable", at="rcpt")
    post(gw, world, "practitioner")
    assert drain(gw, notifier) == ["sent"]
    assert sink.messages == [] and len(twilio_standin.messages) == 1
    (row,) = rows(gw)
    assert (row.state, row.channel) == ("sent", "sms")
    assert contact(gw, world.email_contact_id).bouncing_at is not None
    with gw.readers() as s:
        actions = list(s.scalars(select(AuditEvent.action).where(AuditEvent.object_id == world.email_contact_id)))
    assert "contact.bouncing" in actions
    # From now on SMS is the patient's channel, without trying the bouncing address again.
    with gw.transaction() as s:
        add_notice(s, "login_link", patient_id=world.patient_id, thread_id=world.thread_id)
    assert drain(gw, notifier) == ["sent"]
    assert sink.messages == [] and len(twilio_standin.messages) == 2


def test_fallback_to_email_after_twilio_21610_and_no_sms_after_an_opt_out(
    wired: Wired, notifier_for: NotifierFor, sink: SmtpSink, twilio_standin: TwilioStandIn, canaries: dict[str, str]
) -> None:
    gw = wired()
    notifier = notifier_for(gw)
    world = make_world(gw, canaries)
    twilio_standin.fail_next(1, 400, 21610)
    with gw.transaction() as s:  # an SMS-first notice, as the answer to an SMS would be
        add_notice(s, "held_sms", patient_id=world.patient_id, thread_id=world.thread_id, channel="sms")
    assert drain(gw, notifier) == ["sent"]
    assert len(sink.messages) == 1 and twilio_standin.messages == []
    (row,) = rows(gw)
    assert (row.state, row.channel) == ("sent", "email")
    assert contact(gw, world.phone_contact_id).opted_out_at is not None
    with gw.transaction() as s:
        add_notice(s, "held_sms", patient_id=world.patient_id, thread_id=world.thread_id, channel="sms")
    assert drain(gw, notifier) == ["sent"]
    assert len(sink.messages) == 2
    assert [r.path for r in twilio_standin.requests].count(
        f"/2010-04-01/Accounts/{twilio_standin.account_sid}/Messages.json"
    ) == 1


def test_retry_after_smtp_4xx_and_twilio_429(
    wired: Wired, notifier_for: NotifierFor, sink: SmtpSink, twilio_standin: TwilioStandIn, canaries: dict[str, str]
) -> None:
    gw = wired()
    notifier = notifier_for(gw)
    email_world = make_world(gw, canaries, phone=False)
    sms_world = make_world(gw, canaries, email=False, suffix="2", patient_phone="+33611223355")
    sink.fail_next(1, "451 4.3.0 Try again later")
    twilio_standin.fail_next(1, 429, 20429)
    post(gw, email_world, "practitioner")
    post(gw, sms_world, "practitioner")
    before = datetime.now(timezone.utc)
    assert drain(gw, notifier, rounds=1) == ["pending", "pending"]
    waiting = rows(gw)
    assert sorted(r.error_code or "" for r in waiting) == ["smtp-451", "twilio-20429"]
    assert all(r.attempts == 1 and r.next_attempt_at > before for r in waiting)
    time.sleep(0.2)  # the backoff ceiling in these settings
    assert drain(gw, notifier) == ["sent", "sent"]
    assert len(sink.messages) == 1 and len(twilio_standin.messages) == 1
    assert all(r.state == "sent" and r.attempts == 2 for r in rows(gw))


def test_a_notice_that_can_go_nowhere_is_failed(
    wired: Wired, notifier_for: NotifierFor, sink: SmtpSink, canaries: dict[str, str]
) -> None:
    gw = wired(notice_max_attempts=2)
    notifier = notifier_for(gw)
    only_email = make_world(gw, canaries, phone=False)
    nothing = make_world(gw, canaries, email=False, phone=False, suffix="2")
    sink.fail_next(1, "550 5.1.1 Mailbox unavailable", at="rcpt")
    post(gw, only_email, "practitioner")
    post(gw, nothing, "practitioner")
    assert sorted(drain(gw, notifier)) == ["failed", "failed"]
    assert sorted((r.state, r.error_code) for r in rows(gw)) == [("failed", "no-contact"), ("failed", "smtp-550")]

    # Transient failures on every attempt end as failed too, after notice_max_attempts.
    third = make_world(gw, canaries, phone=False, suffix="3", patient_email="third@example.net")
    sink.fail_next(2, "451 4.3.0 Try again later")
    post(gw, third, "practitioner")
    assert drain(gw, notifier, rounds=1) == ["pending"]
    time.sleep(0.2)
    assert drain(gw, notifier) == ["failed"]
    with gw.readers() as s:
        last = s.scalar(select(OutboxRow).where(OutboxRow.patient_id == third.patient_id))
    assert last is not None and (last.state, last.error_code, last.attempts) == ("failed", "smtp-451", 2)


def test_acknowledgement_is_an_auto_reply_to_the_patients_email(
    wired: Wired, notifier_for: NotifierFor, sink: SmtpSink, canaries: dict[str, str]
) -> None:
    gw = wired()
    world = make_world(gw, canaries)
    original = (
        f"From: {canaries['email']}\r\nTo: r-x@msg.example.test\r\nSubject: {canaries['subject']}\r\n"
        "Message-ID: <inbound-123@mail.example.org>\r\n\r\nbody\r\n"
    ).encode()
    message_id = post(gw, world, "patient", canaries, original=original, channel="email")
    with gw.transaction() as s:
        s.execute(update(OutboxRow).values(state="coalesced"))  # only the acknowledgement matters here
        add_notice(s, "acknowledgement", patient_id=world.patient_id, thread_id=world.thread_id, message_id=message_id)
    assert drain(gw, notifier_for(gw)) == ["sent"]
    msg = parsed(sink.messages[0].content)
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["In-Reply-To"] == "<inbound-123@mail.example.org>"


def test_the_actor_is_idempotent_on_its_row_and_a_lost_claim_comes_back(
    wired: Wired, notifier_for: NotifierFor, sink: SmtpSink, canaries: dict[str, str]
) -> None:
    gw = wired(notice_lease_seconds=0.5)
    notifier = notifier_for(gw)
    world = make_world(gw, canaries)
    post(gw, world, "practitioner")
    with gw.transaction() as s:
        (row_id,) = claim_due(s, now=datetime.now(timezone.utc), lease=timedelta(seconds=0.5))
    # A broker may deliver the same message twice: the second run finds the row taken and sends nothing.
    assert notifier.deliver(row_id) == "sent"
    assert notifier.deliver(row_id) is None
    assert len(sink.messages) == 1

    # A claim whose worker died (queued, never run) is handed out again once its lease runs out.
    post(gw, world, "patient")
    with gw.transaction() as s:
        (lost,) = claim_due(s, now=datetime.now(timezone.utc), lease=timedelta(seconds=0.5))
    with gw.transaction() as s:
        assert claim_due(s, now=datetime.now(timezone.utc), lease=timedelta(seconds=0.5)) == []
    time.sleep(0.6)
    with gw.transaction() as s:
        assert claim_due(s, now=datetime.now(timezone.utc), lease=timedelta(seconds=0.5)) == [lost]
    assert notifier.deliver(lost) == "sent"
    assert len(sink.messages) == 2


def test_concurrent_dispatchers_never_claim_the_same_row(wired: Wired, canaries: dict[str, str]) -> None:
    gw = wired()
    world = make_world(gw, canaries, phone=False)
    with gw.transaction() as s:
        for _ in range(40):
            add_notice(s, "login_link", patient_id=world.patient_id, thread_id=world.thread_id)
    claimed: list[list[str]] = []
    first_in = threading.Event()

    def claim(hold: float) -> None:
        with gw.transaction() as s:
            ids = claim_due(s, now=datetime.now(timezone.utc), lease=timedelta(minutes=5), limit=25)
            first_in.set()
            time.sleep(hold)  # keep the transaction (and its row locks) open while the other one claims
        claimed.append(ids)

    a = threading.Thread(target=claim, args=(0.3,))
    a.start()
    first_in.wait(5)
    b = threading.Thread(target=claim, args=(0,))
    b.start()
    a.join()
    b.join()
    assert len(claimed) == 2
    assert set(claimed[0]).isdisjoint(claimed[1])
    assert sorted(len(c) for c in claimed) == [15, 25]
