"""Fixtures for runtime tests: `gateway run` / `gateway worker` as real processes, a slow loopback relay,
and brokers (the embedded one, Redis, RabbitMQ) each under a namespace of its own."""
from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import GATEWAY_BIN, TEST_MASTER_KEY
from tests.support.notice_world import SlowSink
from tests.support.services import free_port, port_open, unavailable

REDIS_URL = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("GATEWAY_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


@dataclass
class Proc:
    """A `gateway` subprocess whose stdout and stderr go to files (no pipe to fill up and block it)."""

    args: tuple[str, ...]
    popen: subprocess.Popen[bytes]
    stderr_path: Path
    http_port: int | None = None
    _closed: bool = field(default=False, repr=False)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> Proc:
        deadline = time.monotonic() + timeout
        marker = "runtime.started" if self.args[0] == "run" else "workers.started"
        while marker not in self.stderr:
            if self.popen.poll() is not None:
                raise AssertionError(f"gateway {self.args[0]} exited early ({self.popen.returncode}):\n{self.stderr[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"gateway {self.args[0]} did not start:\n{self.stderr[-3000:]}")
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def terminate(self, timeout: float = 40.0) -> int:
        """SIGTERM, then the exit code (the process must drain and exit by itself within `timeout`)."""
        self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(timeout)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    procs: list[Proc] = []

    def start(*args: str, env: dict[str, str]) -> Proc:
        n = len(procs)
        err = tmp_path / f"proc{n}-{args[0]}.stderr"
        with open(tmp_path / f"proc{n}.stdout", "wb") as out, open(err, "wb") as errf:
            popen = subprocess.Popen([GATEWAY_BIN, *args], env=env, cwd=tmp_path, stdout=out, stderr=errf)
        proc = Proc(tuple(args), popen, err, int(env["GATEWAY_HTTP_PORT"]) if args[0] == "run" else None)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.popen.poll() is None:
            proc.popen.kill()
            proc.popen.wait(10)


def gateway_env(db_url: str, data_dir: Path, relay: SlowSink, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(
        GATEWAY_DATA_DIR=str(data_dir),
        GATEWAY_DATABASE_URL=db_url,
        GATEWAY_MASTER_KEY=TEST_MASTER_KEY,
        GATEWAY_MAIL_DOMAIN="msg.example.test",
        GATEWAY_OUTBOUND_SMTP_URL=f"smtp://{relay.host}:{relay.port}",
        GATEWAY_PUBLIC_URL="https://portal.example.test",
        GATEWAY_HTTP_PORT=str(free_port()),
        GATEWAY_SMTP_PORT=str(free_port()),
        GATEWAY_NOTICE_LEASE_SECONDS="2",
        GATEWAY_NOTICE_RETRY_BASE_SECONDS="0.2",
        GATEWAY_NOTICE_RETRY_MAX_SECONDS="1",
        GATEWAY_NOTICE_POLL_SECONDS="0.1",
        GATEWAY_NOTICE_MAX_ATTEMPTS="100",
        GATEWAY_WORKER_THREADS="4",
        GATEWAY_LOG_LEVEL="INFO",
    )
    env.update(extra)
    return env


@dataclass(frozen=True)
class BrokerUnderTest:
    name: str
    url: str  # empty: embedded
    namespace: str


def _redis_cleanup(namespace: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{namespace}*"))
    if keys:
        client.delete(*keys)
    client.close()


def _rabbitmq_cleanup(namespace: str) -> None:
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    for suffix in ("", ".DQ", ".XQ"):
        channel.queue_delete(f"{namespace}.notices{suffix}")
    connection.close()


@pytest.fixture(params=["embedded", pytest.param("redis", marks=pytest.mark.redis), pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
def broker(request: pytest.FixtureRequest) -> Iterator[BrokerUnderTest]:
    namespace = f"gwtest-{uuid.uuid4().hex[:10]}"
    if request.param == "embedded":
        yield BrokerUnderTest("embedded", "", namespace)
        return
    if request.param == "redis":
        if not port_open("127.0.0.1", 6379):
            unavailable("Redis")
        yield BrokerUnderTest("redis", REDIS_URL, namespace)
        _redis_cleanup(namespace)
        return
    if not port_open("127.0.0.1", 5672):
        unavailable("RabbitMQ")
    yield BrokerUnderTest("rabbitmq", AMQP_URL, namespace)
    _rabbitmq_cleanup(namespace)


@pytest.fixture
def slow_relay() -> Iterator[Callable[..., SlowSink]]:
    sinks: list[SlowSink] = []

    def make(**options: Any) -> SlowSink:
        sink = SlowSink(**options)
        sink.start()
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        sink.stop()
