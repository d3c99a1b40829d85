"""The attachment allowlist: which files a patient may send us (by email, portal upload or MMS), and how big.

A file is accepted only when its declared type, its extension and its first bytes all agree on one
allowed kind; `application/octet-stream` is taken as "undeclared" and then the other two decide.
"""
from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from io import BytesIO
from typing import Final, Literal, Protocol, TypeVar

MIB: Final = 1024 * 1024


@dataclass(frozen=True)
class AttachmentLimits:
    per_file_bytes: int = 10 * MIB
    total_bytes: int = 20 * MIB


@dataclass(frozen=True)
class Refused:
    filename: str
    reason: Literal["type", "size", "total"]

    def __repr__(self) -> str:  # a file name can say what a patient has: keep it out of logs
        return f"Refused(reason={self.reason!r})"


class File(Protocol):
    """What screening needs of a file, wherever it came from (email attachment, upload, MMS media)."""

    @property
    def filename(self) -> str: ...

    @property
    def content_type(self) -> str: ...

    @property
    def data(self) -> bytes: ...


F = TypeVar("F", bound=File)


def _starts(*prefixes: bytes) -> Callable[[bytes], bool]:
    return lambda data: data.startswith(prefixes)


def _is_webp(data: bytes) -> bool:
    return data[:4] == b"RIFF" and data[8:12] == b"WEBP"


def _is_heif(data: bytes) -> bool:
    # ISO base media file: size, "ftyp", then a HEIF/HEIC brand.
    return data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis",
                                                   b"mif1", b"msf1")


_OLE: Final = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # legacy Office (doc/xls/ppt) compound file


def _is_plain_text(data: bytes) -> bool:
    sample = data[:4096]
    if sample.startswith((b"\xff\xfe", b"\xfe\xff")):
        return True  # UTF-16 text: zero bytes are expected
    if b"\x00" in sample or sample.startswith((b"MZ", b"\x7fELF", b"%PDF", b"PK\x03\x04", _OLE, b"#!")):
        return False
    control = sum(1 for b in sample if b < 32 and b not in (9, 10, 12, 13, 27))
    return control <= len(sample) // 100


def _zip_members(data: bytes, check: Callable[[zipfile.ZipFile], bool]) -> bool:
    """Office Open XML and OpenDocument files are zip archives: look inside for what names the kind."""
    if not data.startswith(b"PK\x03\x04"):
        return False
    try:
        with zipfile.ZipFile(BytesIO(data)) as archive:
            return check(archive)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError, NotImplementedError,
            RuntimeError):  # a damaged or odd archive is simply not an office document
        return False


def _ooxml(folder: str) -> Callable[[bytes], bool]:
    def check(archive: zipfile.ZipFile) -> bool:
        names = archive.namelist()
        return "[Content_Types].xml" in names and any(name.startswith(folder) for name in names)

    return lambda data: _zip_members(data, check)


def _odf(mimetype: str) -> Callable[[bytes], bool]:
    def check(archive: zipfile.ZipFile) -> bool:
        with archive.open("mimetype") as member:  # bounded read: never inflate a zip bomb
            return member.read(len(mimetype) + 1) == mimetype.encode()

    return lambda data: _zip_members(data, check)


@dataclass(frozen=True)
class _Kind:
    content_types: frozenset[str]
    extensions: frozenset[str]
    sniff: Callable[[bytes], bool]


def _kind(types: str, extensions: str, sniff: Callable[[bytes], bool]) -> _Kind:
    return _Kind(frozenset(types.split()), frozenset(extensions.split()), sniff)


_KINDS: Final = (
    _kind("application/pdf application/x-pdf", ".pdf", lambda d: d[:1024].lstrip().startswith(b"%PDF-")),
    _kind("image/jpeg image/jpg image/pjpeg", ".jpg .jpeg .jpe .jfif", _starts(b"\xff\xd8\xff")),
    _kind("image/png", ".png", _starts(b"\x89PNG\r\n\x1a\n")),
    _kind("image/gif", ".gif", _starts(b"GIF87a", b"GIF89a")),
    _kind("image/webp", ".webp", _is_webp),
    _kind("image/heic image/heif image/heic-sequence image/heif-sequence", ".heic .heif", _is_heif),
    _kind("image/tiff", ".tif .tiff", _starts(b"II*\x00", b"MM\x00*")),
    _kind("image/bmp image/x-bmp image/x-ms-bmp", ".bmp", _starts(b"BM")),
    _kind("text/plain", ".txt .text", _is_plain_text),
    _kind("application/msword", ".doc", _starts(_OLE)),
    _kind("application/vnd.ms-excel", ".xls", _starts(_OLE)),
    _kind("application/vnd.ms-powerpoint", ".ppt", _starts(_OLE)),
    _kind("application/vnd.openxmlformats-officedocument.wordprocessingml.document", ".docx", _ooxml("word/")),
    _kind("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", ".xlsx", _ooxml("xl/")),
    _kind("application/vnd.openxmlformats-officedocument.presentationml.presentation", ".pptx", _ooxml("ppt/")),
    *(_kind(f"application/vnd.oasis.opendocument.{name}", extension, _odf(f"application/vnd.oasis.opendocument.{name}"))
      for name, extension in (("text", ".odt"), ("spreadsheet", ".ods"), ("presentation", ".odp"))),
    _kind("application/rtf text/rtf application/x-rtf text/richtext", ".rtf", _starts(b"{\\rtf")),
)
# Senders that do not know the type say so; the extension and the bytes decide then.
_UNDECLARED: Final = frozenset({"application/octet-stream", "application/x-download", "application/download",
                                "application/force-download", "binary/octet-stream", ""})


def _extension(filename: str) -> str:
    name = filename.strip().rstrip(".").lower()
    dot = name.rfind(".")
    return name[dot:] if dot > 0 else ""


def allowed(filename: str, content_type: str, data: bytes) -> bool:
    """True when declared type, extension and content agree on one allowed kind."""
    declared = content_type.split(";", 1)[0].strip().lower()
    extension = _extension(filename)
    for kind in _KINDS:
        if extension not in kind.extensions:
            continue
        if declared not in kind.content_types and declared not in _UNDECLARED:
            continue
        if kind.sniff(data):
            return True
    return False


def screen(attachments: Iterable[F], limits: AttachmentLimits = AttachmentLimits()
           ) -> tuple[tuple[F, ...], tuple[Refused, ...]]:
    """Split files into (accepted, refused), in order; the total counts accepted files only."""
    accepted: list[F] = []
    refused: list[Refused] = []
    total = 0
    for attachment in attachments:
        size = len(attachment.data)
        if not allowed(attachment.filename, attachment.content_type, attachment.data):
            refused.append(Refused(attachment.filename, "type"))
        elif size > limits.per_file_bytes:
            refused.append(Refused(attachment.filename, "size"))
        elif total + size > limits.total_bytes:
            refused.append(Refused(attachment.filename, "total"))
        else:
            total += size
            accepted.append(attachment)
    return tuple(accepted), tuple(refused)
