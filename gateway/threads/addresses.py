"""Reply addresses `r-<token>@<mail domain>`: the token names one thread and one party, is signed (HMAC),
case-insensitive (lower-case base32) and revocable (the thread's token_version is signed in)."""
from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass
from typing import Literal

from gateway.crypto import Signer

PREFIX = "r-"
_PARTIES = {"patient": b"P", "practitioner": b"D"}
_BY_BYTE = {v: k for k, v in _PARTIES.items()}


@dataclass(frozen=True)
class ReplyToken:
    thread_id: str
    party: Literal["patient", "practitioner"]
    version: int


def make_token(signer: Signer, thread_id: str, party: str, version: int) -> str:
    payload = bytes.fromhex(thread_id) + _PARTIES[party] + struct.pack(">H", version)
    return base64.b32encode(payload + signer.sign(payload)).decode().rstrip("=").lower()


def reply_address(signer: Signer, thread_id: str, party: str, version: int, domain: str) -> str:
    return f"{PREFIX}{make_token(signer, thread_id, party, version)}@{domain}"


def read_token(signer: Signer, local_part: str) -> ReplyToken | None:
    """The token named by a local part, or None when it is not one of ours or its signature is wrong."""
    local = local_part.strip().lower()
    if not local.startswith(PREFIX):
        return None
    text = local[len(PREFIX) :].upper()
    try:
        raw = base64.b32decode(text + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError):
        return None
    # Base32's last character carries unused bits: only the canonical spelling of a token is the token.
    if len(raw) != 16 + 1 + 2 + 10 or base64.b32encode(raw).decode().rstrip("=") != text:
        return None
    payload, tag = raw[:19], raw[19:]
    if not signer.verify(payload, tag) or payload[16:17] not in _BY_BYTE:
        return None
    (version,) = struct.unpack(">H", payload[17:19])
    return ReplyToken(payload[:16].hex(), _BY_BYTE[payload[16:17]], version)  # type: ignore[arg-type]
