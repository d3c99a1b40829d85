"""Inbound SMS over real HTTP: signatures, every routing branch, thread codes, keywords, refusals,
idempotency under concurrent retries, a database failure and its retry, and nothing in the clear in logs."""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import create_engine, event, text

from gateway.db.tables import ContactPoint, HeldSms, Message, OutboxRow, RateCounter, SmsInbound
from gateway.intake.held import held_content, list_held, release_held
from tests.integration.sms.conftest import PRACTICE_NUMBER, PUBLIC_URL, SMS_PATH, World

EMPTY = '<?xml version="1.0" encoding="UTF-8"?><Response />'
OTHER_PHONE = "+33655443322"


def assert_empty_twiml(response) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/xml")
    assert response.text == EMPTY


# -- signatures --------------------------------------------------------------------------------


def test_unsigned_forged_and_misaddressed_requests_are_refused_and_store_nothing(world: World):
    patient = world.patient()
    world.thread(patient)
    form = world.sms_form(world.canaries["body"])
    tampered = dict(form, Body="something else")
    refused = [
        world.post(form, signature=""),  # no signature
        world.post(form, signature="bm90IGEgc2lnbmF0dXJl"),  # garbage
        world.post(form, signature=world.twilio.sign(PUBLIC_URL + SMS_PATH, form, token="another-token")),
        # Signed for the address the request really reached: the Host header must not be trusted.
        world.post(form, signed_url=world.url + SMS_PATH),
        world.post(tampered, signature=world.twilio.sign(PUBLIC_URL + SMS_PATH, form)),
        world.post(form, signed_url=PUBLIC_URL + "/webhooks/twilio/status"),  # a signature for another endpoint
    ]
    assert [r.status_code for r in refused] == [403] * len(refused)
    assert world.nothing_posted() and world.count(SmsInbound) == 0 and world.count(OutboxRow) == 0


def test_secondary_token_is_accepted_for_rotation(settings_factory, twilio_standin, http_server, canaries):
    from tests.integration.sms.conftest import make_world

    w = make_world(settings_factory, twilio_standin, http_server, canaries, twilio_auth_token_secondary="next-token")
    try:
        patient = w.patient()
        thread = w.thread(patient)
        form = w.sms_form(canaries["body"])
        assert_empty_twiml(w.post(form, signature=w.twilio.sign(PUBLIC_URL + SMS_PATH, form, token="next-token")))
        assert len(w.messages(thread)) == 1
    finally:
        w.client.close()
        w.gw.close()


def test_json_body_signed_with_body_sha256(world: World):
    patient = world.patient()
    thread = world.thread(patient)
    document = world.sms_form(world.canaries["body"])
    assert world.post_json(document, with_hash=False).status_code == 403
    assert world.nothing_posted()
    assert_empty_twiml(world.post_json(document))
    assert [m["body"] for m in world.messages(thread)] == [world.canaries["body"]]


# -- routing -----------------------------------------------------------------------------------


def test_only_open_thread_receives_the_message_and_the_practitioner_is_notified(world: World):
    patient = world.patient()
    closed = world.thread(patient, "dr-b")
    with world.gw.transaction() as s:
        from gateway.threads.service import close_thread, get_thread

        close_thread(s, get_thread(s, closed), actor="test")
    thread = world.thread(patient)
    form = world.sms_form(world.canaries["body"])
    assert_empty_twiml(world.post(form))
    (message,) = world.messages(thread)
    assert (message["author"], message["channel"], message["body"]) == ("patient", "sms", world.canaries["body"])
    (notice,) = world.notices("new_message")
    assert notice.practitioner_id is not None and notice.thread_id == thread and notice.message_id == message["id"]
    assert world.inbound(form["MessageSid"]) == "stored"
    with world.gw.readers() as s:
        stored = s.get(Message, message["id"])
        assert stored.dedupe_source == "sms" and stored.dedupe_key == form["MessageSid"]
        assert world.canaries["body"].encode() not in stored.body_ct


