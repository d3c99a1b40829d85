"""The key-encryption-key ring: 32-byte keys with ids, oldest first; the newest wraps, any unwraps.

Keys come from GATEWAY_MASTER_KEY (`base64` or `id:base64,id:base64`) and from the key file that
`gateway init` writes (mode 0600) and `gateway keys rotate` appends to.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.crypto.errors import DecryptionError

KEY_BYTES = 32
_NONCE = 12


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def new_key_id() -> str:
    return datetime.now(timezone.utc).strftime("k%Y%m%d%H%M%S") + secrets.token_hex(2)


def _fingerprint_id(key: bytes) -> str:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(b"gateway-kek-id" + key)
    return "env-" + digest.finalize()[:4].hex()


def _decode(text: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(text.strip() + "=" * (-len(text.strip()) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("master key is not valid base64") from None
    if len(raw) != KEY_BYTES:
        raise ValueError("master key must be 32 bytes")
    return raw


def encode_key(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode().rstrip("=")


def parse_master_key(value: str) -> list[tuple[str, bytes]]:
    """`b64` or `id:b64,id:b64` (oldest first) -> [(id, key)]."""
    keys = []
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        key_id, sep, encoded = part.rpartition(":")
        key = _decode(encoded)
        keys.append((key_id if sep else _fingerprint_id(key), key))
    if not keys:
        raise ValueError("master key is empty")
    return keys


def read_key_file(path: Path) -> list[tuple[str, bytes]]:
    try:
        data = json.loads(path.read_text())
        return [(k["id"], _decode(k["key"])) for k in data["keys"]]
    except (KeyError, TypeError, json.JSONDecodeError):
        raise ValueError("key file is malformed") from None


def write_key_file(path: Path, keys: Iterable[tuple[str, bytes]]) -> None:
    """Atomically (tmp + rename), created with mode 0600 so the key is never readable by others."""
    payload = json.dumps({"version": 1, "keys": [{"id": i, "key": encode_key(k)} for i, k in keys]}, indent=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class KeyRing:
    """Key-encryption keys, oldest first. Wraps data keys with AES-256-GCM bound to a context."""

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        if not keys:
            raise ValueError("a key ring needs at least one key")
        self._keys: dict[str, AESGCM] = {}
        for key_id, key in keys:
            if len(key) != KEY_BYTES:
                raise ValueError("key-encryption keys must be 32 bytes")
            if not key_id or ":" in key_id or "," in key_id:
                raise ValueError("invalid key id")
            self._keys[key_id] = AESGCM(key)
        self.newest_id = keys[-1][0]
        self.ids = tuple(self._keys)

    @classmethod
    def load(cls, master_key: str | None, key_file: Path) -> KeyRing:
        keys: list[tuple[str, bytes]] = parse_master_key(master_key) if master_key else []
        if key_file.exists():
            keys += [k for k in read_key_file(key_file) if k[0] not in {i for i, _ in keys}]
        if not keys:
            raise ValueError("no master key: set GATEWAY_MASTER_KEY or run `gateway init`")
        return cls(keys)

    def wrap(self, key: bytes, *, context: str) -> tuple[str, bytes]:
        nonce = secrets.token_bytes(_NONCE)
        return self.newest_id, nonce + self._keys[self.newest_id].encrypt(nonce, key, context.encode())

    def unwrap(self, kek_id: str, wrapped: bytes, *, context: str) -> bytes:
        aead = self._keys.get(kek_id)
        if aead is None or len(wrapped) < _NONCE + 16:
            raise DecryptionError()
        try:
            return aead.decrypt(wrapped[:_NONCE], wrapped[_NONCE:], context.encode())
        except InvalidTag:
            raise DecryptionError() from None
