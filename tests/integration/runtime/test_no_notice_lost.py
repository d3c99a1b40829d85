"""At-least-once delivery on every broker: a worker killed (SIGKILL) in the middle of sending and a relay
outage lose no notice, and duplicates stay bounded by what was in flight when the worker died."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from gateway.app import Gateway
from gateway.db.tables import OutboxRow
from tests.integration.runtime.conftest import BrokerUnderTest, Proc, gateway_env
from tests.support.notice_world import SlowSink, make_world, post, wait_for

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # processes share one SQLite file (WAL)

NOTICES = 24
THREADS = 4


def test_a_killed_worker_and_a_relay_outage_lose_no_notice(
    broker: BrokerUnderTest,
    spawn: Callable[..., Proc],
    slow_relay: Callable[..., SlowSink],
    settings_factory: Any,
    db_url: str,
    tmp_path: Path,
    canaries: dict[str, str],
) -> None:
    relay = slow_relay(delay=0.15)
    gw = Gateway(settings_factory())
    gw.init()
    addresses = [f"patient{i}@example.net" for i in range(NOTICES)]
    worlds = [make_world(gw, canaries, phone=False, suffix=str(i + 1), patient_email=a) for i, a in enumerate(addresses)]
    env = gateway_env(db_url, tmp_path / "data", relay, GATEWAY_BROKER_URL=broker.url,
                      GATEWAY_BROKER_NAMESPACE=broker.namespace, GATEWAY_WORKER_THREADS=str(THREADS))
    command = ("run",) if broker.name == "embedded" else ("worker",)
    first = spawn(*command, env=env)
    # External brokers: the survivor is another `gateway worker`, or (Redis) `gateway run` with its own worker.
    second = None
    if broker.name != "embedded":
        second = spawn(*(("run",) if broker.name == "redis" else command), env=env)
    first.wait_ready()
    if second is not None:
        second.wait_ready()

    # A relay outage first: the next transactions are refused for now (421), then it recovers.
    relay.fail_next(6, "421 4.3.2 Service not available, try later", at="mail")
    for world in worlds:
        post(gw, world, "practitioner", canaries)

    # Kill a worker while it is inside an SMTP transaction, after a few notices went out.
    wait_for(lambda: len(relay.messages) >= 3 and relay.in_data > 0, timeout=30)
    first.kill()
    if broker.name == "embedded":  # its broker died with it: the outbox is all that is left
        second = spawn(*command, env=env).wait_ready()
    assert second is not None

    wait_for(lambda: set(addresses) <= set(relay.recipients()), timeout=45)
    received = relay.recipients()
    duplicates = len(received) - len(addresses)
    assert duplicates <= THREADS, f"{duplicates} duplicates for {THREADS} sends in flight"
    wait_for(lambda: outbox_states(gw) == {"sent"}, timeout=10)
    assert second.terminate() == 0
    logs = first.stderr + second.stderr
    assert "smtp-421" in logs  # the outage was met, and retried
    assert "outbox.reclaimed" in second.stderr  # what the killed worker held came back after its lease
    for proc in (first, second):
        assert_clean(proc.stderr, canaries, addresses)
    gw.close()


def outbox_states(gw: Gateway) -> set[str]:
    with gw.readers() as s:
        return set(s.scalars(select(OutboxRow.state)))


def assert_clean(log: str, canaries: dict[str, str], addresses: list[str]) -> None:
    for value in [*canaries.values(), *addresses]:
        assert value not in log
    assert "notice.sent" in log or "workers.started" in log
