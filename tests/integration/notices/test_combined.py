"""Combined: the actor threads' short transactions share one commit when they queue up together, and one
failing work fails only its own caller."""
from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import Connection, func, insert, select

from gateway.app import Gateway
from gateway.db.tables import AuditEvent, new_id, utcnow
from gateway.workers import writes
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
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    combined = Combined(gateway)
    transactions = 0
    real = writes.writing_rows

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal transactions
        transactions += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(writes, "writing_rows", counting)
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
