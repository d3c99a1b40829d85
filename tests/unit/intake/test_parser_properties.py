"""Property tests: any bytes end in a ParsedEmail or Unparseable, never another exception."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.intake.attachments import screen
from gateway.intake.parse import ParsedEmail, Unparseable, parse
from gateway.intake.quotes import strip_reply_text
from gateway.intake.text import decode_bytes, html_to_text

@dataclass(frozen=True)
class Upload:
    filename: str
    content_type: str
    data: bytes


FIXTURES = sorted((Path(__file__).resolve().parents[2] / "fixtures" / "emails").glob("*.eml"))
RAW_FIXTURES = [path.read_bytes() for path in FIXTURES]
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decided(raw: bytes, envelope_sender: str | None = None) -> None:
    try:
        parsed = parse(raw, envelope_sender=envelope_sender)
    except Unparseable as error:
        assert error.code in ("empty", "no_headers", "too_deep")
        return
    assert isinstance(parsed, ParsedEmail)
    assert isinstance(parsed.body, str) and isinstance(parsed.full_text, str)
    assert parsed.body.strip() or not parsed.full_text.strip()
    assert parsed.kind in ("message", "auto_reply", "bounce", "own_notice")
    assert (parsed.kind == "bounce") == (parsed.bounce is not None)
    screen(parsed.attachments)


@FAST
@given(st.binary(max_size=4096), st.sampled_from([None, "", "<>", "MAILER-DAEMON@x.test", "a@b.test"]))
def test_arbitrary_bytes(raw: bytes, envelope_sender: str | None) -> None:
    _decided(raw, envelope_sender)


HEADER_NAMES = st.sampled_from([
    "From", "To", "Subject", "Message-ID", "Date", "In-Reply-To", "References", "Content-Type",
    "Content-Transfer-Encoding", "Content-Disposition", "Auto-Submitted", "Precedence", "X-Gateway-Notice",
    "Content-ID", "MIME-Version", "X-Autoreply",
])
HEADER_VALUES = st.one_of(
    st.text(max_size=80),
    st.sampled_from([
        "multipart/mixed; boundary=x", "multipart/alternative; boundary=x", "multipart/report; boundary=x; "
        "report-type=delivery-status", "message/rfc822", "message/delivery-status", "text/html; charset=x-bogus",
        "text/plain; format=flowed; delsp=yes", "base64", "quoted-printable", "attachment; filename*=utf-8''%E9",
        "=?utf-8?b?w6k=?=", "=?x-unknown?q?=E9?=", "<a@b> <c@d>", "\"a\" <@>", "a@b, c@d", "auto-replied", "1",
        "=?utf-8?q?R=C3=A9ponse_automatique?=", "Mon, 99 Foo 2025 99:99:99 +9999", "inline; filename=\"a/../b\"",
    ]),
)


@st.composite
def header_soup(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=12))
    body = draw(st.one_of(st.text(max_size=300), st.sampled_from([
        "--x\nContent-Type: text/plain\n\nhi\n--x\nContent-Type: image/png\n\n\x89PNG\n--x--\n",
        "--x\nContent-Type: message/delivery-status\n\nFinal-Recipient: rfc822; a@b\nAction: failed\n--x--\n",
        "<html><blockquote><div id=divRplyFwdMsg>x</blockquote><p>y",
    ])))
    text = "".join(f"{name}: {value}\n" for name, value in lines) + "\n" + body
    return text.encode("utf-8", "surrogatepass")


@FAST
@given(header_soup(), st.sampled_from([None, ""]))
def test_header_soup(raw: bytes, envelope_sender: str | None) -> None:
    _decided(raw, envelope_sender)


@st.composite
def mutated_fixture(draw: st.DrawFn) -> bytes:
    raw = bytearray(draw(st.sampled_from(RAW_FIXTURES)))
    for _ in range(draw(st.integers(1, 6))):
        if not raw:
            break
        operation = draw(st.sampled_from(["flip", "truncate", "duplicate_header", "insert", "delete", "splice"]))
        at = draw(st.integers(0, len(raw) - 1))
        if operation == "flip":
            raw[at] = draw(st.integers(0, 255))
        elif operation == "truncate":
            del raw[at:]
        elif operation == "duplicate_header":
            head_end = raw.find(b"\n\n")
            lines = bytes(raw[: head_end if head_end > 0 else len(raw)]).split(b"\n")
            line = draw(st.sampled_from(lines))
            raw[0:0] = line + b"\n"
        elif operation == "insert":
            raw[at:at] = draw(st.sampled_from([b"\n", b"\r\n", b"--", b"=?utf-8?q?", b"<", b">", b"\x00",
                                               b"Content-Type: multipart/mixed; boundary=", b"\xff\xfe",
                                               b"\n> On Mon wrote:\n", b"<blockquote>", b"cid:"]))
        elif operation == "delete":
            del raw[at: at + draw(st.integers(1, 64))]
        else:
            other = draw(st.sampled_from(RAW_FIXTURES))
            raw[at:at] = other[draw(st.integers(0, len(other) - 1)):]
    return bytes(raw)


@FAST
@given(mutated_fixture(), st.sampled_from([None, "", "a@b.test"]))
def test_mutated_fixtures(raw: bytes, envelope_sender: str | None) -> None:
    _decided(raw, envelope_sender)


@FAST
@given(st.text(max_size=2000))
def test_text_helpers_are_total(text: str) -> None:
    trimmed = strip_reply_text(text)
    assert len(trimmed) <= len(text)
    assert isinstance(html_to_text(text), str)
    assert isinstance(html_to_text(text, drop_quotes=True), str)


HTML_TOKENS = st.sampled_from([
    "<div>", "</div>", "<p class=MsoNormal>", "</p>", "<br>", "<blockquote type=cite>", "</blockquote>",
    "<div id=divRplyFwdMsg>", "<div id=appendonsend>", "<div class=gmail_quote>", "<hr id=stopSpelling>",
    "<div style='border-top:solid #E1E1E1 1.0pt'>", "<b>From:</b>", "De :", "<pre>", "</pre>", "<a href=",
    "https://x.test", ">", "</a>", "<script>", "</script>", "<style>", "<!--", "-->", "<![if !mso]>",
    "<![endif]>", "<![bogus[", "]]>", "<!DOCTYPE", "<?xml ?>", "&nbsp;", "&#0;", "&#x110000;", "&bogus;",
    "<li>", "<ol>", "<td>", "<tr>", "<table>", "<", "\n", " ", "texte", "é", "\x00",
])


@FAST
@given(st.lists(HTML_TOKENS, max_size=60), st.booleans())
def test_html_to_text_is_total(tokens: list[str], drop_quotes: bool) -> None:
    text = html_to_text("".join(tokens), drop_quotes=drop_quotes)
    assert "<script" not in text and "<div" not in text.replace("&lt;", "")


@FAST
@given(st.binary(max_size=512), st.one_of(st.none(), st.text(max_size=20),
                                           st.sampled_from(["utf-8", "base64", "rot13", "utf-16", "unicode_escape",
                                                            "idna", "iso-2022-jp", "utf-7"])))
def test_decode_bytes_is_total(data: bytes, charset: str | None) -> None:
    assert isinstance(decode_bytes(data, charset), str)


@FAST
@given(st.lists(st.tuples(st.text(max_size=30), st.text(max_size=40), st.binary(max_size=256)), max_size=5))
def test_screen_is_total(files: list[tuple[str, str, bytes]]) -> None:
    accepted, refused = screen([Upload(*f) for f in files])
    assert len(accepted) + len(refused) == len(files)
