"""The pages behind notice links: a GET or HEAD spends nothing (mail scanners), the POST spends once; spent,
expired and unknown links offer a fresh link with one answer for all; verification links and codes; invitations."""
from __future__ import annotations

import re
import secrets
from datetime import timedelta

import httpx
from sqlalchemy import select

from gateway.db.tables import AuditEvent, LoginToken, WebSession
from gateway.directory.patients import add_patient
from gateway.links import hash_token
from gateway.web.cli import request_verification
from tests.integration.web.conftest import Site, csrf_of

LINK = re.compile(r"http://[^\s\"'<>]+/l/([A-Za-z0-9_-]{20,})")


def _row(site: Site, token: str) -> LoginToken:
    with site.gw.readers() as s:
        row = s.scalar(select(LoginToken).where(LoginToken.token_hash == hash_token(token)))
        assert row is not None
        s.expunge(row)
        return row


def _without_tokens(html: str) -> str:
    """A page with its per-browser CSRF token and its link token blanked, to compare two answers."""
    html = re.sub(r'name="csrf" value="[^"]+"', 'name="csrf" value=""', html)
    return re.sub(r"/l/[A-Za-z0-9_-]+", "/l/TOKEN", html)


def test_get_and_head_show_one_button_and_spend_nothing(site: Site, canaries: dict[str, str]) -> None:
    token = site.issue(patient_id=site.world.patient_a, thread_id=site.world.thread_a)
    scanner = site.client()
    for _ in range(3):
        page = scanner.get(f"/l/{token}")
        assert page.status_code == 200
        assert scanner.head(f"/l/{token}").status_code == 200
    assert _row(site, token).used_at is None
    assert "gw_session" not in " ".join(page.headers.get_list("set-cookie"))
    # One form, one button, no content: nothing of the thread or the patient is on the page.
    assert page.text.count("<form") == 1 and page.text.count("<button") == 1
    for value in canaries.values():
        assert value not in page.text
    assert "<script" not in page.text

    browser = site.client()
    page = browser.get(f"/l/{token}")
    answer = browser.post(f"/l/{token}", data={"csrf": csrf_of(page.text)})
    assert answer.status_code == 303
    assert answer.headers["location"] == f"/portal/threads/{site.world.thread_a}"
    cookie = answer.headers["set-cookie"]
    assert "gw_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie
    assert _row(site, token).used_at is not None
    assert browser.get(answer.headers["location"]).status_code == 200


def test_a_link_is_spent_once(site: Site) -> None:
    token = site.issue(patient_id=site.world.patient_a)
    first, second = site.client(), site.client()
    pages = [c.get(f"/l/{token}") for c in (first, second)]
    won = first.post(f"/l/{token}", data={"csrf": csrf_of(pages[0].text)})
    lost = second.post(f"/l/{token}", data={"csrf": csrf_of(pages[1].text)})
    assert won.status_code == 303 and won.headers["location"] == "/portal/"
    assert lost.status_code == 200 and "gw_session" not in " ".join(lost.headers.get_list("set-cookie"))
    assert "/renew" in lost.text
    # Opening the same link again later shows the expired page, not the thread.
    again = second.get(f"/l/{token}")
    assert "/renew" in again.text


def test_signed_in_patient_reopening_a_spent_link_goes_to_the_thread(site: Site) -> None:
    browser = site.client()
    token = site.issue(patient_id=site.world.patient_a, thread_id=site.world.thread_a)
    page = browser.get(f"/l/{token}")
    browser.post(f"/l/{token}", data={"csrf": csrf_of(page.text)})
    again = browser.get(f"/l/{token}")
    assert again.status_code == 303 and again.headers["location"] == f"/portal/threads/{site.world.thread_a}"


