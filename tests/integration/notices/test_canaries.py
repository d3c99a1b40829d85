"""Canary strings planted in every field of the message, thread, patient and practitioner never reach a
notice (every kind, on every channel it is sent on), a log line or a metric."""
from __future__ import annotations

import json
import logging
from collections.abc import Callable

import pytest
import structlog
from prometheus_client import REGISTRY, generate_latest
from sqlalchemy import select

from gateway.app import Gateway
from gateway.db.tables import OutboxRow
from gateway.logs import configure
from gateway.notices import KINDS
from gateway.outbox import add_notice
from gateway.workers.notify import Notifier
from tests.support.notice_world import PRACTITIONER_EMAIL, drain, make_world, parsed, post
from tests.support.smtp_sink import SmtpSink
from tests.support.twilio_standin import TwilioStandIn


def fragments(canaries: dict[str, str]) -> list[str]:
    found = [value for value in canaries.values()]
    found += [value.split()[0] for value in canaries.values()]  # the distinctive first word of each
    found += [canaries["phone"].lstrip("+"), canaries["phone"][-9:], PRACTITIONER_EMAIL, "canary"]
    return found


def assert_clean(where: str, text: str, canaries: dict[str, str]) -> None:
    lowered = text.lower()
    for fragment in fragments(canaries):
        assert fragment.lower() not in lowered, f"{where} contains a canary"


@pytest.fixture
def logs_at_debug(caplog: pytest.LogCaptureFixture):  # type: ignore[no-untyped-def]
    """The production logging set-up at its most talkative, every structlog event and stdlib record captured."""
    # Configured once per process: loggers cache the processor list they first saw, which capture_logs edits
    # in place, so configuring again would leave already-used loggers outside the capture.
    if not structlog.is_configured():
        configure("DEBUG")
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as events:
        yield events, caplog


def test_no_canary_in_any_notice_log_or_metric(
    wired: Callable[..., Gateway],
    notifier_for: Callable[[Gateway], Notifier],
    sink: SmtpSink,
    twilio_standin: TwilioStandIn,
    canaries: dict[str, str],
    logs_at_debug,  # type: ignore[no-untyped-def]
) -> None:
    events, caplog = logs_at_debug
    gw = wired(notice_coalesce_minutes=0)
    world = make_world(gw, canaries)
    message_id = post(gw, world, "practitioner", canaries)
    post(gw, world, "patient", canaries)
    expected = {"email": 2, "sms": 0}  # the two notices of the posts above
    with gw.transaction() as s:
        pinned = {"email": world.email_contact_id, "sms": world.phone_contact_id}
        for kind in KINDS.values():
            for channel in sorted(kind.channels):
                add_notice(
                    s, kind.name, patient_id=world.patient_id, thread_id=world.thread_id, message_id=message_id,
                    contact_id=pinned[channel], channel=channel,
                )
                expected[channel] += 1
            if "email" in kind.channels:
                add_notice(s, kind.name, practitioner_id=world.practitioner_id, thread_id=world.thread_id)
                expected["email"] += 1
    outcomes = drain(gw, notifier_for(gw))
    with gw.readers() as s:
        states = {r.id: (r.kind, r.state, r.error_code) for r in s.scalars(select(OutboxRow))}
    assert all(state == "sent" for _, state, _ in states.values()), states
    assert outcomes.count("sent") == len(states)
    assert len(sink.messages) == expected["email"]
    assert len(twilio_standin.messages) == expected["sms"]

    for received in sink.messages:
        msg = parsed(received.content)
        # The recipient's own address is in To (it has to be); nothing else may name anyone.
        headers = "\n".join(f"{k}: {v}" for k, v in msg.items() if k.lower() != "to")
        assert_clean("a notice header", headers, canaries)
        for part in msg.walk():
            if part.get_content_maintype() == "text":
                assert_clean("a notice body", part.get_content(), canaries)
        raw_without_to = b"\n".join(line for line in received.content.splitlines() if not line.lower().startswith(b"to:"))
        assert_clean("a raw notice", raw_without_to.decode("utf-8", "replace"), canaries)
    for sent in twilio_standin.messages:
        assert_clean("an SMS notice", sent["body"], canaries)

    assert events, "the notifier logged nothing: the log check would prove nothing"
    assert_clean("a structlog event", json.dumps(events, default=str), canaries)
    assert_clean("a log record", "\n".join(r.getMessage() for r in caplog.records), canaries)
    metrics = generate_latest(REGISTRY).decode()
    assert "gateway_notices_total" in metrics
    assert_clean("/metrics", metrics, canaries)
