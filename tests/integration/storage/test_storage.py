"""Storage on SQLite and PostgreSQL: round trips, nothing in the clear at rest, tampering, rotation, erasure."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select, update

from gateway.app import Gateway
from gateway.crypto import DecryptionError
from gateway.db.tables import AuditEvent, Message, OutboxRow, Patient
from gateway.directory.contacts import find_contacts, reveal
from gateway.directory.patients import add_care, add_patient, erase_patient
from gateway.directory.practices import add_practice, add_practitioner
from gateway.keys import rotate
from gateway.threads.service import (
    NewAttachment,
    attachment_content,
    body_aad,
    get_thread,
    open_thread,
    post_message,
    read_thread,
    thread_key,
)


def _setup(gw: Gateway, canaries: dict[str, str], *, patient_name: str | None = None) -> tuple[str, str]:
    with gw.transaction() as s:
        if not s.scalar(select(Patient.id).limit(1)):
            add_practice(s, slug="cab", name="Cabinet Test", sms_number="+33700000001")
            add_practitioner(s, gw.keys, practice_slug="cab", slug="dr-a", name="Dr Canary", email="dr@cab.test")
    with gw.transaction() as s:
        p = add_patient(
            s, gw.keys, practice_slug="cab", name=patient_name or canaries["name"], email=canaries["email"],
            phone=canaries["phone"], verified=True,
        )
        add_care(s, patient_id=p.id, practitioner_slug="dr-a")
        t = open_thread(s, gw.keys, patient_id=p.id, practitioner_slug="dr-a", subject=canaries["subject"])
        post_message(
            s, gw.keys, t, author="practitioner", channel="cli", body=canaries["body"],
            attachments=(NewAttachment(canaries["attachment"], "application/pdf", b"%PDF-1.4 " + canaries["body"].encode()),),
            original=canaries["body"].encode(),
        )
        return p.id, t.id


def test_round_trip_and_audit(gateway: Gateway, canaries):
    patient_id, thread_id = _setup(gateway, canaries)
    with gateway.transaction() as s:
        view = read_thread(s, gateway.keys, get_thread(s, thread_id), actor="test")
    assert view["subject"] == canaries["subject"]
    (msg,) = view["messages"]
    assert msg["body"] == canaries["body"] and msg["author"] == "practitioner"
    assert msg["attachments"][0]["filename"] == canaries["attachment"]
    with gateway.readers() as s:
        att_id = msg["attachments"][0]["id"]
        from gateway.db.tables import Attachment

        name, data = attachment_content(s, gateway.keys, s.get(Attachment, att_id), get_thread(s, thread_id))
        assert data.startswith(b"%PDF") and name == canaries["attachment"]
        (contact,) = find_contacts(s, gateway.keys, "email", canaries["email"])
        assert reveal(s, gateway.keys, contact) == canaries["email"]
        outbox = s.scalars(select(OutboxRow)).all()
        assert [(o.kind, o.patient_id, o.state) for o in outbox] == [("new_message", patient_id, "pending")]
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "thread.read")).all()
        assert [(e.actor, e.object_id) for e in events] == [("test", thread_id)]
        for e in s.scalars(select(AuditEvent)):
            for value in canaries.values():
                assert value not in (e.detail or "")


def _dump_at_rest(gw: Gateway, url: str) -> bytes:
    gw.close()
    if url.startswith("sqlite"):
        db = Path(url.removeprefix("sqlite:///"))
        data = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))
        return data + b"".join(p.read_bytes() for p in db.parent.rglob("*") if p.is_file())
    if not shutil.which("pg_dump"):
        pytest.fail("pg_dump is needed to inspect PostgreSQL at rest")
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    return subprocess.run(["pg_dump", "--no-owner", dsn], check=True, capture_output=True, timeout=60).stdout


def test_nothing_in_the_clear_at_rest(gateway: Gateway, db_url: str, canaries):
    _setup(gateway, canaries)
    dump = _dump_at_rest(gateway, db_url)
    # The dump is real: the practice's display name (a business name, kept in the clear) is in it.
    assert b"Cabinet Test" in dump
    for field, value in canaries.items():
        for form in {value, value.lower(), value.split()[0]}:
            assert form.encode() not in dump, f"{field} found in the clear at rest"
            assert form.encode("utf-16-le") not in dump


def test_ciphertext_copied_to_another_row_fails_opaquely(gateway: Gateway, canaries):
    _, t1 = _setup(gateway, canaries)
    _, t2 = _setup(gateway, {**canaries, "email": "other@example.org", "phone": "+33622334455"})
    with gateway.transaction() as s:
        m1 = s.scalar(select(Message).where(Message.thread_id == t1))
        m2 = s.scalar(select(Message).where(Message.thread_id == t2))
        s.execute(update(Message).where(Message.id == m2.id).values(body_ct=m1.body_ct))
    with gateway.readers() as s:
        m2 = s.scalar(select(Message).where(Message.thread_id == t2))
        key = thread_key(s, gateway.keys, get_thread(s, t2))
        with pytest.raises(DecryptionError):
            key.open(m2.body_ct, aad=body_aad(m2.id, t2))
        flipped = bytearray(m2.body_ct)
        flipped[-3] ^= 1
        with pytest.raises(DecryptionError):
            key.open(bytes(flipped), aad=body_aad(m2.id, t2))


def _key_file_settings(settings_factory, data_dir):
    """The embedded default: no GATEWAY_MASTER_KEY, the ring lives in the key file (holding the test key,
    since the shared test database's installation keys are wrapped by it)."""
    from gateway.crypto.keyring import parse_master_key, write_key_file
    from tests.conftest import TEST_MASTER_KEY

    settings = settings_factory(master_key=None, data_dir=data_dir)
    write_key_file(settings.key_file, parse_master_key(TEST_MASTER_KEY))
    return settings


def test_rotation_keeps_everything_readable_and_old_key_can_go(settings_factory, canaries, tmp_path):
    # This test uses a key file (no GATEWAY_MASTER_KEY), the embedded default.
    settings = _key_file_settings(settings_factory, tmp_path / "rot")
    gw = Gateway(settings)
    gw.init()
    _, thread_id = _setup(gw, canaries)
    old = gw.ring.newest_id
    result = rotate(gw, batch=1)
    assert result["kek_id"] != old and result["rewrapped"] >= 4 and not result["resumed"]
    from gateway.keys import retire

    retire(gw, old)
    assert old not in Gateway(settings).ring.ids
    fresh = Gateway(settings)
    with fresh.transaction() as s:
        view = read_thread(s, fresh.keys, get_thread(s, thread_id), actor="test")
    assert view["messages"][0]["body"] == canaries["body"]
    fresh.close()
    gw.close()


def test_interrupted_rotation_resumes(settings_factory, canaries, tmp_path):
    from gateway.crypto import new_key, new_key_id
    from gateway.crypto.keyring import read_key_file, write_key_file
    from gateway.db.keystore import pending_rewrap, rewrap_batch

    settings = _key_file_settings(settings_factory, tmp_path / "rot2")
    gw = Gateway(settings)
    gw.init()
    for i in range(3):
        _setup(gw, {**canaries, "email": f"p{i}@example.org", "phone": f"+3361122330{i}"})
    # Simulate a crash: the new key is written and one batch done, then the process dies.
    write_key_file(settings.key_file, [*read_key_file(settings.key_file), (new_key_id(), new_key())])
    gw.reload_keys()
    with gw.transaction() as s:
        rewrap_batch(s, gw.ring, limit=1)
    with gw.readers() as s:
        assert pending_rewrap(s, gw.ring) > 0
    result = rotate(Gateway(settings))
    assert result["resumed"] is True
    with gw.readers() as s:
        assert pending_rewrap(s, gw.ring) == 0
    gw.close()


def test_erasure_shreds_one_patient_and_leaves_others(gateway: Gateway, canaries):
    p1, t1 = _setup(gateway, canaries)
    p2, t2 = _setup(gateway, {**canaries, "email": "keep@example.org", "phone": "+33699887766"}, patient_name="Keep Me")
    with gateway.transaction() as s:
        erase_patient(s, p1)
    with gateway.transaction() as s:
        erased = read_thread(s, gateway.keys, get_thread(s, t1), actor="test")
        kept = read_thread(s, gateway.keys, get_thread(s, t2), actor="test")
        assert erased["erased"] is True and erased["subject"] is None
        assert all(m["body"] is None and m["erased"] for m in erased["messages"])
        assert kept["messages"][0]["body"] == canaries["body"]
        assert find_contacts(s, gateway.keys, "email", canaries["email"]) == []
        assert len(find_contacts(s, gateway.keys, "email", "keep@example.org")) == 1
        actions = [e.action for e in s.scalars(select(AuditEvent).where(AuditEvent.object_id == p1))]
        assert "patient.erase" in actions
        # Pending notices for the erased patient are not sent any more.
        assert {o.state for o in s.scalars(select(OutboxRow).where(OutboxRow.patient_id == p1))} == {"failed"}
