"""A local HTTP server speaking Twilio's REST wire format, for the parts of Twilio the gateway uses.

    POST   /2010-04-01/Accounts/{sid}/Messages.json                 send an SMS (form body) -> message JSON
    GET    /2010-04-01/Accounts/{sid}/Messages/{msid}/Media/{mid}   media bytes, with their content type
    GET    /2010-04-01/Accounts/{sid}/Messages/{msid}/Media/{mid}.json   media metadata
    DELETE /2010-04-01/Accounts/{sid}/Messages/{msid}/Media/{mid}   delete media -> 204

Every request needs HTTP basic auth `sid:token` (401 with error 20003 otherwise) and is recorded.
`fail_next(n, status, code)` makes the next n API calls fail the way Twilio does.
`sign`, `inbound_sms` and `status_callback` build the webhooks Twilio sends (signed with this account's token).
"""
from __future__ import annotations

import base64
import json
import re
import secrets
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest
from twilio.request_validator import RequestValidator

API_VERSION = "2010-04-01"
_MESSAGES = re.compile(rf"/{API_VERSION}/Accounts/(?P<sid>AC\w+)/Messages\.json")
_MEDIA = re.compile(rf"/{API_VERSION}/Accounts/(?P<sid>AC\w+)/Messages/(?P<msid>(?:SM|MM)\w+)/Media/(?P<mid>ME\w+?)(?P<json>\.json)?")

ERROR_MESSAGES = {
    20003: "Authenticate",
    20404: "The requested resource was not found",
    20429: "Too Many Requests",
    21211: "The 'To' number is not a valid phone number.",
    21610: "Attempt to send to unsubscribed recipient",
    21614: "'To' number is not a valid mobile number",
}


def new_sid(prefix: str) -> str:
    """A Twilio-shaped id: two letters and 32 hex digits ("SM…", "MM…", "ME…")."""
    return prefix + secrets.token_hex(16)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    form: dict[str, str]
    auth: tuple[str, str] | None
    headers: dict[str, str]


@dataclass
class _Media:
    content: bytes
    content_type: str
    deleted: bool = False


@dataclass
class _Failure:
    status: int
    code: int | None
    message: str


@dataclass
class TwilioStandIn:
    account_sid: str = field(default_factory=lambda: "AC" + secrets.token_hex(16))
    auth_token: str = field(default_factory=lambda: secrets.token_hex(16))
    requests: list[RecordedRequest] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    deleted_media: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: list[_Failure] = []
        self._media: dict[tuple[str, str], _Media] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        # A short poll keeps stop() quick: serve_forever only notices shutdown between polls.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="twilio-standin", daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def media_url(self, message_sid: str, media_sid: str) -> str:
        return f"{self.base_url}/{API_VERSION}/Accounts/{self.account_sid}/Messages/{message_sid}/Media/{media_sid}"

    def start(self) -> TwilioStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def fail_next(self, count: int, status: int, code: int | None = None, message: str | None = None) -> None:
        """Answer the next `count` API calls with `status` and a Twilio error body carrying `code`."""
        text = message or ERROR_MESSAGES.get(code or 0, HTTPStatus(status).phrase)
        with self._lock:
            self._failures.extend([_Failure(status, code, text)] * count)

    def add_media(self, message_sid: str, media_sid: str, content: bytes, content_type: str) -> str:
        """Register media for an inbound MMS; returns its URL (as Twilio puts in MediaUrl0)."""
        with self._lock:
            self._media[(message_sid, media_sid)] = _Media(content, content_type)
        return self.media_url(message_sid, media_sid)

    # -- webhooks Twilio would send to the gateway, signed with this account's auth token --

    def sign(self, url: str, params: Mapping[str, str] | str, *, token: str | None = None) -> str:
        """X-Twilio-Signature for a request to `url` (form fields, or a JSON body when the URL has bodySHA256)."""
        validator = RequestValidator(token or self.auth_token)
        return validator.compute_signature(url, {} if isinstance(params, str) else params)

    def inbound_sms(
        self,
        *,
        to: str,
        from_: str,
        body: str,
        message_sid: str | None = None,
        media: Sequence[tuple[bytes, str]] = (),
    ) -> dict[str, str]:
        """The form of an inbound SMS webhook, as Twilio posts it; `media` (content, type) pairs are served
        here, at the MediaUrl{i} the form names."""
        sid = message_sid or new_sid("MM" if media else "SM")
        form = {
            "ToCountry": "FR", "ToState": "", "SmsMessageSid": sid, "NumMedia": str(len(media)), "ToCity": "",
            "FromZip": "", "SmsSid": sid, "FromState": "", "SmsStatus": "received", "FromCity": "", "Body": body,
            "FromCountry": "FR", "To": to, "ToZip": "", "NumSegments": "1", "MessageSid": sid,
            "AccountSid": self.account_sid, "From": from_, "ApiVersion": API_VERSION,
        }
        for i, (content, content_type) in enumerate(media):
            form[f"MediaUrl{i}"] = self.add_media(sid, new_sid("ME"), content, content_type)
            form[f"MediaContentType{i}"] = content_type
        return form

    def status_callback(self, message_sid: str, status: str, *, error_code: int | None = None) -> dict[str, str]:
        """The form of a message status callback."""
        form = {
            "MessageSid": message_sid, "SmsSid": message_sid, "MessageStatus": status, "SmsStatus": status,
            "AccountSid": self.account_sid, "ApiVersion": API_VERSION,
        }
        if error_code is not None:
            form["ErrorCode"] = str(error_code)
        return form

    # -- request handling, called from the server's threads --

    def _next_failure(self) -> _Failure | None:
        with self._lock:
            return self._failures.pop(0) if self._failures else None

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _create_message(self, form: dict[str, str]) -> dict[str, Any]:
        sid = "SM" + secrets.token_hex(16)
        now = formatdate(usegmt=True).replace("GMT", "+0000")
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{sid}.json"
        resource = {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": form.get("Body", ""),
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": form.get("From"),
            "messaging_service_sid": form.get("MessagingServiceSid"),
            "num_media": "0",
            "num_segments": "1",
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "accepted" if "MessagingServiceSid" in form else "queued",
            "subresource_uris": {"media": uri.replace(".json", "/Media.json")},
            "to": form.get("To"),
            "uri": uri,
        }
        with self._lock:
            self.messages.append(resource | {"status_callback": form.get("StatusCallback")})
        return resource

    def _media_for(self, message_sid: str, media_sid: str) -> _Media | None:
        with self._lock:
            media = self._media.get((message_sid, media_sid))
            return None if media is None or media.deleted else media

    def _delete_media(self, message_sid: str, media_sid: str) -> bool:
        with self._lock:
            media = self._media.get((message_sid, media_sid))
            if media is None or media.deleted:
                return False
            media.deleted = True
            self.deleted_media.append((message_sid, media_sid))
            return True


