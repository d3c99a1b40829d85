"""Notice emails: build the MIME message (optionally DKIM-signed) and hand it to a relay or to files.

`FileEmailSender`, the development default, writes each message as an .eml file: that file holds the
recipient's address in its To header, as DESIGN.md accepts for the data dir; nothing else is logged.
"""
from __future__ import annotations

import asyncio
import binascii
import functools
import logging
import random
import re
import socket
import ssl
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.parser import BytesHeaderParser
from email.policy import SMTP
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Final, Literal, Protocol
from urllib.parse import unquote, urlsplit

import aiosmtplib
from dkim import DKIMException
from dkim import sign as dkim_sign
from dkim.crypto import parse_pem_private_key

from gateway.delivery._files import write_atomically
from gateway.delivery.errors import TransientDeliveryError, smtp_failure
from gateway.notices.render import RenderedNotice

AutoSubmitted = Literal["auto-generated", "auto-replied"]

_MSG_ID: Final = re.compile(r"<[^<>\s@]+@[^<>\s@]+>")
_DOMAIN: Final = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*")
_SELECTOR: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_FILE_SAFE: Final = re.compile(r"[^A-Za-z0-9._@+-]")
# An address the email package would print as given: dot-atom local part @ dot-atom domain, ASCII, no name.
_ATOM: Final = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ADDRESS: Final = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
# The first Message-ID header, when it is on one line after only well-formed header fields (folded ones
# included); anything else goes through the email package's parser.
_MESSAGE_ID_LINE: Final = re.compile(
    rb"(?:(?!message-id:)[!-9;-~]+:[^\r\n]*\r?\n(?:[ \t][^\r\n]*\r?\n)*)*?"
    rb"message-id:[ \t]*(<[!-;=?A-~]+@[!-;=?A-~]+>)[ \t]*\r?\n(?![ \t])",
    re.IGNORECASE,
)
# dkimpy logs hashed headers (addresses included) at debug level: give it a logger that never emits.
_SILENT: Final = logging.Logger("gateway.delivery.dkim", logging.CRITICAL + 1)
_SIGNED_HEADERS: Final = (
    b"From", b"To", b"Reply-To", b"Subject", b"Date", b"Message-ID", b"In-Reply-To", b"References",
    b"MIME-Version", b"Content-Type", b"Auto-Submitted", b"X-Gateway-Notice",
)


@dataclass(frozen=True, slots=True)
class DkimKey:
    """A DKIM signing key (RSA, PEM). A key that does not parse fails here, not at the first send."""

    selector: str
    domain: str
    private_key_pem: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not _SELECTOR.fullmatch(self.selector):
            raise ValueError("dkim selector is not a DNS label")
        if not _DOMAIN.fullmatch(self.domain):
            raise ValueError("dkim domain is not a domain name")
        try:
            parse_pem_private_key(self.private_key_pem)
        except Exception:  # dkimpy raises several unrelated types for a bad key; all mean the same here
            raise ValueError("dkim private key is not an RSA private key in PEM") from None