def test_thread_code_picks_the_thread_in_any_case(world: World):
    patient = world.patient()
    first = world.thread(patient, code="K3")
    second = world.thread(patient, "dr-b", code="JE")
    assert_empty_twiml(world.sms("#k3 pour le premier"))
    assert_empty_twiml(world.sms("K3: encore le premier"))
    assert_empty_twiml(world.sms("# je pour le second"))
    assert_empty_twiml(world.sms("JE aussi le second"))
    assert [m["body"] for m in world.messages(first)] == ["pour le premier", "encore le premier"]
    assert [m["body"] for m in world.messages(second)] == ["pour le second", "aussi le second"]
    # "Je ..." is a French word, not the code JE: with two open threads and no notice, it is held.
    assert_empty_twiml(world.sms("Je voulais demander"))
    assert world.count(HeldSms) == 1


def test_reply_within_seven_days_of_an_sms_notice_goes_to_that_thread(world: World):
    patient = world.patient()
    older = world.thread(patient)
    noticed = world.thread(patient, "dr-b")
    world.sms_notice(patient, older, days_ago=8)  # too old to count
    world.sms_notice(patient, noticed, days_ago=2)
    assert_empty_twiml(world.sms(world.canaries["body"]))
    assert len(world.messages(noticed)) == 1 and world.messages(older) == []


def test_stale_notice_and_two_open_threads_hold_the_message_for_triage(world: World):
    patient = world.patient()
    first = world.thread(patient)
    second = world.thread(patient, "dr-b")
    world.sms_notice(patient, first, days_ago=8)
    form = world.sms_form(world.canaries["body"])
    assert_empty_twiml(world.post(form))
    assert world.messages(first) == [] and world.messages(second) == []
    (notice,) = world.notices("held_sms")
    assert notice.patient_id == patient and notice.contact_id == world.contact(patient).id and notice.thread_id is None
    with world.gw.transaction() as s:
        (held,) = list_held(s, practice_id(s))
        assert world.canaries["body"].encode() not in held.body_ct
        assert held_content(s, world.gw.keys, held).body == world.canaries["body"]
        message_id = release_held(s, world.gw.keys, held.id, second, actor="practitioner:test")
    (filed,) = world.messages(second)
    assert filed["id"] == message_id and filed["body"] == world.canaries["body"] and filed["channel"] == "sms"
    # A retry of the same MessageSid after triage still stores nothing new.
    assert_empty_twiml(world.post(form))
    assert len(world.messages(second)) == 1 and len(world.notices("held_sms")) == 1


def practice_id(session) -> str:  # type: ignore[no-untyped-def]
    from gateway.directory.practices import get_practice

    return get_practice(session, "cab").id


def test_a_code_naming_a_closed_thread_is_held_not_redirected(world: World):
    patient = world.patient()
    closed = world.thread(patient, "dr-b", code="Z9")
    world.thread(patient)
    with world.gw.transaction() as s:
        from gateway.threads.service import close_thread, get_thread

        close_thread(s, get_thread(s, closed), actor="test")
    assert_empty_twiml(world.sms("#Z9 suite"))
    assert world.count(Message) == 0 and world.count(HeldSms) == 1


def test_patient_with_no_thread_but_a_practitioner_is_held(world: World):
    world.patient()
    assert_empty_twiml(world.sms(world.canaries["body"]))
    assert world.count(HeldSms) == 1 and len(world.notices("held_sms")) == 1