def _handler_for(standin: TwilioStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "twilio-standin"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
            pass  # requests carry numbers and bodies: nothing goes to stderr

        def do_POST(self) -> None:
            self._serve("POST")

        def do_GET(self) -> None:
            self._serve("GET")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            form = {k: v[-1] for k, v in parse_qs(raw.decode("utf-8"), keep_blank_values=True).items()}
            path = self.path.split("?", 1)[0]
            auth = _basic_auth(self.headers.get("Authorization"))
            standin._record(RecordedRequest(method, path, form, auth, dict(self.headers.items())))

            if auth != (standin.account_sid, standin.auth_token):
                return self._error(401, 20003)
            messages, media = _MESSAGES.fullmatch(path), _MEDIA.fullmatch(path)
            sid = (messages or media).group("sid") if (messages or media) else None
            if sid is not None and sid != standin.account_sid:
                return self._error(404, 20404)
            failure = standin._next_failure()
            if failure is not None:
                return self._error(failure.status, failure.code, failure.message)

            if messages and method == "POST":
                if not form.get("To") or not (form.get("From") or form.get("MessagingServiceSid")) or "Body" not in form:
                    return self._error(400, 21604, "A 'To' phone number, a 'From' and a 'Body' are required.")
                return self._json(201, standin._create_message(form))
            if media and method == "GET":
                item = standin._media_for(media.group("msid"), media.group("mid"))
                if item is None:
                    return self._error(404, 20404)
                if media.group("json"):
                    return self._json(200, {
                        "account_sid": standin.account_sid,
                        "content_type": item.content_type,
                        "parent_sid": media.group("msid"),
                        "sid": media.group("mid"),
                        "uri": path,
                    })
                return self._send(200, item.content, item.content_type)
            if media and method == "DELETE":
                if not standin._delete_media(media.group("msid"), media.group("mid")):
                    return self._error(404, 20404)
                return self._send(204, b"", None)
            return self._error(404, 20404)

        def _error(self, status: int, code: int | None, message: str | None = None) -> None:
            body: dict[str, Any] = {
                "code": code,
                "message": message or ERROR_MESSAGES.get(code or 0, HTTPStatus(status).phrase),
                "more_info": f"https://www.twilio.com/docs/errors/{code}" if code else None,
                "status": status,
            }
            self._json(status, body)

        def _json(self, status: int, body: dict[str, Any]) -> None:
            self._send(status, json.dumps(body).encode(), "application/json; charset=utf-8")

        def _send(self, status: int, body: bytes, content_type: str | None) -> None:
            self.send_response(status)
            if content_type:
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body:
                self.wfile.write(body)

    return Handler


def _basic_auth(header: str | None) -> tuple[str, str] | None:
    if not header or not header.startswith("Basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    except ValueError:
        return None
    return user, password


@pytest.fixture
def twilio_standin() -> Iterator[TwilioStandIn]:
    standin = TwilioStandIn().start()
    yield standin
    standin.stop()
