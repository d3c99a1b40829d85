"""The SMTP relay sender against a real SMTP server on loopback: success, 4xx, 5xx, refusal, TLS, AUTH."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from gateway.delivery import (
    DeliveryError,
    PermanentDeliveryError,
    RelayEmailSender,
    TransientDeliveryError,
    build_notice_email,
)
from gateway.notices import NoticeContext, render
from tests.support.services import free_port
from tests.support.smtp_sink import SmtpSink, TlsPair

PUBLIC_URL = "https://portail.exemple.fr"
PATIENT = "kanary.patient@example.org"
SENDER = "bounces@gw.exemple.fr"

SinkFactory = Callable[..., SmtpSink]


def notice_email() -> bytes:
    ctx = NoticeContext(practice_name="Cabinet Dupré", locale="en", login_url=PUBLIC_URL + "/l/" + "k" * 43)
    return build_notice_email(
        render("new_message", ctx, public_url=PUBLIC_URL),
        to=PATIENT,
        sender=f"Notices <{SENDER}>",
        reply_to="r-7f3k2q9x@gw.exemple.fr",
        message_id_domain="gw.exemple.fr",
        auto_submitted="auto-generated",
    )


def send(url: str, message: bytes, **options: Any) -> str:
    return asyncio.run(RelayEmailSender(url, timeout=5, **options).send(message, mail_from=SENDER, to=PATIENT))


def failure(url: str, **options: Any) -> DeliveryError:
    with pytest.raises(DeliveryError) as raised:
        send(url, notice_email(), **options)
    error = raised.value
    # Nothing the relay said (it often quotes the address) travels with the error.
    assert error.__cause__ is None and error.__suppress_context__
    assert "kanary" not in str(error)
    return error


def test_delivers_to_the_relay(smtp_sink_factory: SinkFactory) -> None:
    sink = smtp_sink_factory()
    message = notice_email()
    provider_id = send(f"smtp://{sink.host}:{sink.port}", message)
    assert len(sink.messages) == 1
    received = sink.messages[0]
    assert received.mail_from == SENDER
    assert received.rcpt_tos == (PATIENT,)
    assert received.content.replace(b"\r\n", b"\n") == message.replace(b"\r\n", b"\n")
    assert provider_id.startswith("<") and provider_id.encode() in received.content
    assert not received.tls and received.authenticated_as is None


@pytest.mark.parametrize("stage", ["mail", "rcpt", "data"])
def test_4xx_is_transient(smtp_sink_factory: SinkFactory, stage: str) -> None:
    sink = smtp_sink_factory()
    sink.fail_next(1, f"451 4.3.0 <{PATIENT}> try again later", at=stage)  # type: ignore[arg-type]
    error = failure(f"smtp://{sink.host}:{sink.port}")
    assert isinstance(error, TransientDeliveryError)
    assert error.code == "smtp-451"
    assert sink.messages == []
    # The relay is fine again: the retry goes through.
    send(f"smtp://{sink.host}:{sink.port}", notice_email())
    assert len(sink.messages) == 1


@pytest.mark.parametrize(("stage", "reply", "code"), [
    ("rcpt", f"550 5.1.1 <{PATIENT}>: Recipient address rejected", "smtp-550"),
    ("data", "554 5.7.1 Message rejected as spam", "smtp-554"),
    ("mail", "553 5.7.1 Sender not allowed", "smtp-553"),
])
def test_5xx_is_permanent(smtp_sink_factory: SinkFactory, stage: str, reply: str, code: str) -> None:
    sink = smtp_sink_factory()
    sink.fail_next(1, reply, at=stage)  # type: ignore[arg-type]
    error = failure(f"smtp://{sink.host}:{sink.port}")
    assert isinstance(error, PermanentDeliveryError)
    assert error.code == code
    assert sink.messages == []


def test_connection_refused_is_transient() -> None:
    error = failure(f"smtp://127.0.0.1:{free_port()}")
    assert isinstance(error, TransientDeliveryError)
    assert error.code == "connect"


def test_starttls_with_auth(smtp_sink_factory: SinkFactory, sink_tls: TlsPair) -> None:
    sink = smtp_sink_factory(tls=sink_tls, require_starttls=True, auth=("relay-user", "s3cret/pass"))
    send(f"smtp+starttls://relay-user:s3cret%2Fpass@localhost:{sink.port}", notice_email(), tls_context=sink_tls.client)
    assert len(sink.messages) == 1
    assert sink.messages[0].tls
    assert sink.messages[0].authenticated_as == "relay-user"


def test_implicit_tls(smtp_sink_factory: SinkFactory, sink_tls: TlsPair) -> None:
    sink = smtp_sink_factory(tls=sink_tls, implicit_tls=True)
    send(f"smtps://localhost:{sink.port}", notice_email(), tls_context=sink_tls.client)
    assert len(sink.messages) == 1
    assert sink.messages[0].tls


def test_wrong_password_is_permanent(smtp_sink_factory: SinkFactory, sink_tls: TlsPair) -> None:
    sink = smtp_sink_factory(tls=sink_tls, auth=("relay-user", "right"))
    error = failure(f"smtp+starttls://relay-user:wrong@localhost:{sink.port}", tls_context=sink_tls.client)
    assert isinstance(error, PermanentDeliveryError)
    assert error.code == "smtp-535"


def test_untrusted_certificate_is_transient(smtp_sink_factory: SinkFactory, sink_tls: TlsPair) -> None:
    # The default context does not trust the sink's self-signed certificate.
    sink = smtp_sink_factory(tls=sink_tls)
    error = failure(f"smtp+starttls://localhost:{sink.port}")
    assert isinstance(error, TransientDeliveryError)
    assert error.code == "tls"


def test_starttls_required_but_not_offered_is_transient(smtp_sink_factory: SinkFactory) -> None:
    sink = smtp_sink_factory()
    error = failure(f"smtp+starttls://localhost:{sink.port}")
    assert isinstance(error, TransientDeliveryError)
    assert error.code == "smtp-protocol"


def test_nothing_is_logged_about_the_message(smtp_sink_factory: SinkFactory, caplog: pytest.LogCaptureFixture) -> None:
    sink = smtp_sink_factory()
    sink.fail_next(1, f"550 5.1.1 <{PATIENT}> unknown", at="rcpt")
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(PermanentDeliveryError):
            send(f"smtp://{sink.host}:{sink.port}", notice_email())
        send(f"smtp://{sink.host}:{sink.port}", notice_email())
    # aiosmtpd ("mail.log") is the test's server, not ours.
    ours = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("mail.log"))
    assert "kanary" not in ours and "portail.exemple.fr/l/" not in ours


def test_repr_hides_credentials() -> None:
    sender = RelayEmailSender("smtps://relay-user:hunter2@smtp.exemple.fr")
    assert "hunter2" not in repr(sender) and "relay-user" not in repr(sender)
    assert repr(sender) == "RelayEmailSender(smtps://smtp.exemple.fr:465)"


@pytest.mark.parametrize("url", ["http://smtp.exemple.fr", "smtp://", "smtp://smtp.exemple.fr:notaport", "smtp.exemple.fr:25"])
def test_bad_relay_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="relay URL"):
        RelayEmailSender(url)
