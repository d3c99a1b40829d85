"""The email and SMS senders the settings call for, and the event loop the sync actor threads send email on.

Relay when GATEWAY_OUTBOUND_SMTP_URL is set, else .eml files under the data dir; Twilio when an account
and token are set, else SMS files under the data dir.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from email.utils import parseaddr
from typing import Any, TypeVar

from gateway.config import Settings
from gateway.delivery import (
    DkimKey,
    EmailSender,
    FileEmailSender,
    FileSmsSender,
    RelayEmailSender,
    SmsSender,
    TwilioSmsSender,
)
from gateway.delivery.errors import TransientDeliveryError

T = TypeVar("T")


@dataclass(frozen=True)
class Senders:
    email: EmailSender
    sms: SmsSender
    envelope_from: str  # the bare address of GATEWAY_NOTICE_FROM: bounces come back there
    twilio: bool  # Twilio needs the practice's own number as the sender; the file sender does not
    status_callback: str | None
    dkim: DkimKey | None = field(default=None, repr=False)


def make_senders(settings: Settings) -> Senders:
    if settings.outbound_smtp_url is not None and settings.outbound_smtp_url.get_secret_value():
        email: EmailSender = RelayEmailSender(settings.outbound_smtp_url.get_secret_value())
    else:
        email = FileEmailSender(settings.data_dir / "outbox-mail")
    twilio = bool(settings.twilio_account_sid and settings.twilio_auth_token)
    if twilio:
        assert settings.twilio_auth_token is not None
        sms: SmsSender = TwilioSmsSender(
            settings.twilio_account_sid, settings.twilio_auth_token.get_secret_value(), settings.twilio_api_base
        )
    else:
        sms = FileSmsSender(settings.data_dir / "outbox-sms")
    envelope_from = parseaddr(settings.resolved_notice_from)[1] or settings.resolved_notice_from
    dkim = None
    if settings.notice_dkim_selector and settings.notice_dkim_key_file is not None:
        dkim = DkimKey(
            selector=settings.notice_dkim_selector,
            domain=envelope_from.rpartition("@")[2],
            private_key_pem=settings.notice_dkim_key_file.read_bytes(),
        )
    return Senders(
        email=email,
        sms=sms,
        envelope_from=envelope_from,
        twilio=twilio,
        status_callback=f"{settings.resolved_public_url}/webhooks/twilio/status" if twilio else None,
        dkim=dkim,
    )


class LoopThread:
    """One asyncio loop in a daemon thread; actor threads hand it coroutines and wait for the result."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="gateway-send-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return self.wait(self.submit(coro), timeout)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start `coro` on the loop now; `wait` for its result later."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def wait(self, future: concurrent.futures.Future[T], timeout: float | None = None) -> T:
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            # Cancel the send so it cannot still deliver after this attempt is counted as failed, and retry.
            future.cancel()
            raise TransientDeliveryError("timeout") from None

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()
