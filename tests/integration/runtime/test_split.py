"""With Redis, `gateway run --no-worker` only dispatches (rows go `queued` on the broker and wait there) and a
separate worker sends them; /healthz reports the broker. In-process here: the processes are tested elsewhere."""
from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from gateway.app import Gateway
from gateway.db.tables import OutboxRow
from gateway.runtime import Runtime
from gateway.workers.service import NoticeService
from tests.integration.runtime.conftest import REDIS_URL, _redis_cleanup
from tests.support.notice_world import SlowSink, make_world, post, wait_for
from tests.support.services import free_port, port_open, unavailable

pytestmark = [pytest.mark.redis, pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]


def states(gw: Gateway) -> list[str]:
    with gw.readers() as s:
        return list(s.scalars(select(OutboxRow.state)))


def test_run_without_worker_dispatches_and_a_worker_sends(
    settings_factory: Any, slow_relay: Callable[..., SlowSink], canaries: dict[str, str]
) -> None:
    if not port_open("127.0.0.1", 6379):
        unavailable("Redis")
    relay = slow_relay()
    namespace = f"gwtest-split-{uuid.uuid4().hex[:10]}"
    gw = Gateway(
        settings_factory(
            broker_url=REDIS_URL, broker_namespace=namespace, outbound_smtp_url=f"smtp://{relay.host}:{relay.port}",
            http_port=free_port(), smtp_port=free_port(), notice_poll_seconds=0.05, public_url="https://portal.example.test",
        )
    )
    gw.init()
    world = make_world(gw, canaries)
    runtime = Runtime(gw, worker=False).start()
    worker = None
    try:
        assert runtime.notices.worker is None
        health = httpx.get(f"http://127.0.0.1:{gw.settings.http_port}/healthz", timeout=10).json()
        assert health == {"status": "ok", "database": "ok", "broker": "ok"}
        post(gw, world, "practitioner")
        wait_for(lambda: states(gw) == ["queued"])
        assert relay.messages == []
        worker = NoticeService(gw, worker=True, dispatcher=False, threads=2).start()
        wait_for(lambda: states(gw) == ["sent"])
        assert [m.rcpt_tos for m in relay.messages] == [(canaries["email"],)]
    finally:
        runtime.stop()
        if worker is not None:
            worker.stop()
        gw.close()
        _redis_cleanup(namespace)