def test_expired_spent_and_unknown_links_offer_a_fresh_link_with_one_answer(site: Site) -> None:
    expired = site.issue(patient_id=site.world.patient_a, thread_id=site.world.thread_a, ttl=timedelta(seconds=-1))
    unknown = secrets.token_urlsafe(32)
    browser = site.client()
    answers = {}
    for name, token in (("expired", expired), ("unknown", unknown)):
        page = browser.get(f"/l/{token}")
        assert page.status_code == 200 and f"/l/{token}/renew" in page.text
        # Pressing the button of an expired link signs nobody in.
        pressed = browser.post(f"/l/{token}", data={"csrf": csrf_of(page.text)})
        assert pressed.status_code == 200 and "gw_session" not in " ".join(pressed.headers.get_list("set-cookie"))
        answers[name] = browser.post(f"/l/{token}/renew", data={"csrf": csrf_of(page.text)})
        assert answers[name].status_code == 200
    assert _without_tokens(answers["expired"].text) == _without_tokens(answers["unknown"].text)

    rows = site.outbox("login_link")
    assert [(r.patient_id, r.thread_id) for r in rows] == [(site.world.patient_a, site.world.thread_a)]

    # The worker sends it: the fresh link works and lands on the same thread.
    site.deliver()
    token = LINK.findall(site.mail_text())[-1]
    fresh = site.client()
    page = fresh.get(f"/l/{token}")
    answer = fresh.post(f"/l/{token}", data={"csrf": csrf_of(page.text)})
    assert answer.status_code == 303 and answer.headers["location"] == f"/portal/threads/{site.world.thread_a}"


def test_fresh_links_are_rate_limited(site: Site) -> None:
    expired = site.issue(patient_id=site.world.patient_a, ttl=timedelta(seconds=-1))
    browser = site.client()
    csrf = csrf_of(browser.get(f"/l/{expired}").text)
    statuses = [browser.post(f"/l/{expired}/renew", data={"csrf": csrf}).status_code for _ in range(6)]
    # The page answers the same, but at most three links an hour go to one patient.
    assert statuses == [200] * 6
    assert len(site.outbox("login_link")) == 3
    unknown = secrets.token_urlsafe(32)
    statuses = [browser.post(f"/l/{unknown}/renew", data={"csrf": csrf}).status_code for _ in range(16)]
    assert statuses[:14] == [200] * 14 and statuses[-1] == 429  # 20 requests an hour from one client


def test_renew_needs_the_form_token(site: Site) -> None:
    expired = site.issue(patient_id=site.world.patient_a, ttl=timedelta(seconds=-1))
    browser = site.client()
    browser.get(f"/l/{expired}")
    assert browser.post(f"/l/{expired}/renew", data={"csrf": "forged"}).status_code == 403
    assert site.outbox("login_link") == []


def test_https_public_url_makes_the_session_cookie_secure(site_factory) -> None:  # type: ignore[no-untyped-def]
    site = site_factory(public_url="https://portal.example.test")
    token = site.issue(patient_id=site.world.patient_a)
    browser = site.client()
    page = browser.get(f"/l/{token}")
    set_csrf = page.headers["set-cookie"]
    assert "gw_csrf=" in set_csrf and "Secure" in set_csrf
    # This test talks plain HTTP to the server, so it hands over the Secure cookie itself, as a TLS proxy would.
    seed = set_csrf.split("gw_csrf=", 1)[1].split(";", 1)[0]
    answer = httpx.post(
        f"{site.url}/l/{token}", data={"csrf": csrf_of(page.text)}, headers={"Cookie": f"gw_csrf={seed}"}
    )
    assert answer.status_code == 303
    assert "Secure" in answer.headers["set-cookie"]
    assert page.headers["strict-transport-security"].startswith("max-age=")


def test_email_verification_link_from_the_worker(site: Site) -> None:
    keys = site.gw.keys
    with site.gw.transaction() as s:
        patient = add_patient(s, keys, practice_slug="cab", name="New Patient", email="new-patient@example.org")
        s.flush()
        contact, sent = request_verification(s, patient, "email", actor="cli")
        patient_id, contact_id = patient.id, contact.id
    assert sent
    site.deliver()
    mail = site.mails()[-1]
    assert mail["To"] == "new-patient@example.org"
    token = LINK.findall(site.mail_text())[-1]

    scanner = site.client()
    page = scanner.get(f"/l/{token}")
    scanner.head(f"/l/{token}")
    assert site.contact(patient_id, "email").verified_at is None
    answer = scanner.post(f"/l/{token}", data={"csrf": csrf_of(page.text)})
    assert answer.status_code == 200 and "gw_session" not in " ".join(answer.headers.get_list("set-cookie"))
    assert site.contact(patient_id, "email").verified_at is not None
    with site.gw.readers() as s:
        events = s.scalars(select(AuditEvent.action).where(AuditEvent.object_id == contact_id)).all()
    assert "contact.verified" in events


