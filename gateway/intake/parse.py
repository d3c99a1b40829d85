"""Parse raw inbound email bytes into a `ParsedEmail`: headers decoded, body as text, attachments, kind.

`parse` is total: any bytes end in a `ParsedEmail` or an `Unparseable` (bytes that are not an email
at all). The stdlib `email` package is not total on hostile input, so every call into it that can
trip on malformed data goes through `_guard`.
"""
from __future__ import annotations

import hashlib
import mimetypes
import re
import threading
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email import policy
from email.generator import BytesGenerator
from email.headerregistry import HeaderRegistry
from email.message import Message
from email.parser import BytesParser
from email.policy import EmailPolicy
from email.utils import parsedate_to_datetime
from io import BytesIO
from typing import Any, Final, Literal, TypeVar
from urllib.parse import unquote

from gateway.errors import InvalidInput
from gateway.intake.quotes import strip_reply_text
from gateway.intake.text import decode_bytes, html_to_text, printable, repair_surrogates, unflow

Kind = Literal["message", "auto_reply", "bounce", "own_notice"]

NOTICE_HEADER: Final = "X-Gateway-Notice"  # set on every notice we send, so one coming back is recognised


class Unparseable(InvalidInput):
    """The bytes are not an email at all. The message is a fixed code, never content."""

    def __init__(self, code: Literal["empty", "no_headers", "too_deep"]) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes
    content_id: str | None
    inline: bool

    def __repr__(self) -> str:  # names and contents are patient data: keep them out of logs and tracebacks
        return f"Attachment(content_type={self.content_type!r}, size={len(self.data)}, inline={self.inline})"


@dataclass(frozen=True)
class Bounce:
    recipients: tuple[str, ...]
    permanent: bool

    def __repr__(self) -> str:
        return f"Bounce(recipients={len(self.recipients)}, permanent={self.permanent})"


@dataclass(frozen=True)
class ParsedEmail:
    message_id: str | None
    dedupe_id: str
    from_address: str | None
    from_domain: str | None
    subject: str
    body: str
    full_text: str
    attachments: tuple[Attachment, ...]
    kind: Kind
    bounce: Bounce | None
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    date: datetime | None
    auto_submitted: str | None
    # Every Authentication-Results value as received (unfolded), topmost first: trust-header authentication
    # reads the topmost without parsing the message again.
    authentication_results: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return (f"ParsedEmail(kind={self.kind!r}, body_chars={len(self.body)}, "
                f"attachments={len(self.attachments)}, bounce={self.bounce!r})")


T = TypeVar("T")


class _TolerantPolicy(EmailPolicy):
    """`policy.default`, except that a header its parsers choke on is returned as its raw text.

    The stdlib header parsers raise (IndexError and friends) on some malformed values, even from inside
    the feed parser; every caller here only needs the text, which `Message` methods handle as well.
    """

    def header_fetch_parse(self, name: str, value: str) -> Any:
        # The MIME walk asks each part for its Content-Type many times (type, charset, format, filename...);
        # parsing it once per message is about a third of the time spent parsing a small message.
        fetched: dict[tuple[str, str], Any] | None = getattr(_FETCHED, "headers", None)
        if fetched is not None and (hit := fetched.get((name, value))) is not None:
            return hit
        try:
            parsed = super().header_fetch_parse(name, value)
        except RecursionError:
            raise  # too deep a message: `parse` turns this into Unparseable
        except Exception:  # see the class docstring: any parser bug means "use the raw value"
            parsed = value
        if fetched is not None and isinstance(name, str) and isinstance(value, str):
            fetched[(name, value)] = parsed
        return parsed


