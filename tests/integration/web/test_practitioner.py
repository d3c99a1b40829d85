"""The practitioner's side: password sign-in (argon2) with rate limits, TOTP without replay, the inbox (unread
first, held SMS to triage), audited reads, replies with attachments, closing, and messaging on/off."""
from __future__ import annotations

import time

import pyotp
import segno
import pytest
from sqlalchemy import select

from gateway.db.tables import AuditEvent, Message, OutboxRow, Practitioner
from gateway.threads.service import get_thread, post_message
from tests.integration.web.conftest import DOCTOR_EMAIL, DOCTOR_PASSWORD, PDF, Site, csrf_of

# The pages' storage paths (tokens, sessions, counters, polling) run on both databases in test_links and test_api;
# these tests exercise what the pages do with them, on SQLite only, to keep the web suite fast.
pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def _login(
    site: Site, browser, email: str = DOCTOR_EMAIL, password: str = DOCTOR_PASSWORD, code: str = "", thread: str = ""
):  # type: ignore[no-untyped-def]
    return site.post_form(
        browser,
        "/portal/pro/login",
        "/portal/pro/login",
        {"email": email, "password": password, "code": code, "thread": thread},
    )


def test_password_sign_in_and_same_answer_for_unknown_address(site: Site) -> None:
    site.doctor()  # sets the password through the invitation link
    browser = site.client()
    wrong = _login(site, browser, password="not the password")
    unknown = _login(site, browser, email="nobody@example.org")
    assert wrong.status_code == unknown.status_code == 401
    assert "L&#39;adresse, le mot de passe ou le code est incorrect." in wrong.text
    ok = _login(site, browser, email=DOCTOR_EMAIL.upper(), thread=site.world.thread_a)
    assert ok.status_code == 303 and ok.headers["location"] == f"/portal/pro/threads/{site.world.thread_a}"
    with site.gw.readers() as s:
        stored = s.get(Practitioner, site.world.doctor_id).password_hash  # type: ignore[union-attr]
    assert stored.startswith("$argon2id$") and DOCTOR_PASSWORD not in stored
    # A thread of another practitioner named in the form is ignored: the inbox instead.
    again = _login(site, site.client(), thread=site.world.other_practice_thread)
    assert again.headers["location"] == "/portal/pro/"


def test_sign_in_attempts_are_rate_limited_per_account(site: Site) -> None:
    site.doctor()
    browser = site.client()
    statuses = [_login(site, browser, password=f"guess number {i}").status_code for i in range(10)]
    assert statuses == [401] * 10
    # The eleventh try in the window is refused even with the right password.
    assert _login(site, browser).status_code == 429


def test_totp_setup_sign_in_and_no_replay(site: Site) -> None:
    browser = site.doctor()
    page = browser.get("/portal/pro/settings")
    started = browser.post("/portal/pro/totp/start", data={"csrf": csrf_of(page.text)})
    secret = started.text.split('name="secret" value="', 1)[1].split('"', 1)[0]
    totp = pyotp.TOTP(secret)
    # The key is also shown as a QR code of its otpauth URI (inline SVG: no script, no style, no request).
    qr = started.text.split('<div class="qr"', 1)[1].split("</div>", 1)[0]
    with site.gw.readers() as s:
        slug = s.get(Practitioner, site.world.doctor_id).slug  # type: ignore[union-attr]
    uri = totp.provisioning_uri(name=slug, issuer_name="Secure messaging")
    assert segno.make(uri, error="m").svg_inline(scale=4, border=4, omitsize=True) in qr
    assert "<script" not in qr and "style=" not in qr
    bad = browser.post(
        "/portal/pro/totp/confirm",
        data={"csrf": csrf_of(page.text), "secret": secret, "code": "000000" if totp.now() != "000000" else "111111"},
    )
    assert bad.status_code == 422
    confirmed = browser.post(
        "/portal/pro/totp/confirm", data={"csrf": csrf_of(page.text), "secret": secret, "code": totp.now()}
    )
    assert confirmed.status_code == 303
    with site.gw.readers() as s:
        doctor = s.get(Practitioner, site.world.doctor_id)
        assert doctor is not None and doctor.totp_secret_ct is not None and secret.encode() not in doctor.totp_secret_ct

    other = site.client()
    assert _login(site, other).status_code == 401  # the password alone is not enough any more
    # The code used to confirm the set-up cannot be used again; the next one (or the current one, if new) works.
    step = int(time.time()) // 30
    next_code = totp.at((step + 1) * 30)
    ok = _login(site, other, code=next_code)
    assert ok.status_code == 303
    assert _login(site, site.client(), code=next_code).status_code == 401  # replay refused


def test_inbox_lists_unread_first_and_reading_is_audited(site: Site, canaries: dict[str, str]) -> None:
    keys = site.gw.keys
    with site.gw.transaction() as s:
        post_message(s, keys, get_thread(s, site.world.thread_b), author="patient", channel="email", body="Bob writes")
    browser = site.doctor()
    inbox = browser.get("/portal/pro/")
    assert inbox.status_code == 200
    text = inbox.text
    # Bob's thread has a patient message never read: it comes first and is marked.
    assert text.index(site.world.thread_b) < text.index(site.world.thread_a)
    assert 'class="unread open"' in text
    assert canaries["name"] in text and canaries["subject"].replace("'", "&#39;") in text
    assert site.world.other_practice_thread not in text
    page = browser.get(f"/portal/pro/threads/{site.world.thread_b}")
    assert page.status_code == 200 and "Bob writes" in page.text
    assert 'class="unread' not in browser.get("/portal/pro/").text
    with site.gw.readers() as s:
        actors = s.scalars(
            select(AuditEvent.actor).where(
                AuditEvent.action == "thread.read", AuditEvent.object_id == site.world.thread_b
            )
        ).all()
    assert actors == [f"practitioner:{site.world.doctor_id}"]


