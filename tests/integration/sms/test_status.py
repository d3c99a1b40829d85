"""Status callbacks over real HTTP: signed like the SMS webhook, state only moves forward whatever the
order, each (MessageSid, status) counts once, and failures mark the number (opted out, unreachable)."""
from __future__ import annotations

from sqlalchemy import select

from gateway.db.tables import OutboxRow, SmsStatusEvent
from gateway.intake.sms_status import apply_recorded
from tests.integration.sms.conftest import STATUS_PATH, World, new_sid
from tests.integration.sms.test_inbound import assert_empty_twiml


def notice(world: World, sid: str) -> OutboxRow:
    with world.gw.readers() as s:
        return s.scalars(select(OutboxRow).where(OutboxRow.provider_id == sid)).one()


def test_unsigned_status_callbacks_are_refused(world: World):
    patient = world.patient()
    sid = world.sms_notice(patient, world.thread(patient), days_ago=0, state="sent")
    form = world.twilio.status_callback(sid, "failed", error_code=21610)
    assert world.post(form, path=STATUS_PATH, signature="forged").status_code == 403
    assert world.post(form, path=STATUS_PATH, signed_url=world.url + STATUS_PATH).status_code == 403
    assert notice(world, sid).state == "sent" and world.count(SmsStatusEvent) == 0
    assert world.contact(patient).opted_out_at is None


def test_state_only_moves_forward_whatever_the_order(world: World):
    patient = world.patient()
    sid = world.sms_notice(patient, world.thread(patient), days_ago=0, state="sent")
    for status in ("delivered", "sent", "queued", "sending", "undelivered", "failed"):
        assert_empty_twiml(world.status(sid, status))
    row = notice(world, sid)
    assert row.state == "delivered" and row.error_code is None
    # Each (MessageSid, status) counts once.
    assert_empty_twiml(world.status(sid, "delivered"))
    assert world.count(SmsStatusEvent, SmsStatusEvent.message_sid == sid) == 6


def test_opted_out_error_marks_the_number_and_falls_back_to_email(world: World):
    patient = world.patient()
    thread = world.thread(patient)
    sid = world.sms_notice(patient, thread, days_ago=0, state="sent")
    assert_empty_twiml(world.status(sid, "failed", error_code=21610))
    assert_empty_twiml(world.status(sid, "failed", error_code=21610))
    row = notice(world, sid)
    assert (row.state, row.error_code) == ("failed", "twilio-21610")
    assert world.contact(patient).opted_out_at is not None
    fallback = [n for n in world.notices("new_message") if n.channel == "email"]
    assert len(fallback) == 1 and fallback[0].thread_id == thread and fallback[0].patient_id == patient


def test_unreachable_errors_mark_the_number(world: World):
    for code in (30003, 30005, 30006):
        patient = world.patient(phone=f"+336123{code}")
        sid = world.sms_notice(patient, world.thread(patient), days_ago=0, state="sent")
        assert_empty_twiml(world.status(sid, "sent"))
        assert_empty_twiml(world.status(sid, "undelivered", error_code=code))
        assert notice(world, sid).state == "undelivered"
        contact = world.contact(patient)
        assert contact.unreachable_at is not None and contact.opted_out_at is None
    # An ordinary failure code marks nothing.
    patient = world.patient(phone="+33612340000")
    sid = world.sms_notice(patient, world.thread(patient), days_ago=0, state="sent")
    assert_empty_twiml(world.status(sid, "failed", error_code=30008))
    assert world.contact(patient).unreachable_at is None


def test_a_callback_before_the_provider_id_is_recorded_is_applied_later(world: World):
    patient = world.patient()
    sid = new_sid("SM")
    assert_empty_twiml(world.status(sid, "delivered"))  # the sender has not committed the id yet
    row_id = world.sms_notice(patient, world.thread(patient), days_ago=0, state="sent")
    with world.gw.transaction() as s:
        row = s.scalars(select(OutboxRow).where(OutboxRow.provider_id == row_id)).one()
        row.provider_id = sid
        apply_recorded(s, row)
    assert notice(world, sid).state == "delivered"