class _HeaderClasses(HeaderRegistry):
    """The stdlib's header factory, except that the class for a header name is made once: the stdlib makes
    a new class with `type()` for every header value it parses (15 us each, a few per message)."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[str, type] = {}

    def __getitem__(self, name: str) -> type:
        key = name.lower()
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = super().__getitem__(name)
        return made


_POLICY: Final = _TolerantPolicy(header_factory=_HeaderClasses())
_HEADERS: Final = _POLICY.header_factory
# Parsed headers of the message being parsed in this thread (header objects are immutable); dropped when
# `parse` returns, so nothing of one message outlives its parse.
_FETCHED: Final = threading.local()


def _guard(call: Callable[[], T], default: T) -> T:
    try:
        return call()
    except RecursionError:
        raise  # too deep a message: `parse` turns this into Unparseable
    except Exception:  # the stdlib email parser raises assorted errors on hostile input; treat as absent
        return default


# --- headers -------------------------------------------------------------------------------------

_FOLD: Final = re.compile(r"\r?\n(?=[ \t])")
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _raw_values(msg: Message, name: str) -> list[str]:
    """Header values as received (8-bit bytes repaired), unfolded; `email` decoding is applied later."""
    lowered = name.lower()
    values = _guard(lambda: [v for k, v in msg.raw_items() if k.lower() == lowered], [])
    return [_FOLD.sub("", repair_surrogates(v) if isinstance(v, str) else "") for v in values]


def _decoded(name: str, raw: str) -> str:
    value = _guard(lambda: str(_HEADERS(name, raw)), raw)
    return _CONTROL.sub(" ", repair_surrogates(value)).replace("\n", " ").replace("\r", " ").strip()


def _first(msg: Message, name: str) -> str | None:
    values = _raw_values(msg, name)
    return _decoded(name, values[0]) if values else None


_DOMAIN: Final = re.compile(r"[^\s@<>()\[\],;:\"\\]+")


def _from_address(msg: Message) -> tuple[str | None, str | None]:
    values = _raw_values(msg, "From")
    if len(values) != 1:
        return None, None
    addresses = _guard(lambda: _HEADERS("From", values[0]).addresses, ())
    if len(addresses) != 1:
        return None, None
    local = repair_surrogates(_guard(lambda: addresses[0].username, ""))
    domain = repair_surrogates(_guard(lambda: addresses[0].domain, "")).lower().rstrip(".")
    if not local or any(c.isspace() or not c.isprintable() for c in local) or not _DOMAIN.fullmatch(domain):
        return None, None
    if "." not in domain or domain.startswith(".") or ".." in domain:
        return None, None
    return f"{local}@{domain}", domain


_MSGID: Final = re.compile(r"<([^<>\s]+)>")


def _message_id(msg: Message) -> str | None:
    values = _raw_values(msg, "Message-ID")
    if not values:
        return None
    value = values[0].strip()
    found = _MSGID.search(value)
    token = found.group(1) if found else (value.split()[0] if value.split() else "")
    token = token.strip("<>")
    return token[:998] if token and token.isprintable() else None


def _msgid_list(msg: Message, name: str) -> tuple[str, ...]:
    ids: list[str] = []
    for value in _raw_values(msg, name):
        found = _MSGID.findall(value) or [t.strip("<>") for t in re.split(r"[\s,]+", value) if "@" in t]
        ids.extend(i for i in found if i and i.isprintable() and i not in ids)
    return tuple(ids)


def _date(msg: Message) -> datetime | None:
    value = _first(msg, "Date")
    if not value:
        return None
    parsed = _guard(lambda: parsedate_to_datetime(value), None)
    if parsed is None:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


# --- MIME structure ------------------------------------------------------------------------------

_MAX_DEPTH: Final = 40
_REPORT_PARTS: Final = frozenset({"message/delivery-status", "message/rfc822", "text/rfc822-headers",
                                  "message/disposition-notification", "message/feedback-report",
                                  "message/global-delivery-status", "message/global",
                                  "message/global-headers"})


@dataclass
class _Walk:
    """What one pass over the MIME tree finds."""

    plain: list[tuple[str, str]] = field(default_factory=list)  # (kind "plain"|"html", decoded source)
    leaves: list[Message] = field(default_factory=list)
    delivery_status: list[Message] = field(default_factory=list)
    report_type: str | None = None


def _content_type(part: Message) -> str:
    return _guard(lambda: part.get_content_type().lower(), "text/plain")


def _disposition(part: Message) -> str | None:
    return _guard(lambda: part.get_content_disposition(), None)


def _payload_bytes(part: Message) -> bytes:
    data = _guard(lambda: part.get_payload(decode=True), None)
    return data if isinstance(data, bytes) else b""


def _is_text_body(part: Message) -> bool:
    return (_content_type(part) in ("text/plain", "text/html") and _disposition(part) != "attachment"
            and not _guard(part.get_filename, None))


def _children(part: Message) -> list[Message]:
    payload = _guard(part.get_payload, [])
    return [p for p in payload if isinstance(p, Message)] if isinstance(payload, list) else []


def _decoded_text(part: Message) -> str:
    charset = _guard(lambda: part.get_content_charset(), None)
    text = printable(decode_bytes(_payload_bytes(part), charset).replace("\r\n", "\n").replace("\r", "\n"))
    if _content_type(part) == "text/plain" and str(_guard(lambda: part.get_param("format"), "")).lower() == "flowed":
        delsp = str(_guard(lambda: part.get_param("delsp"), "")).lower() == "yes"
        text = unflow(text, delsp=delsp)
    return text


def _orphan_text(part: Message) -> str:
    """Text of a multipart whose boundary never appears: `email` leaves it as one string."""
    payload = _guard(part.get_payload, None)
    if not isinstance(payload, str):
        return ""
    data = payload.encode("utf-8", "surrogateescape")
    return printable(decode_bytes(data).replace("\r\n", "\n").replace("\r", "\n"))


def _walk(root: Message) -> _Walk:
    found = _Walk()
    # (part, depth, may it be the body?) — iterative: hostile nesting must not exhaust the stack.
    stack: list[tuple[Message, int, bool]] = [(root, 0, True)]
    while stack:
        part, depth, body_ok = stack.pop()
        ctype = _content_type(part)
        if ctype.startswith("multipart/"):
            if depth >= _MAX_DEPTH:
                continue
            children = _children(part)
            subtype = ctype.split("/", 1)[1]
            if not children:
                if body_ok and (text := _orphan_text(part)).strip():
                    found.plain.append(("plain", text))
                continue
            if subtype == "signed":
                children = children[:1]  # the second part is the signature itself
            elif subtype == "encrypted":
                children = []
            if subtype == "report":
                found.report_type = found.report_type or str(_guard(lambda: part.get_param("report-type"), "")).lower()
                for child in children:
                    if _content_type(child) == "message/delivery-status":
                        found.delivery_status.append(child)
                children = [c for c in children if _content_type(c) not in _REPORT_PARTS]
            eligible = [body_ok] * len(children)
            if subtype == "alternative":
                eligible = [body_ok and i == _best_alternative(children) for i in range(len(children))]
            stack.extend(reversed([(c, depth + 1, e) for c, e in zip(children, eligible)]))
        elif ctype == "message/delivery-status":
            found.delivery_status.append(part)
        elif _is_text_body(part):
            if body_ok:
                found.plain.append(("html" if ctype == "text/html" else "plain", _decoded_text(part)))
            # else: an alternative not chosen is the same content again, neither body nor attachment
        else:
            found.leaves.append(part)
    return found


def _best_alternative(children: list[Message]) -> int:
    """Index of the alternative to read: plain text when it says something, else the richest one."""
    for i, child in enumerate(children):
        if _content_type(child) == "text/plain" and _is_text_body(child) and _decoded_text(child).strip():
            return i
    for i in range(len(children) - 1, -1, -1):
        ctype = _content_type(children[i])
        if ctype == "text/html" or ctype.startswith("multipart/"):
            return i
    return len(children) - 1


# --- attachments ---------------------------------------------------------------------------------

_CID: Final = re.compile(r"""cid:([^"'\s>)]+)""", re.IGNORECASE)
_EXTENSIONS: Final = {"image/jpeg": ".jpg", "image/png": ".png", "image/gif": ".gif", "image/heic": ".heic",
                      "image/heif": ".heif", "image/webp": ".webp", "image/tiff": ".tiff", "image/bmp": ".bmp",
                      "application/pdf": ".pdf", "text/plain": ".txt", "text/html": ".html",
                      "message/rfc822": ".eml", "text/calendar": ".ics", "application/octet-stream": ".bin"}
_MAX_FILENAME: Final = 200


def _safe_filename(name: str | None) -> str | None:
    if not name:
        return None
    name = repair_surrogates(name)
    if "=?" in name:  # RFC 2047 inside a parameter: not standard, but Outlook and Gmail send it
        name = _decoded("subject", name)
    name = unicodedata.normalize("NFC", name).replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable()).strip().strip(".").strip()
    if len(name) > _MAX_FILENAME:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: _MAX_FILENAME - len(ext) - 1] + dot + ext) if dot and len(ext) <= 10 else name[:_MAX_FILENAME]
    return name or None


