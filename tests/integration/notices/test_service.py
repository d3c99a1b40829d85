"""The in-process worker (embedded broker, dispatcher thread, dramatiq Worker) through a relay outage:
every notice waits, retries with backoff, and goes out once the relay is back, exactly once."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from sqlalchemy import select

from gateway.app import Gateway
from gateway.db.tables import OutboxRow
from gateway.workers.service import NoticeService
from tests.support.notice_world import make_world, post, wait_for
from tests.support.smtp_sink import SmtpSink


def states(gw: Gateway) -> list[tuple[str, str | None, int]]:
    with gw.readers() as s:
        return [(r.state, r.error_code, r.attempts) for r in s.scalars(select(OutboxRow))]


def test_in_process_worker_rides_out_a_relay_outage(settings_factory: Any, canaries: dict[str, str]) -> None:
    relay = SmtpSink()  # its port is chosen now; it starts listening only after the outage
    gw = Gateway(
        settings_factory(
            outbound_smtp_url=f"smtp://{relay.host}:{relay.port}", public_url="https://portal.example.test",
            notice_retry_base_seconds=0.1, notice_retry_max_seconds=0.4, notice_poll_seconds=0.05,
            notice_max_attempts=100,
        )
    )
    gw.init()
    addresses = [f"patient{i}@example.net" for i in range(6)]
    worlds = [make_world(gw, canaries, phone=False, suffix=str(i + 1), patient_email=a) for i, a in enumerate(addresses)]
    service = NoticeService(gw, worker=True, threads=3).start()
    started = False
    try:
        for world in worlds:
            post(gw, world, "practitioner")
        # The relay refuses connections: every notice is retried, none is lost or given up.
        wait_for(lambda: all(s == "pending" and c == "connect" and n >= 2 for s, c, n in states(gw)) and len(states(gw)) == 6)
        relay.start()
        started = True
        wait_for(lambda: all(s == "sent" for s, _, _ in states(gw)))
        assert sorted(r for m in relay.messages for r in m.rcpt_tos) == sorted(addresses)
    finally:
        service.stop()
        if started:
            relay.stop()
        gw.close()


@pytest.fixture
def hourly_poll(settings_factory: Any) -> Iterator[tuple[SmtpSink, Gateway]]:
    """A running relay and a gateway sending to it whose dispatcher polls only hourly: within a test, only
    the wake-up of a commit sends anything."""
    relay = SmtpSink()
    relay.start()
    gw = Gateway(
        settings_factory(
            outbound_smtp_url=f"smtp://{relay.host}:{relay.port}", public_url="https://portal.example.test",
            notice_poll_seconds=3600,
        )
    )
    gw.init()
    try:
        yield relay, gw
    finally:
        relay.stop()
        gw.close()


def test_a_committed_message_wakes_the_dispatcher_at_once(
    hourly_poll: tuple[SmtpSink, Gateway], canaries: dict[str, str]
) -> None:
    # The poll is an hour: only the commit's own wake-up can send the notice within the test's wait.
    relay, gw = hourly_poll
    world = make_world(gw, canaries, phone=False, suffix="7", patient_email="wake@example.net")
    service = NoticeService(gw, worker=True, threads=1).start()
    try:
        post(gw, world, "practitioner")
        wait_for(lambda: any(s == "sent" for s, _, _ in states(gw)), timeout=10)
        assert [r for m in relay.messages for r in m.rcpt_tos] == ["wake@example.net"]
    finally:
        service.stop()


def test_commits_in_quick_succession_are_claimed_together(
    hourly_poll: tuple[SmtpSink, Gateway], canaries: dict[str, str], monkeypatch: Any
) -> None:
    # Each commit wakes the dispatcher; those within GATHER_SECONDS of a claim join the next one rather
    # than costing a claim transaction each. Rows past their lease are looked for once per poll, not at
    # every wake-up (the poll is an hour here: only at the first claim).
    from gateway.workers import dispatcher

    calls: list[bool] = []
    real = dispatcher.claim_due

    def counting(*args: Any, **kwargs: Any) -> list[str]:
        calls.append(kwargs["stale"])
        return real(*args, **kwargs)

    monkeypatch.setattr(dispatcher, "claim_due", counting)
    monkeypatch.setattr(dispatcher, "GATHER_SECONDS", 0.5)
    monkeypatch.setattr(dispatcher, "GATHER_BUSY_SECONDS", 0.5)
    relay, gw = hourly_poll
    addresses = [f"burst{i}@example.net" for i in range(6)]
    worlds = [make_world(gw, canaries, phone=False, suffix=str(i + 20), patient_email=a) for i, a in enumerate(addresses)]
    service = NoticeService(gw, worker=True, threads=2).start()
    try:
        for world in worlds:
            post(gw, world, "practitioner")
        wait_for(lambda: len(states(gw)) == 6 and all(s == "sent" for s, _, _ in states(gw)), timeout=10)
        assert sorted(r for m in relay.messages for r in m.rcpt_tos) == sorted(addresses)
        assert calls[0] is True and not any(calls[1:])
        assert len(calls) <= 4  # the first claim at start, then at most one per 0.5 s while posting
    finally:
        service.stop()
