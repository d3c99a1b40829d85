"""The GSM 03.38 (GSM-7) alphabet: whether a text fits it and how many SMS segments it costs.

The alphabet is a fixed table from the standard (3GPP TS 23.038), small enough to hold here.
"""
from __future__ import annotations

import re
import unicodedata

# Default alphabet, one septet each (the escape 0x1B is left out: it only introduces the extension).
BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# Extension table: escape + character, two septets each.
EXTENDED = frozenset("\f^{}\\[~]|€")

SINGLE_SEGMENT_SEPTETS = 160
MULTIPART_SEGMENT_SEPTETS = 153  # 7 septets go to the concatenation header
SINGLE_SEGMENT_UCS2 = 70
MULTIPART_SEGMENT_UCS2 = 67

# Common typography that has no GSM-7 form and no decomposition to one.
_REPLACEMENTS = {
    "œ": "oe", "Œ": "OE", "’": "'", "‘": "'", "‚": "'", "“": '"', "”": '"', "„": '"',
    "«": '"', "»": '"', "–": "-", "—": "-", "‐": "-", "…": "...", "\u00a0": " ", "\u202f": " ",
}


# The same sets as regular expressions: every notice's SMS form is checked and measured (a C loop, not a Python one).
_NOT_GSM7 = re.compile("[^" + "".join(re.escape(ch) for ch in sorted(BASIC | EXTENDED)) + "]")
_EXTENDED_CHAR = re.compile("[" + "".join(re.escape(ch) for ch in sorted(EXTENDED)) + "]")


def is_gsm7(text: str) -> bool:
    return _NOT_GSM7.search(text) is None


def septets(text: str) -> int:
    """Length of a GSM-7 text in septets (extension characters count two)."""
    return len(text) + len(_EXTENDED_CHAR.findall(text))


def segments(text: str) -> int:
    """How many SMS segments `text` is sent as: GSM-7 when it fits that alphabet, UCS-2 otherwise."""
    if not text:
        return 1
    if not is_gsm7(text):
        units = len(text.encode("utf-16-le")) // 2
        if units <= SINGLE_SEGMENT_UCS2:
            return 1
        return -(-units // MULTIPART_SEGMENT_UCS2)
    if septets(text) <= SINGLE_SEGMENT_SEPTETS:
        return 1
    # An escape pair is never split across two segments, so fill them one character at a time.
    count, used = 1, 0
    for ch in text:
        width = 2 if ch in EXTENDED else 1
        if used + width > MULTIPART_SEGMENT_SEPTETS:
            count, used = count + 1, 0
        used += width
    return count


def to_gsm7(text: str) -> str:
    """A best-effort GSM-7 spelling of a name: accents the alphabet lacks are dropped ("ç" -> "c")."""
    out: list[str] = []
    for ch in text:
        if ch in BASIC or ch in EXTENDED:
            out.append(ch)
        elif ch in _REPLACEMENTS:
            out.append(_REPLACEMENTS[ch])
        else:
            base = "".join(c for c in unicodedata.normalize("NFKD", ch) if c in BASIC or c in EXTENDED)
            out.append(base or "?")
    return "".join(out)
