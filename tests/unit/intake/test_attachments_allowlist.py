"""The attachment allowlist: declared type, extension and magic bytes must agree; size limits in order."""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from io import BytesIO

import pytest

from gateway.intake.attachments import AttachmentLimits, Refused, allowed, screen
from gateway.intake.parse import Attachment


@dataclass(frozen=True)
class Upload:
    """Not an email attachment: screening must work for portal uploads and MMS media too."""

    filename: str
    content_type: str
    data: bytes


def _zip(members: dict[str, bytes]) -> bytes:
    out = BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def _odf(kind: str) -> bytes:
    out = BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr(zipfile.ZipInfo("mimetype"), f"application/vnd.oasis.opendocument.{kind}")
        archive.writestr("content.xml", "<office:document-content/>")
    return out.getvalue()


PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n%%EOF\n"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 32
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 16
GIF = b"GIF89a\x01\x00\x01\x00" + b"\x00" * 16
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 16
HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 16
TIFF = b"II*\x00\x08\x00\x00\x00" + b"\x00" * 16
BMP = b"BM" + b"\x00" * 30
OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 64
RTF = b"{\\rtf1\\ansi Bonjour}"
EXE = b"MZ\x90\x00\x03\x00\x00\x00" + b"\x00" * 56
DOCX = _zip({"[Content_Types].xml": b"<Types/>", "word/document.xml": b"<w:document/>"})
XLSX = _zip({"[Content_Types].xml": b"<Types/>", "xl/workbook.xml": b"<workbook/>"})
PPTX = _zip({"[Content_Types].xml": b"<Types/>", "ppt/presentation.xml": b"<presentation/>"})
OOXML = "application/vnd.openxmlformats-officedocument"

ALLOWED = [
    ("compte-rendu.pdf", "application/pdf", PDF),
    ("photo.jpg", "image/jpeg", JPEG),
    ("photo.JPEG", "image/jpeg", JPEG),
    ("scan.png", "image/png", PNG),
    ("anim.gif", "image/gif", GIF),
    ("image.webp", "image/webp", WEBP),
    ("IMG_0001.HEIC", "image/heic", HEIC),
    ("IMG_0001.heif", "image/heif", HEIC),
    ("radio.tiff", "image/tiff", TIFF),
    ("radio.bmp", "image/bmp", BMP),
    ("notes.txt", "text/plain", "Tension 12/8, pouls 70.\n".encode()),
    ("notes.txt", "text/plain; charset=utf-16", "Fièvre".encode("utf-16")),
    ("lettre.doc", "application/msword", OLE),
    ("tableau.xls", "application/vnd.ms-excel", OLE),
    ("diapos.ppt", "application/vnd.ms-powerpoint", OLE),
    ("lettre.docx", f"{OOXML}.wordprocessingml.document", DOCX),
    ("tableau.xlsx", f"{OOXML}.spreadsheetml.sheet", XLSX),
    ("diapos.pptx", f"{OOXML}.presentationml.presentation", PPTX),
    ("lettre.odt", "application/vnd.oasis.opendocument.text", _odf("text")),
    ("tableau.ods", "application/vnd.oasis.opendocument.spreadsheet", _odf("spreadsheet")),
    ("diapos.odp", "application/vnd.oasis.opendocument.presentation", _odf("presentation")),
    ("lettre.rtf", "application/rtf", RTF),
    ("lettre.rtf", "text/rtf", RTF),
    # undeclared type: extension and content decide
    ("bilan.pdf", "application/octet-stream", PDF),
    ("IMG_0001.HEIC", "application/octet-stream", HEIC),
    ("lettre.docx", "application/octet-stream", DOCX),
    ("bilan.pdf", "", PDF),
    ("Bilan.PDF", "Application/PDF; name=Bilan.PDF", PDF),
    ("ordonnance.exe.pdf", "application/pdf", PDF),
]

