"""SMS notices: hand a rendered body to Twilio's REST API, or write it to a file for development.

`FileSmsSender` never writes the number: the data dir must not hold numbers in the clear, so each SMS
file holds the body and the recipient's contact reference only.
"""
from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any, Final, Protocol

import requests
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from gateway.delivery._files import write_atomically
from gateway.delivery.errors import TransientDeliveryError, twilio_failure

TWILIO_API_BASE: Final = "https://api.twilio.com"
# The twilio client reads TWILIO_EDGE / TWILIO_REGION from os.environ when handed an empty mapping;
# our settings are read once by gateway.config, so it gets a non-empty one that sets neither.
_NO_ENVIRONMENT: Final = {"TWILIO_EDGE": "", "TWILIO_REGION": ""}


class SmsSender(Protocol):
    def send(self, body: str, *, to: str, from_: str, status_callback: str | None, recipient_ref: str) -> str:
        """Send `body` to `to` from `from_` (an E.164 number or a Messaging Service SID "MG…").

        `recipient_ref` is the recipient's contact id, for senders that must not keep the number.
        Returns the provider id (Twilio's MessageSid). Raises TransientDeliveryError or PermanentDeliveryError.
        """
        ...


class _RebasedHttpClient(TwilioHttpClient):
    """Sends what the twilio library addresses to api.twilio.com to another base URL (a local stand-in)."""

    def __init__(self, api_base: str, *, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self._api_base = api_base.rstrip("/")

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Response:
        if url.startswith(TWILIO_API_BASE + "/"):
            url = self._api_base + url[len(TWILIO_API_BASE):]
        return super().request(method, url, *args, **kwargs)


def twilio_client(account_sid: str, auth_token: str, api_base: str | None = None, *, timeout: float = 15.0) -> Client:
    """A twilio REST client that talks to `api_base` (default: Twilio's) and reads no environment."""
    if api_base is None or api_base.rstrip("/") == TWILIO_API_BASE:
        http_client = TwilioHttpClient(timeout=timeout)
    else:
        http_client = _RebasedHttpClient(api_base, timeout=timeout)
    return Client(account_sid, auth_token, http_client=http_client, environment=_NO_ENVIRONMENT)


class TwilioSmsSender:
    """Sends through Twilio's Messages API; `api_base` points it at a local stand-in in tests."""

    def __init__(self, account_sid: str, auth_token: str, api_base: str | None = None, *, timeout: float = 15.0) -> None:
        self._client = twilio_client(account_sid, auth_token, api_base, timeout=timeout)

    def __repr__(self) -> str:
        return "TwilioSmsSender()"

    def send(self, body: str, *, to: str, from_: str, status_callback: str | None, recipient_ref: str) -> str:
        options: dict[str, str] = {"to": to, "body": body}
        if from_.startswith("MG"):
            options["messaging_service_sid"] = from_
        else:
            options["from_"] = from_
        if status_callback is not None:
            options["status_callback"] = status_callback
        # Twilio's error messages quote the number ("The 'To' number +33… is not valid"): keep only codes.
        try:
            message = self._client.messages.create(**options)
        except TwilioRestException as exc:
            raise twilio_failure(exc.status, exc.code) from None
        except requests.Timeout:
            raise TransientDeliveryError("timeout") from None
        except requests.ConnectionError:
            raise TransientDeliveryError("connect") from None
        except requests.RequestException:
            raise TransientDeliveryError("network") from None
        if not message.sid:
            raise TransientDeliveryError("twilio-no-sid")
        return message.sid


class FileSmsSender:
    """Writes each SMS to `<directory>/<id>.json` holding only `recipient_ref` and `body` (mode 0600)."""

    def __init__(self, directory: Path | str) -> None:
        self._directory = Path(directory)

    def __repr__(self) -> str:
        return "FileSmsSender()"

    def send(self, body: str, *, to: str, from_: str, status_callback: str | None, recipient_ref: str) -> str:
        provider_id = "file-" + secrets.token_hex(16)
        record = json.dumps({"recipient_ref": recipient_ref, "body": body}, ensure_ascii=False).encode("utf-8")
        try:
            write_atomically(self._directory, f"{provider_id}.json", record + b"\n")
        except OSError:
            raise TransientDeliveryError("file-write") from None
        return provider_id