def test_reply_with_attachment_close_and_other_practitioners_threads(site: Site) -> None:
    browser = site.doctor()
    path = f"/portal/pro/threads/{site.world.thread_a}"
    answer = site.post_form(
        browser,
        path,
        f"{path}/messages",
        {"body": "Votre ordonnance"},
        files=[("files", ("ordonnance.pdf", PDF, "application/pdf"))],
    )
    assert answer.status_code == 303
    with site.gw.readers() as s:
        last = s.scalars(
            select(Message).where(Message.thread_id == site.world.thread_a).order_by(Message.created_at.desc())
        ).first()
        assert last is not None and (last.author, last.channel) == ("practitioner", "portal")
        notice = s.scalar(select(OutboxRow).where(OutboxRow.message_id == last.id))
    assert notice is not None and notice.patient_id == site.world.patient_a
    page = browser.get(path)
    download = page.text.split(f'href="{path}/attachments/', 1)[1].split('"', 1)[0]
    got = browser.get(f"{path}/attachments/{download}")
    assert got.content == PDF and got.headers["content-disposition"].startswith("attachment;")

    closed = browser.post(f"{path}/close", data={"csrf": csrf_of(page.text)})
    assert closed.status_code == 303
    page = browser.get(path)
    assert f"{path}/messages" not in page.text
    # The patient can no longer answer in that thread.
    patient = site.client()
    site.sign_in(patient, site.world.patient_a)
    ppath = f"/portal/threads/{site.world.thread_a}"
    refused = patient.post(f"{ppath}/messages", data={"csrf": csrf_of(patient.get(ppath).text), "body": "encore"})
    assert refused.status_code == 422

    for foreign in (site.world.other_practice_thread, "0" * 32):
        assert browser.get(f"/portal/pro/threads/{foreign}").status_code == 404
        assert (
            browser.post(f"/portal/pro/threads/{foreign}/close", data={"csrf": csrf_of(page.text)}).status_code == 404
        )


def test_switching_messaging_off_hides_the_practitioner_from_new_threads(site: Site) -> None:
    browser = site.doctor()
    page = browser.get("/portal/pro/settings")
    off = browser.post("/portal/pro/messaging", data={"csrf": csrf_of(page.text), "enabled": "off"})
    assert off.status_code == 303
    with site.gw.readers() as s:
        assert s.get(Practitioner, site.world.doctor_id).messaging_enabled is False  # type: ignore[union-attr]
    patient = site.client()
    site.sign_in(patient, site.world.patient_a)
    assert "Dr Alpha" not in patient.get("/portal/new").text
    answer = site.post_form(
        patient,
        "/portal/new",
        "/portal/threads",
        {"practitioner": site.world.doctor_id, "subject": "Q", "body": "Bonjour"},
    )
    assert answer.status_code == 422
    on = browser.post("/portal/pro/messaging", data={"csrf": csrf_of(page.text), "enabled": "on"})
    assert on.status_code == 303
    assert "Dr Alpha" in patient.get("/portal/new").text


def test_practitioner_pages_need_a_practitioner_session(site: Site) -> None:
    anonymous = site.client()
    assert anonymous.get("/portal/pro/").headers["location"] == "/portal/pro/login"
    patient = site.client()
    site.sign_in(patient, site.world.patient_a)
    assert patient.get(f"/portal/pro/threads/{site.world.thread_a}").headers["location"] == "/portal/pro/login"


def test_held_sms_are_triaged_into_a_thread(site: Site) -> None:
    held = pytest.importorskip("gateway.intake.held")
    from gateway.db.tables import ContactPoint, Patient

    keys = site.gw.keys
    with site.gw.transaction() as s:
        patient = s.get(Patient, site.world.patient_a)
        phone = s.scalar(
            select(ContactPoint).where(ContactPoint.patient_id == patient.id, ContactPoint.kind == "phone")
        )
        item = held.hold(
            s,
            keys,
            practice_id=site.world.practice_id,
            patient=patient,
            contact_id=phone.id,  # type: ignore[union-attr]
            message_sid="SM" + "1" * 32,
            body="Held SMS text",
        )
        held_id = item.id
    browser = site.doctor()
    inbox = browser.get("/portal/pro/")
    assert "Held SMS text" in inbox.text and f"/portal/pro/held/{held_id}/file" in inbox.text
    answer = browser.post(
        f"/portal/pro/held/{held_id}/file", data={"csrf": csrf_of(inbox.text), "thread": site.world.thread_a}
    )
    assert answer.status_code == 303 and answer.headers["location"] == f"/portal/pro/threads/{site.world.thread_a}"
    assert "Held SMS text" in browser.get(answer.headers["location"]).text
    assert "Held SMS text" not in browser.get("/portal/pro/").text
