"""The dramatiq broker named by GATEWAY_BROKER_URL, built in this one place, and the notice actor bound to it.

Nothing here touches dramatiq's global broker at import time (a bare `@dramatiq.actor` would create a
RabbitMQ broker on import); callers build a broker from settings and bind the actor to it explicitly.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit

import dramatiq
from dramatiq.brokers.stub import StubBroker

from gateway.config import Settings

NOTIFY_ACTOR: Final = "gateway_notify"
EMBEDDED: Final = "embedded"


def broker_kind(settings: Settings) -> str:
    """`embedded`, `redis` or `rabbitmq`; ValueError for any other URL scheme."""
    url = settings.broker_url
    if not url:
        return EMBEDDED
    scheme = urlsplit(url).scheme
    if scheme in ("redis", "rediss", "unix"):
        return "redis"
    if scheme in ("amqp", "amqps"):
        return "rabbitmq"
    raise ValueError("GATEWAY_BROKER_URL must be empty, redis://… or amqp://…")


def queue_name(settings: Settings) -> str:
    return f"{settings.broker_namespace}.notices"


def make_broker(settings: Settings) -> dramatiq.Broker:
    """A broker for the settings, also made dramatiq's global one (its Worker and middleware look it up)."""
    kind = broker_kind(settings)
    broker: dramatiq.Broker
    if kind == EMBEDDED:
        # In memory and in this process: the outbox table, not the broker, is what survives a restart.
        broker = StubBroker()
    elif kind == "redis":
        from dramatiq.brokers.redis import RedisBroker

        broker = RedisBroker(url=settings.broker_url, namespace=settings.broker_namespace)
    else:
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        broker = RabbitmqBroker(url=settings.broker_url, confirm_delivery=True)
    dramatiq.set_broker(broker)
    return broker


def bind_notify(broker: dramatiq.Broker, settings: Settings, fn: Callable[[list[str]], None]) -> dramatiq.Actor:
    """The notice actor on `broker`; `fn(row_ids)` is its body (the dispatcher side may pass a stub body).
    Its message carries outbox row ids only: a list, a run of rows (`dispatcher.runs`) whose emails go to
    the relay together; a message from before runs carries one id, which the body also takes.

    Retries are the outbox's job (backoff in `next_attempt_at`, durable across broker loss), so dramatiq's
    own Retries middleware is told never to retry; the time limit stays above the longest provider timeout.
    """
    existing = broker.actors.get(NOTIFY_ACTOR)
    if existing is not None:
        existing.fn = fn
        return existing
    time_limit_ms = int(max(settings.notice_lease_seconds, 120.0) * 1000)
    return dramatiq.Actor(
        fn,
        broker=broker,
        actor_name=NOTIFY_ACTOR,
        queue_name=queue_name(settings),
        priority=0,
        options={"max_retries": 0, "time_limit": time_limit_ms},
    )


def broker_check(broker: dramatiq.Broker) -> Callable[[], None]:
    """A callable for /healthz that raises when the broker cannot be reached."""

    def check() -> None:
        client = getattr(broker, "client", None)
        if client is not None:  # Redis
            client.ping()
            return
        parameters = getattr(broker, "parameters", None)
        if parameters is not None:  # RabbitMQ: a fresh connection, since pika connections are per thread
            import pika

            pika.BlockingConnection(parameters).close()

    return check


__all__ = ["EMBEDDED", "NOTIFY_ACTOR", "bind_notify", "broker_check", "broker_kind", "make_broker", "queue_name"]
