"""Combined: the actor threads' short transactions share one commit when they queue up together, and one
failing work fails only its own caller."""
from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import Connection, event, func, insert, select

from gateway.app import Gateway
from gateway.db.tables import AuditEvent, new_id, utcnow
from gateway.workers.writes import Combined

_INSERT = insert(AuditEvent.__table__)


def _event(name: str) -> Any:
    def work(db: Connection) -> str:
        db.execute(_INSERT, {"id": new_id(), "at": utcnow(), "actor": "test", "action": name, "object_kind": "x"})
        return name

    return work


def _queued_together(combined: Combined, threads: list[threading.Thread]) -> None:
    """Start the threads while holding the turn, so that their works all wait for the next one; join them."""
    with combined._turn:
        for t in threads:
            t.start()
        while len(combined._waiting) < len(threads):
            threading.Event().wait(0.01)
    for t in threads:
        t.join(10)


def _actions(gw: Gateway) -> list[str]:
    with gw.readers() as s:
        return sorted(s.scalars(select(AuditEvent.action).where(AuditEvent.actor == "test")))


def test_works_waiting_together_share_a_transaction_and_each_gets_its_result(
    gateway: Gateway, request: pytest.FixtureRequest
) -> None:
    combined = Combined(gateway)
    transactions = 0

    def counting(_connection: Any) -> None:
        nonlocal transactions
        transactions += 1

    engine = gateway.sessions.kw["bind"]
    event.listen(engine, "commit", counting)
    request.addfinalizer(lambda: event.remove(engine, "commit", counting))
    # Hold the turn while six threads queue their work: the next turn runs all six in one transaction.
    results: dict[int, str] = {}
    _queued_together(combined, [
        threading.Thread(target=lambda i=i: results.__setitem__(i, combined.run(_event(f"a{i}")))) for i in range(6)
    ])
    assert results == {i: f"a{i}" for i in range(6)}
    assert transactions == 1
    assert _actions(gateway) == [f"a{i}" for i in range(6)]


def test_a_failing_work_fails_alone_and_the_others_are_committed(gateway: Gateway) -> None:
    combined = Combined(gateway)

    def failing(db: Connection) -> None:
        _event("rolled-back")(db)
        raise ValueError("boom")

    outcomes: dict[str, object] = {}

    def call(name: str, work: Any) -> None:
        try:
            outcomes[name] = combined.run(work)
        except ValueError as exc:
            outcomes[name] = exc

    _queued_together(combined, [
        threading.Thread(target=call, args=("b1", _event("b1"))),
        threading.Thread(target=call, args=("bad", failing)),
        threading.Thread(target=call, args=("b2", _event("b2"))),
    ])
    assert outcomes["b1"] == "b1" and outcomes["b2"] == "b2"
    assert isinstance(outcomes["bad"], ValueError)
    assert _actions(gateway) == ["b1", "b2"]
    with gateway.readers() as s:
        assert s.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "rolled-back")) == 0


def test_a_deferred_work_is_committed_without_another_caller_and_rides_along_with_one(gateway: Gateway) -> None:
    combined = Combined(gateway, delay=0.05)
    try:
        # Alone: the flusher commits it, after its delay.
        combined.later(_event("alone"))
        assert _actions(gateway) == []
        deadline = threading.Event()
        for _ in range(200):
            if _actions(gateway) == ["alone"]:
                break
            deadline.wait(0.01)
        assert _actions(gateway) == ["alone"]
        # Beside a caller that waits: committed with that caller's work, in its turn.
        with combined._turn:
            combined.later(_event("deferred"))
            waiter = threading.Thread(target=combined.run, args=(_event("waited"),))
            waiter.start()
            while len(combined._waiting) < 2:
                threading.Event().wait(0.01)
        waiter.join(10)
        assert _actions(gateway) == ["alone", "deferred", "waited"]
    finally:
        combined.close()


def test_close_commits_what_is_deferred_and_later_after_close_waits(gateway: Gateway) -> None:
    combined = Combined(gateway, delay=60)  # the flusher would wait a minute: close does not
    combined.later(_event("c1"))
    combined.later(_event("c2"))
    threading.Event().wait(0.1)  # the flusher has started its minute's wait
    started = time.monotonic()
    combined.close()
    assert time.monotonic() - started < 5
    assert _actions(gateway) == ["c1", "c2"]
    combined.later(_event("c3"))  # closed: committed before it returns
    assert _actions(gateway) == ["c1", "c2", "c3"]


def test_a_failing_deferred_work_is_logged_and_the_others_committed(gateway: Gateway, capsys: Any) -> None:
    combined = Combined(gateway, delay=60)

    def failing(db: Connection) -> None:
        raise ValueError("boom")

    combined.later(_event("d1"))
    combined.later(failing)
    combined.later(_event("d2"))
    combined.close()
    assert _actions(gateway) == ["d1", "d2"]
    out = capsys.readouterr()
    assert "writes.deferred_failed" in out.out + out.err and "ValueError" in out.out + out.err
