"""The patient's pages: reading (escaped, audited), replying and starting threads with attachments under the
email allowlist, downloads, and what keeps one patient out of another's threads, sessions, CSRF and headers."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select, update

from gateway.db.tables import Attachment, AuditEvent, Message, OutboxRow, Practitioner, Thread, WebSession
from gateway.directory.patients import add_care
from gateway.directory.practices import add_practitioner
from gateway.threads.service import get_thread, post_message
from tests.integration.web.conftest import PDF, Site, csrf_of

# The pages' storage paths (tokens, sessions, counters, polling) run on both databases in test_links and test_api;
# these tests exercise what the pages do with them, on SQLite only, to keep the web suite fast.
pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

EMERGENCY = "15, 112, 114"


def _messages(site: Site, thread_id: str) -> list[Message]:
    with site.gw.readers() as s:
        rows = list(s.scalars(select(Message).where(Message.thread_id == thread_id).order_by(Message.created_at)))
        s.expunge_all()
        return rows


def _thread_count(site: Site, patient_id: str) -> int:
    with site.gw.readers() as s:
        return len(s.scalars(select(Thread.id).where(Thread.patient_id == patient_id)).all())


def _audit(site: Site, action: str) -> list[AuditEvent]:
    with site.gw.readers() as s:
        rows = list(s.scalars(select(AuditEvent).where(AuditEvent.action == action)))
        s.expunge_all()
        return rows


def test_thread_page_shows_the_conversation_escaped_and_audits_the_read(site: Site, canaries: dict[str, str]) -> None:
    keys = site.gw.keys
    with site.gw.transaction() as s:
        post_message(
            s,
            keys,
            get_thread(s, site.world.thread_a),
            author="patient",
            channel="email",
            body="<script>alert(1)</script> & <b>bold</b>",
        )
    browser = site.client()
    landing = site.sign_in(browser, site.world.patient_a, site.world.thread_a)
    page = browser.get(landing.headers["location"])
    assert page.status_code == 200
    text = page.text
    assert canaries["subject"].replace("'", "&#39;") in text
    assert canaries["body"].replace("'", "&#39;") in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in text
    assert "<script" not in text
    # Messages in order, with their author.
    assert text.index(canaries["body"].replace("'", "&#39;")) < text.index("&lt;script&gt;")
    assert "Dr Alpha" in text and "Vous" in text  # the patient's locale is French
    assert EMERGENCY in text and "urgence" in text
    # No personal data in the title or in any link.
    title = re.search(r"<title>(.*?)</title>", text, re.S).group(1)  # type: ignore[union-attr]
    assert title.strip() == "Messagerie sécurisée"
    for href in re.findall(r'(?:href|action)="([^"]+)"', text):
        assert all(v not in href for v in canaries.values())
    reads = [e for e in _audit(site, "thread.read") if e.object_id == site.world.thread_a]
    assert [e.actor for e in reads] == [f"patient:{site.world.patient_a}"]


def test_attachments_download_as_attachments_with_their_stored_type(site: Site, canaries: dict[str, str]) -> None:
    browser = site.client()
    site.sign_in(browser, site.world.patient_a, site.world.thread_a)
    page = browser.get(f"/portal/threads/{site.world.thread_a}")
    href = f"/portal/threads/{site.world.thread_a}/attachments/{site.world.attachment_a}"
    assert f'href="{href}"' in page.text
    download = browser.get(href)
    assert download.status_code == 200
    assert download.content == PDF
    assert download.headers["content-type"] == "application/pdf"
    disposition = download.headers["content-disposition"]
    assert disposition.startswith("attachment;") and canaries["attachment"] in disposition
    assert download.headers["x-content-type-options"] == "nosniff"
    assert [e.object_id for e in _audit(site, "attachment.read")] == [site.world.attachment_a]


def test_reply_with_an_attachment_goes_to_the_thread_and_notifies_the_practitioner(site: Site) -> None:
    browser = site.client()
    site.sign_in(browser, site.world.patient_a, site.world.thread_a)
    path = f"/portal/threads/{site.world.thread_a}"
    answer = site.post_form(
        browser,
        path,
        f"{path}/messages",
        {"body": "Merci docteur"},
        files=[("files", ("scan.pdf", PDF, "application/pdf"))],
    )
    assert answer.status_code == 303 and answer.headers["location"].startswith(path + "#m-")
    last = _messages(site, site.world.thread_a)[-1]
    assert (last.author, last.channel) == ("patient", "portal")
    with site.gw.readers() as s:
        atts = s.scalars(select(Attachment).where(Attachment.message_id == last.id)).all()
        notice = s.scalar(select(OutboxRow).where(OutboxRow.message_id == last.id))
    assert [(a.content_type, a.size) for a in atts] == [("application/pdf", len(PDF))]
    assert notice is not None and notice.practitioner_id == site.world.doctor_id and notice.kind == "new_message"
    page = browser.get(path)
    assert "Merci docteur" in page.text and "scan.pdf" in page.text


def test_refused_files_are_named_and_nothing_is_sent(site: Site) -> None:
    browser = site.client()
    site.sign_in(browser, site.world.patient_a, site.world.thread_a)
    path = f"/portal/threads/{site.world.thread_a}"
    before = len(_messages(site, site.world.thread_a))
    answer = site.post_form(
        browser,
        path,
        f"{path}/messages",
        {"body": "Voici mes fichiers"},
        files=[
            ("files", ("ok.pdf", PDF, "application/pdf")),
            ("files", ("setup.exe", b"MZ\x90\x00" + b"\x00" * 64, "application/octet-stream")),
            ("files", ("fake.pdf", b"MZ not a pdf", "application/pdf")),
        ],
    )
    assert answer.status_code == 422
    assert "setup.exe" in answer.text and "fake.pdf" in answer.text
    assert "Rien n&#39;a été envoyé" in answer.text
    assert "Voici mes fichiers" in answer.text  # the draft is kept
    assert len(_messages(site, site.world.thread_a)) == before
    empty = site.post_form(browser, path, f"{path}/messages", {"body": "   "})
    assert empty.status_code == 422 and len(_messages(site, site.world.thread_a)) == before


def test_new_thread_only_to_practitioners_in_care_with_messaging_on(site: Site) -> None:
    keys = site.gw.keys
    with site.gw.transaction() as s:
        quiet = add_practitioner(
            s, keys, practice_slug="cab", slug="dr-quiet", name="Dr Quiet", email="quiet@example.org", messaging=False
        )
        stranger = add_practitioner(
            s, keys, practice_slug="cab", slug="dr-stranger", name="Dr Stranger", email="stranger@example.org"
        )
        s.flush()
        add_care(s, patient_id=site.world.patient_a, practitioner_slug="dr-quiet")
        quiet_id, stranger_id = quiet.id, stranger.id
    browser = site.client()
    site.sign_in(browser, site.world.patient_a)
    page = browser.get("/portal/new")
    assert EMERGENCY in page.text
    assert "Dr Alpha" in page.text and "Dr Quiet" not in page.text and "Dr Stranger" not in page.text
    threads_before = _thread_count(site, site.world.patient_a)
    for refused in (quiet_id, stranger_id, "0" * 32):
        answer = site.post_form(
            browser,
            "/portal/new",
            "/portal/threads",
            {"practitioner": refused, "subject": "Question", "body": "Bonjour"},
        )
        assert answer.status_code == 422
    assert _thread_count(site, site.world.patient_a) == threads_before
    answer = site.post_form(
        browser,
        "/portal/new",
        "/portal/threads",
        {"practitioner": site.world.doctor_id, "subject": "Nouvelle question", "body": "Bonjour"},
        files=[("files", ("photo.pdf", PDF, "application/pdf"))],
    )
    assert answer.status_code == 303
    thread_id = answer.headers["location"].rsplit("/", 1)[1]
    page = browser.get(answer.headers["location"])
    assert "Nouvelle question" in page.text and "photo.pdf" in page.text
    assert [m.channel for m in _messages(site, thread_id)] == ["portal"]
    assert any(
        r.thread_id == thread_id and r.practitioner_id == site.world.doctor_id for r in site.outbox("new_message")
    )


def test_a_patient_never_sees_another_patients_thread(site: Site) -> None:
    browser = site.client()
    site.sign_in(browser, site.world.patient_a)
    other = site.world.thread_b
    not_found = browser.get(f"/portal/threads/{'f' * 32}")
    assert not_found.status_code == 404
    for path in (
        f"/portal/threads/{other}",
        f"/portal/threads/{site.world.other_practice_thread}",
        f"/portal/threads/{other}/attachments/{site.world.attachment_a}",
    ):
        answer = browser.get(path)
        assert answer.status_code == 404
        assert re.sub(r'value="[^"]+"', "", answer.text) == re.sub(r'value="[^"]+"', "", not_found.text)
        assert "For Bob only" not in answer.text
    # An attachment of one's own thread under another thread's path is not found either.
    assert browser.get(f"/portal/threads/{other}/attachments/{site.world.attachment_a}").status_code == 404
    csrf = csrf_of(browser.get("/portal/").text)
    before = len(_messages(site, other))
    answer = browser.post(f"/portal/threads/{other}/messages", data={"csrf": csrf, "body": "intrusion"})
    assert answer.status_code == 404 and len(_messages(site, other)) == before
    listing = browser.get("/portal/")
    assert other not in listing.text and "Bob" not in listing.text


def test_session_idle_and_absolute_timeouts(site: Site) -> None:
    browser = site.client()
    site.sign_in(browser, site.world.patient_a)
    assert browser.get("/portal/").status_code == 200
    now = datetime.now(timezone.utc)
    with site.gw.transaction() as s:
        s.execute(update(WebSession).values(last_seen_at=now - timedelta(minutes=31)))
    assert browser.get("/portal/").status_code == 401
    assert browser.get(f"/portal/threads/{site.world.thread_a}").status_code == 401

    site.sign_in(browser, site.world.patient_a)
    with site.gw.transaction() as s:
        s.execute(update(WebSession).where(WebSession.ended_at.is_(None)).values(expires_at=now - timedelta(seconds=1)))
    assert browser.get("/portal/").status_code == 401

    site.sign_in(browser, site.world.patient_a)
    page = browser.get("/portal/")
    assert page.status_code == 200
    out = browser.post("/portal/logout", data={"csrf": csrf_of(page.text)})
    assert out.status_code == 200 and 'gw_session=""' in out.headers["set-cookie"]
    with site.gw.readers() as s:
        assert s.scalar(select(WebSession.id).where(WebSession.ended_at.is_(None))) is None


def test_forms_without_a_valid_token_or_from_another_origin_are_refused(site: Site) -> None:
    browser = site.client()
    site.sign_in(browser, site.world.patient_a)
    path = f"/portal/threads/{site.world.thread_a}"
    page = browser.get(path)
    good = csrf_of(page.text)
    before = len(_messages(site, site.world.thread_a))
    assert browser.post(f"{path}/messages", data={"body": "no token"}).status_code == 403
    assert browser.post(f"{path}/messages", data={"csrf": good[:-2] + "xx", "body": "bad"}).status_code == 403
    # A token from another browser does not fit this one's cookie.
    other = site.client()
    other_token = csrf_of(other.get("/portal/verify").text)
    assert browser.post(f"{path}/messages", data={"csrf": other_token, "body": "swapped"}).status_code == 403
    answer = browser.post(
        f"{path}/messages", data={"csrf": good, "body": "cross"}, headers={"Origin": "https://evil.example"}
    )
    assert answer.status_code == 403
    assert len(_messages(site, site.world.thread_a)) == before
    assert browser.post(f"{path}/messages", data={"csrf": good, "body": "fine"}).status_code == 303


def test_every_page_sends_the_security_headers_and_no_script(site: Site) -> None:
    browser = site.client()
    site.sign_in(browser, site.world.patient_a)
    for path in (
        "/portal/",
        "/portal/new",
        f"/portal/threads/{site.world.thread_a}",
        "/portal/verify",
        "/portal/nothing-here",
        "/portal/pro/login",
    ):
        page = browser.get(path)
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and "script-src" not in csp
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["referrer-policy"] == "no-referrer"
        assert page.headers["cache-control"] == "no-store"
        assert "<script" not in page.text and " style=" not in page.text and "<style" not in page.text
    css = browser.get("/portal/static/portal.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


def test_second_factor_by_sms(site_factory, canaries: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    site: Site = site_factory(portal_second_factor="sms")
    browser = site.client()
    landing = site.sign_in(browser, site.world.patient_a, site.world.thread_a)
    assert landing.headers["location"] == "/portal/code"
    # Until the code is given, no page but the code page opens.
    assert browser.get("/portal/").headers["location"] == "/portal/code"
    assert browser.get(f"/portal/threads/{site.world.thread_a}").headers["location"] == "/portal/code"
    rows = site.outbox("second_factor")
    assert [r.contact_id for r in rows] == [site.contact(site.world.patient_a, "phone").id]
    site.deliver()
    code = site.last_code()
    page = browser.get("/portal/code")
    assert page.status_code == 200 and code not in page.text
    for guess in [g for g in ("000000", "111111", "222222", "333333", "444444", "555555") if g != code][:5]:
        assert browser.post("/portal/code", data={"csrf": csrf_of(page.text), "code": guess}).status_code == 422
    # Five wrong tries: even the right code no longer opens the session.
    assert browser.post("/portal/code", data={"csrf": csrf_of(page.text), "code": code}).status_code == 422
    resent = browser.post("/portal/code/resend", data={"csrf": csrf_of(page.text)})
    assert resent.status_code == 200
    site.deliver()
    fresh = site.last_code()
    answer = browser.post("/portal/code", data={"csrf": csrf_of(page.text), "code": fresh})
    assert answer.status_code == 303 and answer.headers["location"] == f"/portal/threads/{site.world.thread_a}"
    # The session token changed once the second factor was done.
    assert "gw_session=" in answer.headers["set-cookie"]
    assert browser.get(answer.headers["location"]).status_code == 200
    for body in site.sms_bodies():
        assert all(value not in body for value in canaries.values())


def test_second_factor_codes_expire_after_ten_minutes(site_factory) -> None:  # type: ignore[no-untyped-def]
    from gateway.db.tables import LoginToken

    site: Site = site_factory(portal_second_factor="email")
    browser = site.client()
    site.sign_in(browser, site.world.patient_a)
    site.deliver()
    code = re.search(r"\b(\d{6})\b", site.mail_text()).group(1)  # type: ignore[union-attr]
    with site.gw.transaction() as s:
        s.execute(
            update(LoginToken)
            .where(LoginToken.purpose == "code")
            .values(created_at=datetime.now(timezone.utc) - timedelta(minutes=11))
        )
    page = browser.get("/portal/code")
    assert browser.post("/portal/code", data={"csrf": csrf_of(page.text), "code": code}).status_code == 422


@pytest.mark.parametrize("path", ["/portal/", "/portal/new", "/portal/threads/" + "a" * 32])
def test_pages_need_a_session(site: Site, path: str) -> None:
    answer = site.client().get(path)
    assert answer.status_code == 401 and "gw_session" not in " ".join(answer.headers.get_list("set-cookie"))


def test_practitioner_session_cannot_use_patient_pages(site: Site) -> None:
    doctor = site.doctor()
    assert doctor.get("/portal/").status_code == 401
    with site.gw.readers() as s:
        assert s.get(Practitioner, site.world.doctor_id) is not None