def build_notice_email(
    rendered: RenderedNotice,
    *,
    to: str,
    sender: str,
    reply_to: str | None,
    message_id_domain: str,
    auto_submitted: AutoSubmitted,
    in_reply_to: str | None = None,
    dkim: DkimKey | None = None,
) -> bytes:
    """A multipart/alternative (text + HTML) notice, ready for SMTP (CRLF line endings).

    `auto_submitted` is "auto-replied" for an acknowledgement (RFC 3834, with `in_reply_to` the Message-ID
    it answers) and "auto-generated" otherwise. `X-Gateway-Notice: 1` lets intake recognise our own
    notices coming back. Bad addresses raise ValueError with a fixed text.
    """
    if rendered.subject is None or rendered.text is None or rendered.html is None:
        raise ValueError("notice has no email form")
    if auto_submitted not in ("auto-generated", "auto-replied"):
        raise ValueError("auto_submitted must be auto-generated or auto-replied")
    if not _DOMAIN.fullmatch(message_id_domain):
        raise ValueError("message_id_domain is not a domain name")
    if in_reply_to is not None and not _MSG_ID.fullmatch(in_reply_to):
        raise ValueError("in_reply_to is not a Message-ID")

    lines = [
        _sender_header(sender),
        _address_header("To", to),
        _address_header("Reply-To", reply_to) if reply_to is not None else "",
        _subject_header(rendered.subject),
        # What the header registry prints for an aware UTC datetime ("+0000"), as the stdlib builder did.
        f"Date: {format_datetime(datetime.now(timezone.utc))}\r\n",
        f"Message-ID: {make_msgid(domain=message_id_domain)}\r\n",
        # A msg-id is never folded nor encoded: an RFC 2047 word there would break the recipient's threading.
        f"In-Reply-To: {in_reply_to}\r\nReferences: {in_reply_to}\r\n" if in_reply_to is not None else "",
        f"Auto-Submitted: {auto_submitted}\r\n",
        # Asks Exchange and friends not to answer with out-of-office replies or read receipts.
        "X-Auto-Response-Suppress: All\r\n",
        "X-Gateway-Notice: 1\r\n",
    ]
    try:
        head = "".join(lines).encode("ascii")
    except UnicodeEncodeError:  # e.g. a non-ASCII local part, which plain SMTP cannot carry
        raise ValueError("notice email cannot be serialised") from None
    text = _quoted_printable(rendered.text)
    html = _quoted_printable(rendered.html)
    boundary = _boundary(text, html)
    # The layout email.generator writes for EmailMessage.set_content + add_alternative, built directly:
    # the email package's header objects cost several milliseconds per notice under load.
    data = b"".join((
        head,
        b'MIME-Version: 1.0\r\nContent-Type: multipart/alternative;\r\n boundary="', boundary, b'"\r\n\r\n',
        b"--", boundary, b"\r\n",
        b'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n',
        text,
        b"\r\n--", boundary, b"\r\n",
        b'Content-Type: text/html; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n'
        b"MIME-Version: 1.0\r\n\r\n",
        html,
        b"\r\n--", boundary, b"--\r\n",
    ))
    if dkim is not None:
        data = _dkim_sign(data, dkim)
    return data


def _address_header(name: str, value: str) -> str:
    """`Name: value` CRLF for a single mailbox, as the email package folds it; ValueError (fixed text) if it is not one."""
    if _PLAIN_ADDRESS.fullmatch(value) and len(name) + 2 + len(value) <= SMTP.max_line_length:
        return f"{name}: {value}\r\n"  # a bare dot-atom address: the email package prints it unchanged
    try:
        _, header = SMTP.header_store_parse(name, value)
        addresses = header.addresses
    except Exception:  # the email package raises assorted errors for a malformed address
        raise ValueError(f"{name} is not an email address") from None
    if len(addresses) != 1 or not addresses[0].domain or "\n" in value or "\r" in value:
        raise ValueError(f"{name} is not an email address")
    return header.fold(policy=SMTP)


@functools.lru_cache(maxsize=8)
def _sender_header(sender: str) -> str:
    # The sender comes from the settings (one value per process) and often has a display name to encode.
    return _address_header("From", sender)


@functools.lru_cache(maxsize=256)
def _subject_header(subject: str) -> str:
    # Subjects are template text plus a practice name: few distinct values, each folded (RFC 2047) once.
    _, header = SMTP.header_store_parse("Subject", subject)
    return header.fold(policy=SMTP)


def _quoted_printable(body: str) -> bytes:
    # Quoted-printable (RFC 2045: lines of 76 characters at most, soft breaks "=" CRLF) with CRLF line ends,
    # by the C encoder: the email package's pure-Python one cost 30 us for a notice's HTML part.
    normal = b"\r\n".join(body.encode("utf-8").splitlines()) + b"\r\n"
    return binascii.b2a_qp(normal, quotetabs=False, istext=True, header=False)


def _boundary(*parts: bytes) -> bytes:
    # email.generator's boundary form; quoted-printable parts cannot hold a run of "=", but check anyway.
    while True:
        boundary = ("=" * 15 + f"{random.randrange(sys.maxsize):019d}==").encode("ascii")
        if not any(b"--" + boundary in part for part in parts):
            return boundary


def _dkim_sign(data: bytes, key: DkimKey) -> bytes:
    try:
        signature = dkim_sign(
            data,
            key.selector.encode("ascii"),
            key.domain.encode("ascii"),
            key.private_key_pem,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=[h for h in _SIGNED_HEADERS if _has_header(data, h)],
            logger=_SILENT,
        )
    except DKIMException:
        raise ValueError("dkim signing failed") from None
    return signature + data


