"""AES-256-GCM sealing of one value, bound by associated data to its table, row, column and thread."""
from __future__ import annotations

import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.crypto.errors import DecryptionError

_VERSION = b"\x01"
_NONCE = 12


def binding(table: str, row_id: str, column: str, thread_id: str | None = None) -> bytes:
    """The associated data: a ciphertext copied to another row, column or thread no longer opens."""
    return f"gw1|{table}|{row_id}|{column}|{thread_id or '-'}".encode()


class DataKey:
    """One data key (a patient's, or the directory's). Misuse fails here, in the constructor."""

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) != 32:
            raise ValueError("data keys must be 32 bytes")
        self._aead = AESGCM(key)

    @staticmethod
    def generate() -> bytes:
        return AESGCM.generate_key(bit_length=256)

    def seal(self, plaintext: bytes | str, *, aad: bytes) -> bytes:
        data = plaintext.encode() if isinstance(plaintext, str) else plaintext
        nonce = secrets.token_bytes(_NONCE)
        return _VERSION + nonce + self._aead.encrypt(nonce, data, aad)

    def open(self, blob: bytes, *, aad: bytes) -> bytes:
        if not blob or blob[:1] != _VERSION or len(blob) < 1 + _NONCE + 16:
            raise DecryptionError()
        try:
            return self._aead.decrypt(blob[1 : 1 + _NONCE], blob[1 + _NONCE :], aad)
        except InvalidTag:
            raise DecryptionError() from None

    def open_text(self, blob: bytes, *, aad: bytes) -> str:
        return self.open(blob, aad=aad).decode()
