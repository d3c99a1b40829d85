"""The crypto package: sealing bound to its row, one opaque error, key rings that rotate."""
from __future__ import annotations

import pytest

from gateway.crypto import BlindIndex, DataKey, DecryptionError, KeyRing, Signer, binding, new_key
from gateway.crypto.keyring import parse_master_key, read_key_file, write_key_file


def test_seal_open_round_trip():
    key = DataKey(DataKey.generate())
    aad = binding("messages", "m1", "body", "t1")
    blob = key.seal("Bonjour, résultats", aad=aad)
    assert b"Bonjour" not in blob
    assert key.open_text(blob, aad=aad) == "Bonjour, résultats"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda blob, aad: (blob[:-1] + bytes([blob[-1] ^ 1]), aad),  # flipped tag byte
        lambda blob, aad: (blob[:20] + bytes([blob[20] ^ 0x80]) + blob[21:], aad),  # flipped ciphertext byte
        lambda blob, aad: (blob, binding("messages", "m2", "body", "t1")),  # copied to another row
        lambda blob, aad: (blob, binding("messages", "m1", "body", "t2")),  # moved to another thread
        lambda blob, aad: (blob, binding("messages", "m1", "original", "t1")),  # another column
        lambda blob, aad: (b"", aad),
        lambda blob, aad: (b"\x02" + blob[1:], aad),
    ],
)
def test_every_bad_data_failure_is_the_one_opaque_error(mutate):
    key = DataKey(DataKey.generate())
    aad = binding("messages", "m1", "body", "t1")
    blob, other = mutate(key.seal("secret", aad=aad), aad)
    with pytest.raises(DecryptionError) as info:
        key.open(blob, aad=other)
    assert str(info.value) == "data could not be decrypted"


def test_wrong_key_is_the_same_opaque_error():
    aad = binding("t", "1", "c")
    blob = DataKey(DataKey.generate()).seal("x", aad=aad)
    with pytest.raises(DecryptionError):
        DataKey(DataKey.generate()).open(blob, aad=aad)


@pytest.mark.parametrize("bad", [b"", b"short", b"x" * 31, b"x" * 33])
def test_misuse_fails_in_the_constructor(bad):
    with pytest.raises(ValueError):
        DataKey(bad)
    with pytest.raises(ValueError):
        KeyRing([("k1", bad)])
    with pytest.raises(ValueError):
        BlindIndex(bad)


def test_ring_newest_wraps_any_unwraps_and_dropping_needs_rewrap():
    old, new = ("k1", new_key()), ("k2", new_key())
    ring1 = KeyRing([old])
    kek, wrapped = ring1.wrap(b"d" * 32, context="patient-dek:p1")
    ring2 = KeyRing([old, new])
    assert ring2.newest_id == "k2"
    assert ring2.unwrap(kek, wrapped, context="patient-dek:p1") == b"d" * 32
    with pytest.raises(DecryptionError):
        ring2.unwrap(kek, wrapped, context="patient-dek:p2")
    kek2, wrapped2 = ring2.wrap(b"d" * 32, context="patient-dek:p1")
    assert kek2 == "k2"
    assert KeyRing([new]).unwrap(kek2, wrapped2, context="patient-dek:p1") == b"d" * 32
    with pytest.raises(DecryptionError):
        KeyRing([new]).unwrap(kek, wrapped, context="patient-dek:p1")


def test_master_key_formats_and_key_file_mode(tmp_path):
    import base64
    import stat

    raw = new_key()
    encoded = base64.urlsafe_b64encode(raw).decode()
    (single,) = parse_master_key(encoded)
    assert single[1] == raw and single[0].startswith("env-")
    assert [i for i, _ in parse_master_key(f"a:{encoded},b:{encoded}")] == ["a", "b"]
    with pytest.raises(ValueError):
        parse_master_key("not base64 !!")
    path = tmp_path / "master.key"
    write_key_file(path, [("k1", raw)])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_key_file(path) == [("k1", raw)]


def test_blind_index_and_signer():
    index = BlindIndex(new_key())
    assert index("email", "a@b.test") == index("email", "a@b.test")
    assert index("email", "a@b.test") != index("phone", "a@b.test")
    signer = Signer(new_key())
    tag = signer.sign(b"payload")
    assert signer.verify(b"payload", tag) and not signer.verify(b"payloae", tag)