REFUSED = [
    ("setup.exe", "application/x-msdownload", EXE),
    ("setup.exe", "application/octet-stream", EXE),
    ("scan.pdf", "application/pdf", EXE),  # a .pdf that is an executable
    ("scan.pdf", "application/octet-stream", EXE),
    ("photo.jpg", "image/jpeg", PNG),  # the bytes say another kind
    ("photo.png", "image/jpeg", PNG),  # the declared type says another kind
    ("bilan.pdf", "image/png", PDF),
    ("bilan", "application/pdf", PDF),  # no extension
    ("bilan.pdf.exe", "application/pdf", PDF),
    ("script.js", "text/plain", b"alert(1)"),
    ("page.html", "text/html", b"<html></html>"),
    ("notes.txt", "text/plain", EXE),
    ("notes.txt", "text/plain", b"\x00\x01\x02\x03binary\x00"),
    ("archive.zip", "application/zip", DOCX),
    ("lettre.docx", f"{OOXML}.wordprocessingml.document", _zip({"a.txt": b"x"})),  # a zip, not a document
    ("lettre.docx", f"{OOXML}.wordprocessingml.document", b"PK\x03\x04 truncated"),
    ("tableau.xlsx", f"{OOXML}.spreadsheetml.sheet", DOCX),  # a Word file named as a spreadsheet
    ("lettre.odt", "application/vnd.oasis.opendocument.text", _odf("spreadsheet")),
    ("image.svg", "image/svg+xml", b"<svg/>"),
    ("macro.docm", "application/vnd.ms-word.document.macroEnabled.12", DOCX),
    ("empty.pdf", "application/pdf", b""),
    ("forwarded.eml", "message/rfc822", b"From: a@b\n\nhi"),
]


@pytest.mark.parametrize(("filename", "content_type", "data"), ALLOWED)
def test_allowed(filename: str, content_type: str, data: bytes) -> None:
    assert allowed(filename, content_type, data)


@pytest.mark.parametrize(("filename", "content_type", "data"), REFUSED)
def test_refused(filename: str, content_type: str, data: bytes) -> None:
    assert not allowed(filename, content_type, data)


def test_screen_keeps_order_and_says_why() -> None:
    limits = AttachmentLimits(per_file_bytes=100, total_bytes=150)
    files = [
        Upload("a.pdf", "application/pdf", PDF + b"a" * (80 - len(PDF))),   # 80: accepted
        Upload("virus.exe", "application/x-msdownload", EXE),               # type
        Upload("big.pdf", "application/pdf", PDF + b"b" * 200),             # over the per-file limit
        Upload("b.pdf", "application/pdf", PDF + b"c" * (80 - len(PDF))),   # 160 > 150 in total
        Upload("c.png", "image/png", PNG),                                  # still fits: 80 + 40
    ]
    accepted, refused = screen(files, limits)
    assert [f.filename for f in accepted] == ["a.pdf", "c.png"]
    assert refused == (Refused("virus.exe", "type"), Refused("big.pdf", "size"), Refused("b.pdf", "total"))


def test_screen_defaults_are_10_and_20_mib() -> None:
    assert AttachmentLimits() == AttachmentLimits(per_file_bytes=10 * 1024 * 1024, total_bytes=20 * 1024 * 1024)
    big = PDF + b"x" * (10 * 1024 * 1024)
    accepted, refused = screen([Upload("big.pdf", "application/pdf", big)])
    assert accepted == () and refused == (Refused("big.pdf", "size"),)


def test_screen_takes_email_attachments() -> None:
    attachment = Attachment(filename="r.pdf", content_type="application/pdf", data=PDF, content_id=None, inline=False)
    assert screen([attachment]) == ((attachment,), ())


def test_refused_repr_hides_the_name() -> None:
    assert "secret-diagnosis" not in repr(Refused("secret-diagnosis.pdf", "type"))


def test_zip_bomb_mimetype_is_not_inflated() -> None:
    out = BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("mimetype", b"application/vnd.oasis.opendocument.text" + b"\x00" * 50_000_000)
    assert not allowed("x.odt", "application/vnd.oasis.opendocument.text", out.getvalue())
