"""The notice email: its headers, its two alternative parts, and its DKIM signature."""
from __future__ import annotations

import base64
import email
import re
import shutil
import subprocess
from email.policy import default
from email.utils import parsedate_to_datetime
from pathlib import Path

import dkim
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.delivery import DkimKey, build_notice_email, message_id_of
from gateway.notices import NoticeContext, RenderedNotice, render
from tests.support.services import unavailable

PUBLIC_URL = "https://portail.exemple.fr"
LOGIN_URL = PUBLIC_URL + "/l/" + "q" * 43
PATIENT = "kanary.patient@example.org"


@pytest.fixture(scope="module")
def notice() -> RenderedNotice:
    ctx = NoticeContext(practice_name="Cabinet Dupré", locale="fr", login_url=LOGIN_URL)
    return render("new_message", ctx, public_url=PUBLIC_URL)


def build(notice: RenderedNotice, **overrides: object) -> bytes:
    options: dict[str, object] = {
        "to": f"Kanary Patient <{PATIENT}>",
        "sender": "Messagerie sécurisée <notifications@gw.exemple.fr>",
        "reply_to": "r-7f3k2q9x@gw.exemple.fr",
        "message_id_domain": "gw.exemple.fr",
        "auto_submitted": "auto-generated",
    }
    options.update(overrides)
    return build_notice_email(notice, **options)  # type: ignore[arg-type]


def test_headers(notice: RenderedNotice) -> None:
    raw = build(notice)
    msg = email.message_from_bytes(raw, policy=default)
    assert msg["From"].addresses[0].addr_spec == "notifications@gw.exemple.fr"
    assert msg["To"].addresses[0].addr_spec == PATIENT
    assert msg["Reply-To"] == "r-7f3k2q9x@gw.exemple.fr"
    assert msg["Subject"] == notice.subject
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["X-Gateway-Notice"] == "1"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert msg["In-Reply-To"] is None and msg["References"] is None
    assert parsedate_to_datetime(msg["Date"]).utcoffset() is not None
    assert re.fullmatch(r"<[^@<>]+@gw\.exemple\.fr>", msg["Message-ID"])
    assert message_id_of(raw) == msg["Message-ID"]


def test_line_endings_are_crlf(notice: RenderedNotice) -> None:
    raw = build(notice)
    assert b"\r\n" in raw
    assert b"\n" not in raw.replace(b"\r\n", b"")


def test_message_ids_are_unique(notice: RenderedNotice) -> None:
    assert len({message_id_of(build(notice)) for _ in range(50)}) == 50


def test_parts_are_the_rendered_text_and_html(notice: RenderedNotice) -> None:
    msg = email.message_from_bytes(build(notice), policy=default)
    assert msg.get_content_type() == "multipart/alternative"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    # On the wire lines end in CRLF; decoded, the parts are the rendered text and HTML.
    assert parts[0].get_content().replace("\r\n", "\n") == notice.text
    assert parts[1].get_content().replace("\r\n", "\n") == notice.html


def test_acknowledgement_is_an_rfc3834_auto_reply() -> None:
    ack = render("acknowledgement", NoticeContext(practice_name="Cabinet Dupré", locale="en"), public_url=PUBLIC_URL)
    raw = build(ack, auto_submitted="auto-replied", in_reply_to="<CAF00d+x@mail.example.org>", reply_to=None)
    msg = email.message_from_bytes(raw, policy=default)
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["In-Reply-To"] == "<CAF00d+x@mail.example.org>"
    assert msg["References"] == "<CAF00d+x@mail.example.org>"
    assert msg["Reply-To"] is None


def test_an_sms_only_notice_has_no_email_form() -> None:
    sms = render("verify_sms", NoticeContext(practice_name="Cabinet Dupré", locale="fr", code="123456"), public_url=PUBLIC_URL)
    with pytest.raises(ValueError, match="no email form"):
        build(sms)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("to", "kanary.patient-at-example.org"),
        ("to", f"{PATIENT}\r\nBcc: kanary.other@example.org"),
        ("to", f"{PATIENT}, kanary.other@example.org"),
        ("reply_to", "not an address kanary"),
        ("sender", ""),
    ],
)
def test_bad_addresses_are_refused_without_quoting_them(notice: RenderedNotice, field: str, value: str) -> None:
    with pytest.raises(ValueError) as raised:
        build(notice, **{field: value})
    assert "kanary" not in str(raised.value).lower()