def _generated_name(index: int, content_type: str) -> str:
    extension = _EXTENSIONS.get(content_type) or _guard(lambda: mimetypes.guess_extension(content_type), None)
    return f"attachment-{index}{extension or '.bin'}"


def _leaf_data(part: Message) -> bytes:
    if _content_type(part).startswith("message/"):
        inner = _children(part)
        if not inner:
            return _payload_bytes(part)

        def serialise() -> bytes:
            out = BytesIO()
            BytesGenerator(out, policy=policy.default.clone(linesep="\r\n")).flatten(inner[0])
            return out.getvalue()

        return _guard(serialise, b"")
    return _payload_bytes(part)


def _attachments(leaves: list[Message], cids: set[str]) -> tuple[Attachment, ...]:
    found: list[Attachment] = []
    for part in leaves:
        data = _leaf_data(part)
        filename = _safe_filename(_guard(part.get_filename, None))
        content_id = (_first(part, "Content-ID") or "").strip().strip("<>").strip() or None
        inline = content_id is not None and content_id.lower() in cids
        if not (data or filename):
            continue
        content_type = _content_type(part)
        found.append(Attachment(
            filename=filename or _generated_name(len(found) + 1, content_type),
            content_type=content_type, data=data, content_id=content_id, inline=inline,
        ))
    return tuple(found)


