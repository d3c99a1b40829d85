"""Small pieces of the workers: backoff bounds, which contact a failure marks, broker selection and health."""
from __future__ import annotations

import random
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from dramatiq.brokers.stub import StubBroker

from gateway.config import Settings
from gateway.db.tables import ContactPoint
from gateway.workers.broker import NOTIFY_ACTOR, bind_notify, broker_check, broker_kind, make_broker, queue_name
from gateway.workers.channels import deliverable, mark_contact
from gateway.workers.notify import backoff_seconds
from tests.support.services import REPO, free_port, port_open, unavailable


def settings(**values: object) -> Settings:
    return Settings(data_dir=Path("/nonexistent"), **values)  # type: ignore[arg-type]


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    rng = random.Random(7)
    for attempt, ceiling in ((1, 30), (2, 60), (3, 120), (4, 240), (8, 3600), (30, 3600)):
        delays = [backoff_seconds(attempt, base=30, cap=3600, rng=rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 4  # jitter spreads retries out


def contact(kind: str, **values: object) -> ContactPoint:
    fields: dict[str, object] = {"value_ct": b"x", "verified_at": datetime.now(timezone.utc), **values}
    return ContactPoint(id="c1", kind=kind, **fields)


@pytest.mark.parametrize(
    ("kind", "code", "column"),
    [
        ("email", "smtp-550", "bouncing_at"),
        ("email", "smtp-554", "bouncing_at"),
        ("email", "smtp-535", None),  # our relay login, not their mailbox
        ("phone", "twilio-21610", "opted_out_at"),
        ("phone", "twilio-30003", "unreachable_at"),
        ("phone", "twilio-30005", "unreachable_at"),
        ("phone", "twilio-30006", "unreachable_at"),
        ("phone", "twilio-21211", "unreachable_at"),
        ("phone", "twilio-20003", None),  # our credentials
        ("phone", "twilio-21212", None),  # our sender number
    ],
)
def test_a_permanent_failure_marks_the_right_contact_column(kind: str, code: str, column: str | None) -> None:
    c = contact(kind)
    assert mark_contact(c, code) == column
    assert deliverable(c) is (column is None)


def test_deliverable_needs_a_verified_contact_unless_pinned() -> None:
    c = contact("email", verified_at=None)
    assert not deliverable(c) and deliverable(c, pinned=True)
    assert not deliverable(contact("phone", value_ct=None), pinned=True)  # erased


def test_broker_kind_from_the_url() -> None:
    assert broker_kind(settings()) == "embedded"
    assert broker_kind(settings(broker_url="redis://127.0.0.1:6379/0")) == "redis"
    assert broker_kind(settings(broker_url="amqp://guest:guest@127.0.0.1:5672/")) == "rabbitmq"
    with pytest.raises(ValueError):
        broker_kind(settings(broker_url="kafka://x"))


def test_embedded_broker_and_an_actor_dramatiq_never_retries() -> None:
    s = settings(broker_namespace="ns1")
    broker = make_broker(s)
    assert isinstance(broker, StubBroker)
    actor = bind_notify(broker, s, lambda row_id: None)
    assert actor.actor_name == NOTIFY_ACTOR and actor.queue_name == queue_name(s) == "ns1.notices"
    assert actor.options["max_retries"] == 0
    assert bind_notify(broker, s, print) is actor  # bound once per broker
    broker_check(broker)()  # nothing to reach


def test_importing_the_workers_sets_no_global_broker() -> None:
    code = (
        "import dramatiq.broker as b, gateway.workers.service, gateway.workers.cli, gateway.runtime;"
        "assert b.global_broker is None, b.global_broker"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


@pytest.mark.redis
def test_redis_broker_health() -> None:
    if not port_open("127.0.0.1", 6379):
        unavailable("Redis")
    broker_check(make_broker(settings(broker_url="redis://127.0.0.1:6379/0")))()
    with pytest.raises(Exception):
        broker_check(make_broker(settings(broker_url=f"redis://127.0.0.1:{free_port()}/0")))()


@pytest.mark.rabbitmq
def test_rabbitmq_broker_health() -> None:
    if not port_open("127.0.0.1", 5672):
        unavailable("RabbitMQ")
    broker_check(make_broker(settings(broker_url="amqp://guest:guest@127.0.0.1:5672/%2F")))()
    with pytest.raises(Exception):
        broker_check(make_broker(settings(broker_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F")))()


@pytest.mark.parametrize(
    ("rows", "threads", "sizes"),
    [
        (0, 8, []),
        (1, 8, [1]),
        (16, 8, [1] * 16),  # up to twice the threads: one row a run, every thread sends at once
        (40, 8, [2] * 20),
        (200, 8, [8] * 25),  # a backlog: runs of RUN_ROWS at most
        (24, 4, [3] * 8),
        (10, 4, [1] * 10),
        (11, 1, [5, 5, 1]),
    ],
)
def test_runs_cut_a_claim_into_at_least_twice_as_many_runs_as_threads(rows: int, threads: int, sizes: list[int]) -> None:
    from gateway.workers.dispatcher import RUN_ROWS, runs

    ids = [f"row{i}" for i in range(rows)]
    cut = runs(ids, threads=threads)
    assert [len(run) for run in cut] == sizes
    assert [row for run in cut for row in run] == ids  # every row once, in the claim's order
    assert all(len(run) <= RUN_ROWS for run in cut)
    if rows:
        assert len(cut) >= min(rows, 2 * threads)