@pytest.mark.parametrize(
    "overrides",
    [{"auto_submitted": "no"}, {"in_reply_to": "CAF00d@mail.example.org"}, {"in_reply_to": "<a@b>\r\nBcc: x@y"}, {"message_id_domain": "bad domain"}],
)
def test_bad_options_are_refused(notice: RenderedNotice, overrides: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        build(notice, **overrides)


@pytest.fixture(scope="module")
def rsa_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, str]:
    """A fresh RSA key (PEM) and the p= value of its DKIM DNS record."""
    openssl = shutil.which("openssl")
    if openssl is None:
        unavailable("openssl command (to make a DKIM key)")
    key = tmp_path_factory.mktemp("dkim") / "dkim.key"
    subprocess.run([openssl, "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(key)], check=True, capture_output=True)
    public_der = subprocess.run([openssl, "pkey", "-in", str(key), "-pubout", "-outform", "DER"], check=True, capture_output=True).stdout
    return Path(key).read_bytes(), base64.b64encode(public_der).decode()


def test_dkim_signature_verifies(notice: RenderedNotice, rsa_key: tuple[bytes, str]) -> None:
    pem, public = rsa_key
    raw = build(notice, dkim=DkimKey("notices2026", "gw.exemple.fr", pem))
    assert raw.startswith(b"DKIM-Signature:")
    record = f"v=DKIM1; k=rsa; p={public}".encode()

    def dns(name: bytes, timeout: float = 5) -> bytes | None:
        return record if name == b"notices2026._domainkey.gw.exemple.fr." else None

    assert dkim.verify(raw, dnsfunc=dns)
    signature = email.message_from_bytes(raw, policy=default)["DKIM-Signature"]
    signed = {h.strip().lower() for h in re.search(r"h=([^;]+)", signature.replace(" ", "")).group(1).split(":")}  # type: ignore[union-attr]
    assert {"from", "to", "subject", "date", "message-id", "reply-to", "auto-submitted", "x-gateway-notice"} <= signed
    # Tampering with the body (a relay "fixing" the link, say) breaks the signature.
    assert not dkim.verify(raw.replace(b"q" * 20, b"z" * 20), dnsfunc=dns)


def test_dkim_key_hides_itself_and_refuses_garbage(rsa_key: tuple[bytes, str]) -> None:
    pem, _ = rsa_key
    key = DkimKey("notices2026", "gw.exemple.fr", pem)
    assert "PRIVATE" not in repr(key) and pem[40:80].decode() not in repr(key)
    with pytest.raises(ValueError, match="private key"):
        DkimKey("notices2026", "gw.exemple.fr", b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ValueError, match="selector"):
        DkimKey("bad selector", "gw.exemple.fr", pem)


def test_a_long_message_id_is_answered_verbatim() -> None:
    # Outlook's Message-IDs exceed one 78-character line; encoding or folding them would break threading.
    answered = "<AM0PR07MB4497D7E9A2C8F1B3C2E3F0B1A4C10@AM0PR07MB4497.eurprd07.prod.outlook.com>"
    ack = render("acknowledgement", NoticeContext(practice_name="Cabinet Dupré", locale="fr"), public_url=PUBLIC_URL)
    raw = build(ack, auto_submitted="auto-replied", in_reply_to=answered)
    assert f"\r\nIn-Reply-To: {answered}\r\nReferences: {answered}\r\n".encode() in raw
    msg = email.message_from_bytes(raw, policy=default)
    assert msg["In-Reply-To"] == answered and msg["References"] == answered


@pytest.mark.parametrize("practice", ["Maison de santé pluriprofessionnelle « Les Tilleuls » – Saint-Étienne-de-Tinée", "A" * 80])
def test_long_subjects_fold_and_decode_back(practice: str) -> None:
    long = render("new_message", NoticeContext(practice_name=practice, locale="fr", login_url=LOGIN_URL), public_url=PUBLIC_URL)
    raw = build(long)
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78
    msg = email.message_from_bytes(raw, policy=default)
    assert msg["Subject"] == long.subject
    assert [p.get_content().replace("\r\n", "\n") for p in msg.iter_parts()] == [long.text, long.html]


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"From: a@example.org\r\nMessage-ID: <x.1@example.org>\r\n", "<x.1@example.org>"),
        (b"DKIM-Signature: v=1;\r\n\tb=abc\r\nmessage-id:  <x.1@example.org> \r\n", "<x.1@example.org>"),
        (b"Message-ID:\r\n <folded@example.org>\r\n", "<folded@example.org>"),
        (b"Message-ID: <first@example.org>\r\nMessage-ID: <second@example.org>\r\n", "<first@example.org>"),
        (b"From: a@example.org\n\nMessage-ID: <in-the-body@example.org>\n", None),
        (b"Message-ID: <not-an-id>\r\n", None),
        (b"Subject: x\r\n", None),
    ],
)
def test_message_id_of_reads_the_first_header_only(head: bytes, expected: str | None) -> None:
    message = head + b"\r\nbody\r\n"
    if expected is None:
        with pytest.raises(ValueError):
            message_id_of(message)
    else:
        assert message_id_of(message) == expected



def _lines(text: str) -> str:
    # What a part holds once decoded: its lines (split at CR, LF or CRLF), each ended by a newline.
    return "".join(line.decode("utf-8") + "\n" for line in text.encode("utf-8").splitlines()) or "\n"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=400))
def test_any_part_text_goes_through_quoted_printable_and_back(body: str) -> None:
    # Whatever a template renders: ASCII lines of 76 characters at most (RFC 2045), the same text decoded.
    rendered = RenderedNotice(subject="Nouveau message", text=body, html="<p>" + body + "</p>", sms=None)
    raw = build(rendered)
    _head, _, parts = raw.partition(b"\r\n\r\n")
    assert all(len(line) <= 76 for line in parts.split(b"\r\n"))
    msg = email.message_from_bytes(raw, policy=default)
    text, html = (part.get_content().replace("\r\n", "\n") for part in msg.iter_parts())
    assert text == _lines(body)
    assert html == _lines("<p>" + body + "</p>")