# -- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["unknown-number", "unverified", "no-care", "messaging-off"])
def test_refused_senders_post_nothing_and_get_one_reply_a_day(world: World, case: str):
    sender = world.canaries["phone"]
    if case == "unknown-number":
        sender = OTHER_PHONE
        world.thread(world.patient())
    elif case == "unverified":
        world.thread(world.patient(verified=False))
    elif case == "no-care":
        world.patient(care=())
    else:
        patient = world.patient(care=("dr-off",))
        with world.gw.transaction() as s:  # opened while the practitioner still used messaging
            from gateway.db.tables import Practitioner
            from gateway.directory.practices import get_practitioner

            get_practitioner(s, "dr-off").messaging_enabled = True
        world.thread(patient, "dr-off")
        with world.gw.transaction() as s:
            get_practitioner(s, "dr-off").messaging_enabled = False

    first = world.sms(world.canaries["body"], from_=sender)
    assert first.status_code == 200 and first.headers["content-type"].startswith("text/xml")
    reply = re.fullmatch(r'<\?xml[^>]*\?><Response><Message>(.+)</Message></Response>', first.text)
    assert reply and "Cabinet Test" in reply.group(1) and world.canaries["body"] not in first.text
    assert_empty_twiml(world.sms("encore " + world.canaries["body"], from_=sender))  # once a day
    assert world.nothing_posted()
    assert world.count(OutboxRow) == 0
    with world.gw.readers() as s:
        buckets = [b for b in s.scalars(text("SELECT bucket FROM rate_counters"))]
    assert len(buckets) == 1 and buckets[0].startswith("refused_sms:") and sender not in buckets[0]


def test_unknown_practice_number_and_malformed_forms_are_dropped(world: World):
    world.thread(world.patient())
    assert_empty_twiml(world.sms(world.canaries["body"], to="+33799999999"))
    assert_empty_twiml(world.post(dict(world.sms_form("x"), MessageSid="not-a-sid")))
    assert world.nothing_posted() and world.count(SmsInbound) == 0


# -- keywords ----------------------------------------------------------------------------------


def test_every_keyword_whole_message_case_and_accent_insensitive(world: World):
    patient = world.patient()
    thread = world.thread(patient)
    stops = ["STOP", "stopall", "Unsubscribe", " cancel ", "END", "quit", "ARRÊT", "arret", "Arrêt!"]
    starts = ["START", "yes", "Unstop"]
    for stop, start in zip(stops, starts * 3):
        assert_empty_twiml(world.sms(stop))
        assert world.contact(patient).opted_out_at is not None, stop
        assert_empty_twiml(world.sms(start))
        assert world.contact(patient).opted_out_at is None, start
    for word in ("HELP", "aide", "Aide"):
        assert_empty_twiml(world.sms(word))
    helps = world.notices("sms_help")
    assert len(helps) == 3 and {(n.patient_id, n.contact_id, n.channel) for n in helps} == {
        (patient, world.contact(patient).id, "sms")
    }
    # Not whole-message keywords: posted as messages.
    assert_empty_twiml(world.sms("stop the medication?"))
    assert [m["body"] for m in world.messages(thread)] == ["stop the medication?"]
    # A stranger's STOP changes nothing and gets no reply.
    assert_empty_twiml(world.sms("STOP", from_=OTHER_PHONE))
    assert world.count(RateCounter) == 0


# -- idempotency -------------------------------------------------------------------------------


def test_five_concurrent_deliveries_of_one_message_sid_store_it_once(world: World):
    patient = world.patient()
    thread = world.thread(patient)
    form = world.sms_form(world.canaries["body"])
    with ThreadPoolExecutor(5) as pool:
        responses = list(pool.map(lambda _: world.post(form), range(5)))
    for response in responses:
        assert_empty_twiml(response)
    assert len(world.messages(thread)) == 1
    assert len(world.notices("new_message")) == 1
    # A replay later, with Twilio's signature intact, is answered 200 and stores nothing either.
    assert_empty_twiml(world.post(form))
    assert len(world.messages(thread)) == 1 and world.count(SmsInbound) == 1


def test_webhooks_arriving_together_are_each_answered_as_if_alone(world: World):
    phones = [f"+3361234560{i}" for i in range(6)]
    threads = [world.thread(world.patient(phone)) for phone in phones]
    forms = [world.sms_form(f"message {i}", from_=phone) for i, phone in enumerate(phones)]
    stranger = world.sms_form(world.canaries["body"], from_=OTHER_PHONE)
    together = [*forms, forms[0], stranger, world.sms_form("x", to="+33799999999")]
    with ThreadPoolExecutor(len(together)) as pool:
        responses = list(pool.map(world.post, together))
    for response in responses[:7] + responses[8:]:
        assert_empty_twiml(response)
    assert "Cabinet Test" in responses[7].text and world.canaries["body"] not in responses[7].text
    for i, thread in enumerate(threads):
        assert [m["body"] for m in world.messages(thread)] == [f"message {i}"]
    assert len(world.notices("new_message")) == 6 and world.count(SmsInbound) == 7


