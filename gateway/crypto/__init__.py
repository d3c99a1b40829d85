"""Everything cryptographic, and the only package that imports `cryptography`.

    keyring.KeyRing      key-encryption keys with ids: the newest wraps, every one unwraps
    sealing.DataKey      AES-256-GCM sealing bound to its row by associated data
    blind.BlindIndex     HMAC-SHA256 lookups of normalised emails and phone numbers
    blind.Signer         HMAC signatures for reply-address tokens

Misuse (a key of the wrong length) raises ValueError in the constructor; every bad-data failure
raises the one opaque `DecryptionError`, which says nothing an attacker could use.
"""
from gateway.crypto.blind import BlindIndex, Signer
from gateway.crypto.errors import DecryptionError
from gateway.crypto.keyring import KeyRing, new_key, new_key_id
from gateway.crypto.sealing import DataKey, binding

__all__ = ["BlindIndex", "DataKey", "DecryptionError", "KeyRing", "Signer", "binding", "new_key", "new_key_id"]