def _has_header(data: bytes, name: bytes) -> bool:
    head = data.split(b"\r\n\r\n", 1)[0]
    return re.search(rb"(?im)^" + re.escape(name) + rb":", head) is not None


def message_id_of(message: bytes) -> str:
    """The Message-ID header of a built message (what senders return as the provider id)."""
    found = _MESSAGE_ID_LINE.match(message)
    if found is not None:  # the usual one-line header, as build_notice_email writes it
        return found[1].decode("ascii")
    value = BytesHeaderParser(policy=SMTP).parsebytes(message).get("Message-ID")
    if value is None or not _MSG_ID.fullmatch(str(value).strip()):
        raise ValueError("message has no Message-ID")
    return str(value).strip()


class EmailSender(Protocol):
    async def send(self, message: bytes, *, mail_from: str, to: str) -> str:
        """Hand `message` over for delivery to `to`; return the provider id (the Message-ID).

        Raises TransientDeliveryError or PermanentDeliveryError.
        """
        ...


class RelayEmailSender:
    """Sends through an SMTP relay named by a URL.

    `smtp://[user:pass@]host[:25]` plain SMTP (a relay on the same host or network),
    `smtp+starttls://…[:587]` STARTTLS required, `smtps://…[:465]` TLS from the first byte.
    The provider id is the message's Message-ID, which bounces (DSNs) quote back.
    """

    _DEFAULT_PORTS: Final = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}

    def __init__(
        self,
        url: str,
        *,
        tls_context: ssl.SSLContext | None = None,
        timeout: float = 30.0,
        local_hostname: str | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in self._DEFAULT_PORTS or not parts.hostname:
            raise ValueError("relay URL must be smtp://, smtp+starttls:// or smtps://host[:port]")
        try:
            port = parts.port
        except ValueError:
            raise ValueError("relay URL has an invalid port") from None
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = port or self._DEFAULT_PORTS[parts.scheme]
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        self._tls_context = tls_context
        self._timeout = timeout
        self._local_hostname = local_hostname

    def __repr__(self) -> str:
        return f"RelayEmailSender({self._scheme}://{self._host}:{self._port})"

    async def send(self, message: bytes, *, mail_from: str, to: str) -> str:
        message_id = message_id_of(message)
        if self._local_hostname is None:
            # aiosmtplib would look the name up (socket.getfqdn, in a thread) for every message: once is enough.
            self._local_hostname = await asyncio.to_thread(socket.getfqdn)
        # Provider replies often quote the address back, so none of them is chained or logged.
        try:
            await aiosmtplib.send(
                message,
                sender=mail_from,
                recipients=[to],
                hostname=self._host,
                port=self._port,
                username=self._username,
                password=self._password,
                use_tls=self._scheme == "smtps",
                start_tls=self._scheme == "smtp+starttls",
                tls_context=self._tls_context,
                timeout=self._timeout,
                local_hostname=self._local_hostname,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise smtp_failure(exc.recipients[0].code if exc.recipients else 0) from None
        except aiosmtplib.SMTPResponseException as exc:
            raise smtp_failure(exc.code) from None
        except aiosmtplib.SMTPNotSupported:
            raise TransientDeliveryError("smtp-not-supported") from None
        except (aiosmtplib.SMTPTimeoutError, TimeoutError):
            raise TransientDeliveryError("timeout") from None
        except ssl.SSLError:
            raise TransientDeliveryError("tls") from None
        except (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPServerDisconnected, OSError):
            raise TransientDeliveryError("connect") from None
        except aiosmtplib.SMTPException:
            raise TransientDeliveryError("smtp-protocol") from None
        return message_id


class FileEmailSender:
    """Writes each message to `<directory>/<message-id>.eml` (mode 0600), atomically: temp file, then rename."""

    def __init__(self, directory: Path | str) -> None:
        self._directory = Path(directory)

    def __repr__(self) -> str:
        return "FileEmailSender()"

    async def send(self, message: bytes, *, mail_from: str, to: str) -> str:
        message_id = message_id_of(message)
        try:
            await asyncio.to_thread(self._write, message_id, message)
        except OSError:
            raise TransientDeliveryError("file-write") from None
        return message_id

    def _write(self, message_id: str, message: bytes) -> None:
        write_atomically(self._directory, _FILE_SAFE.sub("_", message_id.strip("<>")).lstrip(".") + ".eml", message)
