"""Actor runs: the dispatcher hands a claim's rows to the actor in runs (lists of row ids), and one actor
call sends a run's notices one after the other. A run gives back the rows it has not begun once it has
gone on too long or when its process is stopping; a message of one id (from before runs) still works."""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone

import dramatiq
import pytest
from sqlalchemy import select

from gateway.app import Gateway
from gateway.db.tables import OutboxRow
from gateway.workers.dispatcher import claim_due
from gateway.workers.notify import Notifier
from gateway.workers.senders import make_senders
from gateway.workers.service import NoticeService
from tests.support.notice_world import SlowSink, make_world, post, wait_for
from tests.support.smtp_sink import SmtpSink
from tests.support.twilio_standin import TwilioStandIn

Wired = Callable[..., Gateway]


def posted(gw: Gateway, canaries: dict[str, str], n: int, prefix: str) -> list[str]:
    """`n` patients of their own, a practitioner's message to each; returns their addresses."""
    addresses = [f"{prefix}{i}@example.net" for i in range(n)]
    for i, address in enumerate(addresses):
        world = make_world(gw, canaries, phone=False, suffix=str(i + 1), patient_email=address)
        post(gw, world, "practitioner", canaries)
    return addresses


def claimed(gw: Gateway) -> list[str]:
    """The due rows, claimed as the dispatcher claims them (`queued`), in order."""
    with gw.transaction() as s:
        return claim_due(s, now=datetime.now(timezone.utc), lease=timedelta(seconds=gw.settings.notice_lease_seconds))


def states(gw: Gateway) -> dict[str, tuple[str, int, datetime]]:
    with gw.readers() as s:
        return {r.id: (r.state, r.attempts, r.next_attempt_at) for r in s.scalars(select(OutboxRow))}


def recipients(sink: SmtpSink) -> list[str]:
    return sorted(r for m in sink.messages for r in m.rcpt_tos)


def test_one_actor_call_sends_every_row_of_its_run(wired: Wired, sink: SmtpSink, canaries: dict[str, str]) -> None:
    gw = wired()
    addresses = posted(gw, canaries, 5, "run")
    notifier = Notifier(gw, make_senders(gw.settings))
    try:
        ids = claimed(gw)
        notifier(ids[:4])
        notifier(ids[4])  # a message from before runs: one id
        wait_for(lambda: {state for state, _, _ in states(gw).values()} == {"sent"}, timeout=5)
    finally:
        notifier.close()
    assert recipients(sink) == sorted(addresses)


def test_a_run_past_its_time_gives_the_rows_it_has_not_begun_back(
    wired: Wired, sink: SmtpSink, canaries: dict[str, str]
) -> None:
    gw = wired()
    addresses = posted(gw, canaries, 4, "slow")
    notifier = Notifier(gw, make_senders(gw.settings), run_seconds=0.0)  # every run is "too long" after one row
    try:
        ids = claimed(gw)
        before = datetime.now(timezone.utc)
        notifier(ids)
        notifier.close()  # the first row's outcome, written behind the send, is committed
        after = states(gw)
        assert after[ids[0]][0] == "sent"
        for row_id in ids[1:]:
            state, attempts, due = after[row_id]
            assert (state, attempts) == ("pending", 0)  # not an attempt: never begun
            assert due.replace(tzinfo=timezone.utc) >= before - timedelta(seconds=1)  # due at once
        assert recipients(sink) == [addresses[0]]
        # Handed out again, they go.
        again = Notifier(gw, make_senders(gw.settings))
        try:
            for row_id in claimed(gw):
                again(row_id)
        finally:
            again.close()
    finally:
        notifier.close()
    assert recipients(sink) == sorted(addresses)
    assert {state for state, _, _ in states(gw).values()} == {"sent"}


def test_a_stopping_process_ends_its_runs_after_the_notice_in_hand(
    wired: Wired, sink: SmtpSink, canaries: dict[str, str]
) -> None:
    gw = wired()
    addresses = posted(gw, canaries, 3, "stop")
    notifier = Notifier(gw, make_senders(gw.settings))
    try:
        ids = claimed(gw)
        notifier.wind_down()
        notifier(ids)
    finally:
        notifier.close()
    after = states(gw)
    assert [after[row_id][0] for row_id in ids] == ["sent", "pending", "pending"]
    assert recipients(sink) == [addresses[0]]