# --- kind ----------------------------------------------------------------------------------------

_AUTO_REPLY_HEADERS: Final = ("X-Autoreply", "X-Autorespond", "X-AutoReply-From", "X-Mail-Autoreply")
_BULK_PRECEDENCE: Final = frozenset({"bulk", "junk", "list", "auto_reply", "auto-reply"})
# Only phrases that autoresponders write: a patient's own subject ("Absence : justificatif", "Je suis
# absent au rendez-vous", "Out of office until Monday, is my prescription ready?") must stay a message,
# since a discarded message gets 250 and is never seen.
_OUT_OF_OFFICE: Final = re.compile(
    r"^\s*(?:"
    r"out of (?:the )?office\s*(?:[:\-–(\[]|$)"
    r"|automatic reply\b|auto[\s-]?reply\b|autoreply\b|auto:"
    r"|r[ée]ponse automatique\b|message automatique\b|absence du bureau\b|absente? du bureau\b"
    r"|absent\(e\) du bureau\b|message d'absence\b|absente?\s*$"
    r"|absente?\s*[:\-–]\s*(?:de\s+)?retour\b|absence\s*[:\-–]\s*cong[ée]s\b"
    r"|abwesenheitsnotiz\b|automatische antwort\b|respuesta autom[áa]tica\b"
    r"|fuera de la oficina\b|risposta automatica\b|fuori sede\b"
    r")",
    re.IGNORECASE,
)


def _null_sender(envelope_sender: str | None) -> bool:
    if envelope_sender is None:
        return False
    sender = envelope_sender.strip().strip("<>").strip()
    return not sender or sender.split("@", 1)[0].lower() == "mailer-daemon"


def _automated(msg: Message, subject: str, envelope_sender: str | None, report_type: str | None) -> bool:
    auto_submitted = _first(msg, "Auto-Submitted")
    if auto_submitted and auto_submitted.split(";", 1)[0].strip().lower() not in ("", "no"):
        return True
    for name in _AUTO_REPLY_HEADERS:
        value = _first(msg, name)
        if value is not None and value.strip().lower() not in ("no", "false", "0"):
            return True
    if (_first(msg, "X-Autogenerated") or "").strip().lower() == "reply":
        return True
    for name in ("Precedence", "X-Precedence"):
        if (_first(msg, name) or "").strip().lower() in _BULK_PRECEDENCE:
            return True
    # A read receipt or abuse report is a machine talking; RFC 3834 also sends auto-replies from <>.
    return bool(_OUT_OF_OFFICE.match(subject) or report_type or _null_sender(envelope_sender))


def _dsn_blocks(part: Message) -> list[dict[str, str]]:
    blocks: list[dict[str, str]] = []
    children = _children(part)
    if children:
        for child in children:
            items = _guard(lambda c=child: list(c.raw_items()), [])
            blocks.append({k.lower(): _FOLD.sub("", repair_surrogates(v)).strip() for k, v in items})
        return blocks
    text = decode_bytes(_payload_bytes(part)).replace("\r\n", "\n")
    for chunk in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in _FOLD.sub(" ", chunk).split("\n"):
            name, colon, value = line.partition(":")
            if colon:
                fields[name.strip().lower()] = value.strip()
        blocks.append(fields)
    return blocks


