"""The Twilio SMS sender against a local server speaking Twilio's REST wire format."""
from __future__ import annotations

import logging

import pytest

from gateway.delivery import (
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
    TwilioSmsSender,
    twilio_failure,
)
from tests.support.services import free_port
from tests.support.twilio_standin import TwilioStandIn

PATIENT_NUMBER = "+33612345678"
PRACTICE_NUMBER = "+33700000001"
BODY = "Cabinet Dupré: new message https://portail.exemple.fr/l/kkkkkkkkkkkkkkkkkkkkkkkk Not for emergencies."
CALLBACK = "https://gw.exemple.fr/webhooks/twilio/status"


def sender_for(standin: TwilioStandIn, *, token: str | None = None) -> TwilioSmsSender:
    return TwilioSmsSender(standin.account_sid, token or standin.auth_token, standin.base_url, timeout=5)


def send(sender: TwilioSmsSender, status_callback: str | None = CALLBACK, from_: str = PRACTICE_NUMBER) -> str:
    return sender.send(BODY, to=PATIENT_NUMBER, from_=from_, status_callback=status_callback, recipient_ref="contact-42")


def failure(sender: TwilioSmsSender) -> DeliveryError:
    with pytest.raises(DeliveryError) as raised:
        send(sender)
    error = raised.value
    # Twilio's messages quote the number; nothing of them is kept or chained.
    assert error.__cause__ is None and error.__suppress_context__
    assert "612345678" not in str(error)
    return error


def test_sends_and_returns_the_message_sid(twilio_standin: TwilioStandIn) -> None:
    sid = send(sender_for(twilio_standin))
    assert sid.startswith("SM") and len(sid) == 34
    [request] = twilio_standin.requests
    assert request.method == "POST"
    assert request.path == f"/2010-04-01/Accounts/{twilio_standin.account_sid}/Messages.json"
    assert request.auth == (twilio_standin.account_sid, twilio_standin.auth_token)
    assert request.form == {"To": PATIENT_NUMBER, "From": PRACTICE_NUMBER, "Body": BODY, "StatusCallback": CALLBACK}
    assert twilio_standin.messages[0]["sid"] == sid


def test_no_status_callback_is_sent_when_none(twilio_standin: TwilioStandIn) -> None:
    send(sender_for(twilio_standin), status_callback=None)
    assert "StatusCallback" not in twilio_standin.requests[0].form


def test_a_messaging_service_can_be_the_sender(twilio_standin: TwilioStandIn) -> None:
    service = "MG" + "a" * 32
    send(sender_for(twilio_standin), from_=service)
    form = twilio_standin.requests[0].form
    assert form["MessagingServiceSid"] == service and "From" not in form


@pytest.mark.parametrize(("status", "code", "expected"), [
    (429, 20429, "twilio-20429"),
    (429, None, "twilio-http-429"),
    (500, None, "twilio-http-500"),
    (503, None, "twilio-http-503"),
])
def test_rate_limits_and_server_errors_are_transient(twilio_standin: TwilioStandIn, status: int, code: int | None, expected: str) -> None:
    twilio_standin.fail_next(1, status, code)
    sender = sender_for(twilio_standin)
    error = failure(sender)
    assert isinstance(error, TransientDeliveryError)
    assert error.code == expected
    # Twilio has recovered: the retry goes through.
    assert send(sender).startswith("SM")


@pytest.mark.parametrize("code", [21610, 21211, 21614, 21408])
def test_refusals_are_permanent(twilio_standin: TwilioStandIn, code: int) -> None:
    twilio_standin.fail_next(1, 400, code, message=f"The 'To' number {PATIENT_NUMBER} cannot receive this message.")
    error = failure(sender_for(twilio_standin))
    assert isinstance(error, PermanentDeliveryError)
    assert error.code == f"twilio-{code}"
    assert twilio_standin.messages == []


def test_bad_credentials_are_permanent(twilio_standin: TwilioStandIn) -> None:
    error = failure(sender_for(twilio_standin, token="wrong"))
    assert isinstance(error, PermanentDeliveryError)
    assert error.code == "twilio-20003"


def test_unreachable_api_is_transient() -> None:
    sender = TwilioSmsSender("AC" + "0" * 32, "token", f"http://127.0.0.1:{free_port()}", timeout=5)
    error = failure(sender)
    assert isinstance(error, TransientDeliveryError)
    assert error.code == "connect"


def test_nothing_is_logged_about_the_sms(twilio_standin: TwilioStandIn, caplog: pytest.LogCaptureFixture) -> None:
    twilio_standin.fail_next(1, 400, 21211, message=f"The 'To' number {PATIENT_NUMBER} is not valid.")
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(PermanentDeliveryError):
            send(sender_for(twilio_standin))
        send(sender_for(twilio_standin))
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "612345678" not in logged and "portail.exemple.fr/l/" not in logged


def test_repr_hides_credentials(twilio_standin: TwilioStandIn) -> None:
    text = repr(sender_for(twilio_standin))
    assert twilio_standin.auth_token not in text and twilio_standin.account_sid not in text


@pytest.mark.parametrize(("status", "code", "kind", "name"), [
    # Status callbacks carry an error code and no HTTP status.
    (None, 30003, PermanentDeliveryError, "twilio-30003"),
    (None, 30005, PermanentDeliveryError, "twilio-30005"),
    (None, 30006, PermanentDeliveryError, "twilio-30006"),
    (None, 30001, TransientDeliveryError, "twilio-30001"),
    (None, 30008, PermanentDeliveryError, "twilio-30008"),
    (400, 21610, PermanentDeliveryError, "twilio-21610"),
    (404, None, PermanentDeliveryError, "twilio-http-404"),
    (502, None, TransientDeliveryError, "twilio-http-502"),
])
def test_twilio_failures_are_classified(status: int | None, code: int | None, kind: type, name: str) -> None:
    error = twilio_failure(status, code)
    assert type(error) is kind and error.code == name


@pytest.mark.parametrize("code", ["", "Twilio-21610", "smtp 550", f"to-{PATIENT_NUMBER}", "smtp-550-kanary@example.org"])
def test_error_codes_cannot_carry_text(code: str) -> None:
    with pytest.raises(ValueError):
        PermanentDeliveryError(code)