def test_a_batch_is_filed_in_one_transaction_or_again_one_by_one(world: World):
    """SmsIntake.deliver_many (what the webhook's queue calls): the same outcomes as one delivery each."""
    from gateway.intake.sms import SmsIntake

    intake = SmsIntake(world.gw)
    patient = world.patient()
    thread = world.thread(patient)
    other = world.thread(world.patient("+33612345699"))
    first = world.sms_form("un")
    commits: list[object] = []
    event.listen(world.gw.engine, "commit", commits.append)
    # One transaction: a message, a refusal with its reply, a keyword, another patient's message.
    outcomes = intake.deliver_many([
        first, world.sms_form("deux", from_=OTHER_PHONE), world.sms_form("AIDE"),
        world.sms_form("trois", from_="+33612345699"),
    ])
    assert [o.outcome for o in outcomes] == ["stored", "refused", "keyword", "stored"]  # type: ignore[union-attr]
    assert len(commits) == 1
    assert outcomes[1].reply and "Cabinet Test" in outcomes[1].reply  # type: ignore[union-attr]
    # A retry of `first` and a form for no practice: the transaction fails, each is delivered on its own.
    outcomes = intake.deliver_many([world.sms_form("quatre"), first, world.sms_form("x", to="+33799999999")])
    assert [o.outcome for o in outcomes] == ["stored", "duplicate", "discarded"]  # type: ignore[union-attr]
    assert [m["body"] for m in world.messages(thread)] == ["un", "quatre"]
    assert [m["body"] for m in world.messages(other)] == ["trois"]
    assert len(world.notices("sms_help")) == 1 and world.count(SmsInbound) == 5


def test_database_failure_answers_5xx_and_the_retry_is_stored_once(world: World, db_url: str):
    patient = world.patient()
    thread = world.thread(patient)
    form = world.sms_form(world.canaries["body"])
    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:  # the messages table disappears under the running gateway
            conn.execute(text("ALTER TABLE messages RENAME TO messages_away"))
        failed = world.post(form)
        assert failed.status_code == 503
        assert world.count(SmsInbound) == 0 and world.count(OutboxRow) == 0
    finally:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE messages_away RENAME TO messages"))
        engine.dispose()
    assert_empty_twiml(world.post(form))
    assert_empty_twiml(world.post(form))
    assert [m["body"] for m in world.messages(thread)] == [world.canaries["body"]]


# -- nothing in the clear ----------------------------------------------------------------------


def test_no_body_or_number_in_logs_or_metrics(world: World, capfd):
    patient = world.patient()
    world.thread(patient)
    body, number = world.canaries["body"], world.canaries["phone"]
    world.sms(body)  # stored
    world.sms("#ZZ " + body, from_=OTHER_PHONE)  # refused (unknown number)
    world.sms("STOP")
    world.post(world.sms_form(body), signature="forged")
    engine = create_engine(str(world.gw.settings.resolved_database_url))
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE messages RENAME TO messages_away"))
    try:
        assert world.sms(body).status_code == 503
    finally:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE messages_away RENAME TO messages"))
        engine.dispose()
    metrics = world.client.get(world.url + "/metrics").text
    out, err = capfd.readouterr()
    logs = out + err
    assert "sms.stored" in logs and "sms.refused" in logs and "webhook.failed" in logs  # the logs did run
    for secret in (body, "CANARY-BODY", number, number[1:], OTHER_PHONE, OTHER_PHONE[1:], PRACTICE_NUMBER):
        assert secret not in logs and secret not in metrics
    assert 'gateway_messages_in_total{channel="sms",outcome="stored"}' in metrics