class _Messages(dramatiq.Middleware):
    """Counts the notice actor's messages as the broker enqueues them (a dramatiq middleware hook)."""

    def __init__(self) -> None:
        self.runs: list[list[str]] = []
        self._lock = threading.Lock()

    def after_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message, delay: int | None) -> None:
        with self._lock:
            self.runs.append(list(message.args[0]))


def test_a_backlog_goes_to_the_worker_in_runs_and_every_notice_once(
    wired: Wired, sink: SmtpSink, canaries: dict[str, str]
) -> None:
    gw = wired(notice_poll_seconds=3600)
    addresses = posted(gw, canaries, 24, "backlog")  # a backlog before the worker starts (a restart, say)
    service = NoticeService(gw, worker=True, threads=2)
    messages = _Messages()
    service.broker.add_middleware(messages)
    service.start()
    try:
        wait_for(lambda: {state for state, _, _ in states(gw).values()} == {"sent"}, timeout=20)
    finally:
        service.stop()
    assert recipients(sink) == sorted(addresses)  # each once
    # The embedded broker holds 16 rows (8 a thread): the first claim takes 16, cut into 4 runs of 4 (at
    # least two a thread); the 8 left come in runs of 2 as the rows in memory fall to half.
    assert sorted(row for run in messages.runs for row in run) == sorted(states(gw))
    assert len(messages.runs) < 24
    assert max(len(run) for run in messages.runs) == 4


@pytest.fixture
def slow_relay() -> Iterator[SlowSink]:
    relay = SlowSink(delay=0.3)  # each DATA answered after 0.3 s: transactions of one run overlap
    relay.start()
    yield relay
    relay.stop()


def test_a_runs_emails_go_to_the_relay_together_up_to_max_sends(
    wired: Wired, canaries: dict[str, str], slow_relay: SlowSink
) -> None:
    relay = slow_relay
    gw = wired(outbound_smtp_url=f"smtp://{relay.host}:{relay.port}")
    addresses = posted(gw, canaries, 6, "together")
    together = Notifier(gw, make_senders(gw.settings))  # max_sends: one a worker thread (8)
    try:
        ids = claimed(gw)
        together(ids[:4])
        assert relay.most_in_data == 4  # one thread, four transactions at once
        assert sorted(relay.recipients()) == sorted(addresses[:4])
    finally:
        together.close()
    relay.most_in_data = 0
    capped = Notifier(gw, make_senders(gw.settings), max_sends=1)
    try:
        capped(ids[4:])
    finally:
        capped.close()
    assert relay.most_in_data == 1
    assert sorted(relay.recipients()) == sorted(addresses)
    assert {state for state, _, _ in states(gw).values()} == {"sent"}


def test_in_a_run_a_refused_email_falls_back_to_sms_and_a_deferred_one_is_retried(
    wired: Wired, sink: SmtpSink, twilio_standin: TwilioStandIn, canaries: dict[str, str]
) -> None:
    gw = wired()
    for i in range(4):
        world = make_world(gw, canaries, suffix=str(i + 1), patient_email=f"mixed{i}@example.net",
                           patient_phone=f"+3361234567{i}")
        post(gw, world, "practitioner", canaries)
    # Which of the run's transactions meets which reply depends on the order the relay sees them.
    sink.fail_next(1, "550 5.1.1 No such user", at="rcpt")
    sink.fail_next(1, "451 4.3.0 Try again later", at="rcpt")
    notifier = Notifier(gw, make_senders(gw.settings))
    try:
        notifier(claimed(gw))
    finally:
        notifier.close()
    with gw.readers() as s:
        outcomes = sorted((r.state, r.channel, r.error_code) for r in s.scalars(select(OutboxRow)))
    assert outcomes == [
        ("pending", "email", "smtp-451"),  # retried later, with backoff
        ("sent", "email", None),
        ("sent", "email", None),
        ("sent", "sms", None),  # the refused address: the patient's phone instead
    ]
    assert len(sink.messages) == 2 and len(twilio_standin.messages) == 1
