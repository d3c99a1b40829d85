"""Keyed one-way values: blind indexes for lookups, HMAC signatures for reply tokens."""
from __future__ import annotations

import hmac
from hashlib import sha256


class BlindIndex:
    """HMAC-SHA256 of an already-normalised value, under its own key, so equal values can be found."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("blind index keys must be 32 bytes")
        self._key = key

    def __call__(self, kind: str, normalised: str) -> str:
        return hmac.new(self._key, f"{kind}\x00{normalised}".encode(), sha256).hexdigest()


class Signer:
    """Truncated HMAC-SHA256 tags; verification in constant time."""

    def __init__(self, key: bytes, size: int = 10) -> None:
        if len(key) != 32:
            raise ValueError("signing keys must be 32 bytes")
        self._key, self._size = key, size

    def sign(self, data: bytes) -> bytes:
        return hmac.new(self._key, data, sha256).digest()[: self._size]

    def verify(self, data: bytes, tag: bytes) -> bool:
        return hmac.compare_digest(self.sign(data), tag)