def _normalise_address(value: str) -> str:
    address = value.split(";", 1)[-1].strip().strip("<>").strip()
    local, at, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}" if at else address


def _bounce(parts: list[Message]) -> Bounce:
    permanent: list[str] = []
    temporary: list[str] = []
    for part in parts:
        for block in _dsn_blocks(part):
            recipient = block.get("final-recipient") or block.get("original-recipient")
            if not recipient:
                continue
            action = block.get("action", "").split()[0].lower() if block.get("action", "").split() else ""
            status = block.get("status", "").strip()
            address = _normalise_address(recipient)
            if action == "failed" or status.startswith("5"):
                permanent.append(address)
            elif action == "delayed" or status.startswith("4"):
                temporary.append(address)
    if permanent:
        return Bounce(tuple(dict.fromkeys(permanent)), True)
    return Bounce(tuple(dict.fromkeys(temporary)), False)


# --- the whole message ---------------------------------------------------------------------------


def _texts(walk: _Walk) -> tuple[str, str, set[str]]:
    """(full text, text to trim for display, cid references) from the body parts."""
    full: list[str] = []
    display: list[str] = []
    cids: set[str] = set()
    for kind, source in walk.plain:
        if kind == "html":
            cids.update(unquote(c).strip("<>").lower() for c in _CID.findall(source))
            full.append(html_to_text(source))
            display.append(html_to_text(source, drop_quotes=True))
        else:
            full.append(source.strip("\n"))
            display.append(source)
    return "\n\n".join(t for t in full if t.strip()), "\n\n".join(t for t in display if t.strip()), cids


def parse(raw: bytes, envelope_sender: str | None = None) -> ParsedEmail:
    """Parse an inbound message. `envelope_sender` is the SMTP MAIL FROM ("" or "<>" for a bounce)."""
    if not raw.strip():
        raise Unparseable("empty")
    _FETCHED.headers = {}
    try:
        return _parse(raw, envelope_sender)
    except RecursionError:  # `email` recurses over nested parts; a hostile nesting depth ends here
        raise Unparseable("too_deep") from None
    finally:
        _FETCHED.headers = None


def _parse(raw: bytes, envelope_sender: str | None) -> ParsedEmail:
    # Leading blank lines would end the header section before it starts (some relays add them), and a
    # byte-order mark would hide the first header.
    msg = BytesParser(policy=_POLICY).parsebytes(raw.lstrip().removeprefix(b"\xef\xbb\xbf"))
    if not msg.keys():
        raise Unparseable("no_headers")
    walk = _walk(msg)
    full_text, display_source, cids = _texts(walk)
    subject = _first(msg, "Subject") or ""
    message_id = _message_id(msg)
    from_address, from_domain = _from_address(msg)

    bounce = None
    report_type = walk.report_type
    if (_first(msg, NOTICE_HEADER) or "").strip() == "1":
        kind: Kind = "own_notice"
    elif walk.delivery_status and (report_type == "delivery-status" or _null_sender(envelope_sender)):
        kind, bounce = "bounce", _bounce(walk.delivery_status)
    elif _automated(msg, subject, envelope_sender, report_type):
        kind = "auto_reply"
    else:
        kind = "message"

    body = strip_reply_text(display_source)
    if not body.strip():
        body = full_text  # our trimming never leaves a patient's message empty
    auto_submitted = _first(msg, "Auto-Submitted")
    return ParsedEmail(
        message_id=message_id,
        dedupe_id=message_id or "sha256:" + hashlib.sha256(raw).hexdigest(),
        from_address=from_address,
        from_domain=from_domain,
        subject=subject,
        body=body,
        full_text=full_text,
        attachments=_attachments(walk.leaves, cids),
        kind=kind,
        bounce=bounce,
        in_reply_to=_msgid_list(msg, "In-Reply-To"),
        references=_msgid_list(msg, "References"),
        date=_date(msg),
        auto_submitted=auto_submitted or None,
        authentication_results=tuple(_raw_values(msg, "Authentication-Results")),
    )
