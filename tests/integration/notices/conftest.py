"""Fixtures for the notice tests: a loopback SMTP relay, a Twilio stand-in, and a gateway wired to both."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.workers.notify import Notifier
from gateway.workers.senders import make_senders
from tests.support.smtp_sink import SmtpSink, smtp_sink_factory  # noqa: F401 - fixture
from tests.support.twilio_standin import TwilioStandIn, twilio_standin  # noqa: F401 - fixture

PUBLIC_URL = "https://portal.example.test"


@pytest.fixture
def sink(smtp_sink_factory: Callable[..., SmtpSink]) -> SmtpSink:  # noqa: F811
    return smtp_sink_factory()


@pytest.fixture
def wired(settings_factory: Any, sink: SmtpSink, twilio_standin: TwilioStandIn) -> Iterator[Callable[..., Gateway]]:  # noqa: F811
    """`wired(**setting overrides)`: an initialised gateway whose relay is `sink` and whose Twilio is the stand-in."""
    made: list[Gateway] = []

    def make(**overrides: Any) -> Gateway:
        values: dict[str, Any] = dict(
            outbound_smtp_url=f"smtp://{sink.host}:{sink.port}",
            twilio_account_sid=twilio_standin.account_sid,
            twilio_auth_token=twilio_standin.auth_token,
            twilio_api_base=twilio_standin.base_url,
            public_url=PUBLIC_URL,
            notice_from="Notifications <notices@msg.example.test>",
            notice_retry_base_seconds=0.05,
            notice_retry_max_seconds=0.2,
            notice_poll_seconds=0.05,
        )
        values.update(overrides)
        gw = Gateway(settings_factory(**values))
        gw.init()
        made.append(gw)
        return gw

    yield make
    for gw in made:
        gw.close()


@pytest.fixture
def notifier_for() -> Iterator[Callable[[Gateway], Notifier]]:
    made: list[Notifier] = []

    def make(gw: Gateway) -> Notifier:
        notifier = Notifier(gw, make_senders(gw.settings))
        made.append(notifier)
        return notifier

    yield make
    for notifier in made:
        notifier.close()
