"""MMS: media fetched from the Twilio stand-in with the account's credentials, screened like email
attachments, stored encrypted, then deleted at Twilio; refused media leave a note naming the file."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import select

from gateway.db.tables import Attachment, HeldSms, HeldSmsMedia, Message, SmsInbound, TwilioMediaDeletion
from gateway.intake.attachments import MIB
from gateway.threads.service import attachment_content, get_thread
from tests.integration.sms.conftest import World

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"CANARY-MMS-PIXELS" * 50
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
MP4 = b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64


def wait_for_deletions(world: World, count: int) -> list[tuple[str, str]]:
    deadline = time.monotonic() + 5
    while len(world.twilio.deleted_media) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return list(world.twilio.deleted_media)


def media_requests(world: World, method: str) -> list:  # type: ignore[type-arg]
    return [r for r in world.twilio.requests if r.method == method and "/Media/" in r.path]


def test_mms_media_stored_encrypted_then_deleted_at_twilio(world: World):
    patient = world.patient()
    thread = world.thread(patient)
    form = world.sms_form(world.canaries["body"], media=[(JPEG, "image/jpeg"), (PNG, "image/png")])
    response = world.post(form)
    assert response.status_code == 200
    (message,) = world.messages(thread)
    assert message["body"] == world.canaries["body"]
    assert [(a["filename"], a["content_type"], a["size"]) for a in message["attachments"]] == [
        ("mms-1.jpg", "image/jpeg", len(JPEG)), ("mms-2.png", "image/png", len(PNG)),
    ]
    with world.gw.transaction() as s:
        att = s.scalars(select(Attachment).where(Attachment.filename_ct.is_not(None)).order_by(Attachment.size.desc())).first()
        assert b"CANARY-MMS-PIXELS" not in att.content_ct
        assert attachment_content(s, world.gw.keys, att, get_thread(s, thread)) == ("mms-1.jpg", JPEG)
    # Fetched with the account's credentials, and only from the stand-in (the configured API host).
    gets = media_requests(world, "GET")
    assert len(gets) == 2 and {r.auth for r in gets} == {(world.twilio.account_sid, world.twilio.auth_token)}
    assert len(wait_for_deletions(world, 2)) == 2
    deadline = time.monotonic() + 5
    while world.count(TwilioMediaDeletion) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert world.count(TwilioMediaDeletion) == 0


def test_oversized_and_disallowed_media_are_refused_with_a_note_naming_them(world: World):
    patient = world.patient()
    thread = world.thread(patient)
    big = b"\xff\xd8\xff\xe0" + b"\x00" * (10 * MIB)
    form = world.sms_form("voir pièces", media=[(JPEG, "image/jpeg"), (MP4, "video/mp4"), (big, "image/jpeg")])
    assert world.post(form).status_code == 200
    patient_message, note = world.messages(thread)
    assert [a["filename"] for a in patient_message["attachments"]] == ["mms-1.jpg"]
    assert note["author"] == "system" and "mms-2.mp4" in note["body"] and "mms-3.jpg" in note["body"]
    assert "CANARY" not in note["body"]
    # Refused or not, no copy stays at Twilio.
    assert len(wait_for_deletions(world, 3)) == 3


def test_only_refused_media_still_files_a_note_once(world: World):
    patient = world.patient()
    thread = world.thread(patient)
    form = world.sms_form("", media=[(MP4, "video/mp4")])
    assert world.post(form).status_code == 200
    assert world.post(form).status_code == 200
    (note,) = world.messages(thread)
    assert note["author"] == "system" and "mms-1.mp4" in note["body"]


def test_media_fetch_failure_answers_5xx_then_the_retry_stores_once(world: World):
    patient = world.patient()
    thread = world.thread(patient)
    form = world.sms_form(world.canaries["body"], media=[(JPEG, "image/jpeg")])
    world.twilio.fail_next(1, 503)
    assert world.post(form).status_code == 503
    assert world.count(Message) == 0 and world.count(SmsInbound) == 0
    assert world.post(form).status_code == 200
    assert world.post(form).status_code == 200
    (message,) = world.messages(thread)
    assert len(message["attachments"]) == 1
    assert len(wait_for_deletions(world, 1)) == 1


def test_concurrent_mms_retries_store_once_and_delete_once(world: World):
    patient = world.patient()
    thread = world.thread(patient)
    form = world.sms_form(world.canaries["body"], media=[(JPEG, "image/jpeg")])
    with ThreadPoolExecutor(5) as pool:
        statuses = [r.status_code for r in pool.map(lambda _: world.post(form), range(5))]
    assert statuses == [200] * 5
    assert len(world.messages(thread)) == 1
    assert wait_for_deletions(world, 1) == [(form["MessageSid"], form["MediaUrl0"].rsplit("/", 1)[1])]


def test_media_urls_off_twilio_are_never_fetched(world: World):
    patient = world.patient()
    thread = world.thread(patient)
    form = world.sms_form("photo", media=[(JPEG, "image/jpeg")])
    form["MediaUrl0"] = form["MediaUrl0"].replace("127.0.0.1", "localhost")  # another host, same server
    assert world.post(form).status_code == 200
    message, note = world.messages(thread)
    assert message["attachments"] == [] and "mms-1.jpg" in note["body"]
    assert media_requests(world, "GET") == [] and media_requests(world, "DELETE") == []


def test_held_mms_keeps_its_media_sealed(world: World):
    patient = world.patient()
    world.thread(patient)
    world.thread(patient, "dr-b")
    assert world.post(world.sms_form("", media=[(JPEG, "image/jpeg")])).status_code == 200
    assert world.count(HeldSms) == 1
    with world.gw.readers() as s:
        (media,) = s.scalars(select(HeldSmsMedia))
        assert b"CANARY-MMS-PIXELS" not in media.content_ct and media.size == len(JPEG)
    assert len(wait_for_deletions(world, 1)) == 1


def test_a_failed_deletion_at_twilio_is_retried_after_a_later_mms(world: World):
    from datetime import datetime, timedelta, timezone
    from urllib.parse import urlsplit

    from gateway.intake.mms import MediaFetcher, delete_queued, queue_deletions
    from tests.integration.sms.conftest import new_sid

    patient = world.patient()
    world.thread(patient)
    earlier_sid, earlier_media = new_sid("MM"), new_sid("ME")
    path = urlsplit(world.twilio.add_media(earlier_sid, earlier_media, JPEG, "image/jpeg")).path
    with world.gw.transaction() as s:
        queue_deletions(s, [path])
    fetcher = MediaFetcher(world.twilio.account_sid, world.twilio.auth_token, world.twilio.base_url)
    world.twilio.fail_next(1, 500)
    assert delete_queued(world.gw.sessions, fetcher, [path]) == 0
    with world.gw.transaction() as s:
        row = s.get(TwilioMediaDeletion, path)
        assert row.attempts == 1
        row.created_at = datetime.now(timezone.utc) - timedelta(minutes=10)
    assert world.post(world.sms_form("photo", media=[(JPEG, "image/jpeg")])).status_code == 200
    assert (earlier_sid, earlier_media) in wait_for_deletions(world, 2)
    deadline = time.monotonic() + 5
    while world.count(TwilioMediaDeletion) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert world.count(TwilioMediaDeletion) == 0