def test_phone_verification_code_from_the_worker(site: Site) -> None:
    keys = site.gw.keys
    with site.gw.transaction() as s:
        patient = add_patient(s, keys, practice_slug="cab", name="Texting Patient", phone="+33 6 98 76 54 32")
        s.flush()
        request_verification(s, patient, "phone", actor="cli")
        patient_id = patient.id
    site.deliver()
    code = site.last_code()
    browser = site.client()
    wrong = "000000" if code != "000000" else "111111"
    answer = site.post_form(browser, "/portal/verify", "/portal/verify", {"phone": "06 98 76 54 32", "code": wrong})
    assert answer.status_code == 422
    unknown = site.post_form(browser, "/portal/verify", "/portal/verify", {"phone": "06 11 11 11 11", "code": code})
    assert unknown.status_code == 422
    assert _without_tokens(unknown.text).replace("06 11 11 11 11", "N") == _without_tokens(answer.text).replace(
        "06 98 76 54 32", "N"
    )
    assert site.contact(patient_id, "phone").verified_at is None
    answer = site.post_form(browser, "/portal/verify", "/portal/verify", {"phone": "+33698765432", "code": code})
    assert answer.status_code == 200
    assert site.contact(patient_id, "phone").verified_at is not None


def test_phone_verification_stops_after_five_wrong_codes(site: Site) -> None:
    keys = site.gw.keys
    with site.gw.transaction() as s:
        patient = add_patient(s, keys, practice_slug="cab", name="Guessed Patient", phone="+33698765433")
        s.flush()
        request_verification(s, patient, "phone", actor="cli")
        patient_id = patient.id
    site.deliver()
    code = site.last_code()
    browser = site.client()
    wrong = [c for c in ("000000", "111111", "222222", "333333", "444444", "555555") if c != code][:5]
    for guess in wrong:
        site.post_form(browser, "/portal/verify", "/portal/verify", {"phone": "+33698765433", "code": guess})
    answer = site.post_form(browser, "/portal/verify", "/portal/verify", {"phone": "+33698765433", "code": code})
    assert answer.status_code == 422
    assert site.contact(patient_id, "phone").verified_at is None


def test_invitation_sets_a_password_once(site: Site) -> None:
    token = site.issue("invite", practitioner_id=site.world.doctor_id)
    browser = site.client()
    page = browser.get(f"/l/{token}")
    assert 'type="password"' in page.text
    short = browser.post(f"/l/{token}", data={"csrf": csrf_of(page.text), "password": "short", "password2": "short"})
    assert short.status_code == 422 and _row(site, token).used_at is None
    differ = browser.post(f"/l/{token}", data={"csrf": csrf_of(page.text), "password": "a" * 12, "password2": "b" * 12})
    assert differ.status_code == 422 and _row(site, token).used_at is None
    ok = browser.post(
        f"/l/{token}",
        data={"csrf": csrf_of(page.text), "password": "a long enough pass", "password2": "a long enough pass"},
    )
    assert ok.status_code == 303 and ok.headers["location"] == "/portal/pro/"
    assert browser.get("/portal/pro/").status_code == 200
    again = site.client().get(f"/l/{token}")
    assert "invitation" in again.text.lower() and "/renew" not in again.text


def test_practitioner_notice_link_leads_to_password_sign_in(site: Site) -> None:
    token = site.issue(practitioner_id=site.world.doctor_id, thread_id=site.world.thread_a)
    browser = site.client()
    page = browser.get(f"/l/{token}")
    answer = browser.post(f"/l/{token}", data={"csrf": csrf_of(page.text)})
    assert answer.status_code == 303
    assert answer.headers["location"] == f"/portal/pro/login?thread={site.world.thread_a}"
    with site.gw.readers() as s:
        assert s.scalar(select(WebSession.id)) is None  # a link alone never signs a practitioner in


def test_code_shaped_tokens_are_not_links(site: Site) -> None:
    """Codes are stored as "<owner>:<digits>"; the link route must not become a way around their attempt limit."""
    with site.gw.transaction() as s:
        from gateway import links

        issued = links.issue(s, "code", ttl=timedelta(minutes=10), patient_id=site.world.patient_a, digits=6)
    probe = f"{site.world.patient_a}:{issued.token}"
    browser = site.client()
    page = browser.get(f"/l/{probe}")
    assert page.status_code == 200 and "/renew" in page.text  # shown as an unknown link
    answer = browser.post(f"/l/{probe}", data={"csrf": csrf_of(page.text)})
    assert "gw_session" not in " ".join(answer.headers.get_list("set-cookie"))
    row = _row_by_id(site, issued.id)
    assert row.used_at is None and row.attempts == 0


def _row_by_id(site: Site, row_id: str) -> LoginToken:
    with site.gw.readers() as s:
        row = s.get(LoginToken, row_id)
        assert row is not None
        s.expunge(row)
        return row
