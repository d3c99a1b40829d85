"""The whole journey in a real browser (Debian's Chromium driven by Playwright): a notice email caught by the
loopback SMTP relay → its link → the confirmation page → the thread → a reply with an attachment → the
practitioner signs in, reads and replies → a new notice goes out. Screenshots land in test-artifacts/screenshots/."""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.web.conftest import DOCTOR_EMAIL, DOCTOR_PASSWORD, PDF, Site
from tests.support.services import REPO, unavailable

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = REPO / "test-artifacts" / "screenshots"
LINK = re.compile(r"http://[^\s\"'<>]+/l/[A-Za-z0-9_-]{20,}")

pytestmark = [pytest.mark.browser, pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """One Chromium for the module (never a downloaded build: the distribution's, see .ci/ensure-chromium)."""
    if not CHROMIUM.exists():
        unavailable("Chromium (/usr/bin/chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            yield chromium
        finally:
            chromium.close()


def _links_to(site: Site, address: str) -> list[str]:
    links = []
    for mail in site.mails():
        if mail["To"] == address:
            links.extend(LINK.findall(mail.get_body(("plain",)).get_content()))  # type: ignore[union-attr]
    return links


def _shot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_patient_and_practitioner_journey(
    browser,
    site: Site,
    canaries: dict[str, str],
    tmp_path: Path,  # type: ignore[no-untyped-def]
    capfd: pytest.CaptureFixture[str],
) -> None:
    world = site.world
    # The world's practitioner message is waiting in the outbox: the worker sends the patient's notice.
    site.deliver()
    patient_links = _links_to(site, canaries["email"])
    assert len(patient_links) == 1
    notice = site.mails()[-1]
    assert all(value not in notice.as_string() for value in canaries.values())

    patient = browser.new_context(locale="fr-FR", viewport={"width": 1100, "height": 900})
    page = patient.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(patient_links[0])
    assert page.locator("form button").count() == 1
    assert canaries["subject"] not in page.content()
    _shot(page, "01-link-confirmation")
    page.click("form button")
    page.wait_for_url(f"**/portal/threads/{world.thread_a}")
    assert page.locator(".message.practitioner .body").inner_text() == canaries["body"]
    assert page.locator(".emergency").is_visible()
    assert "15, 112" in page.locator(".emergency").inner_text()
    assert page.title() == "Messagerie sécurisée"
    _shot(page, "02-patient-thread")

    # Download the practitioner's attachment.
    with page.expect_download() as download_info:
        page.click(f"a[href$='/attachments/{world.attachment_a}']")
    download = download_info.value
    assert download.suggested_filename == canaries["attachment"]
    assert Path(download.path()).read_bytes() == PDF

    upload = tmp_path / "analyse.pdf"
    upload.write_bytes(PDF)
    page.fill("textarea[name=body]", "Merci, voici mes analyses.")
    page.set_input_files("input[type=file]", str(upload))
    page.click("form[action$='/messages'] button")
    page.wait_for_url(re.compile(rf".*/portal/threads/{world.thread_a}#m-.*"))
    assert "Merci, voici mes analyses." in page.locator(".message.patient .body").last.inner_text()
    assert page.locator(".message.patient .attachments a").last.inner_text() == "analyse.pdf"
    _shot(page, "03-patient-replied")
    page.goto(site.url + "/portal/new")
    assert page.locator(".emergency").is_visible()
    _shot(page, "04-patient-new-thread")

    # The practitioner: a password from the invitation link, then the notice of the patient's reply.
    doctor = browser.new_context(locale="fr-FR", viewport={"width": 1100, "height": 900})
    pro = doctor.new_page()
    pro.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    pro.goto(f"{site.url}/l/{site.issue('invite', practitioner_id=world.doctor_id)}")
    pro.fill("input[name=password]", DOCTOR_PASSWORD)
    pro.fill("input[name=password2]", DOCTOR_PASSWORD)
    _shot(pro, "05-practitioner-set-password")
    pro.click("form button")
    pro.wait_for_url("**/portal/pro/")
    pro.click("header form button")  # sign out
    site.deliver()
    doctor_links = _links_to(site, DOCTOR_EMAIL)
    assert len(doctor_links) == 1
    pro.goto(doctor_links[0])
    pro.click("form button")
    pro.wait_for_url(re.compile(r".*/portal/pro/login\?thread=.*"))
    pro.fill("input[name=email]", DOCTOR_EMAIL)
    pro.fill("input[name=password]", DOCTOR_PASSWORD)
    _shot(pro, "06-practitioner-sign-in")
    pro.click("form[action='/portal/pro/login'] button")
    pro.wait_for_url(f"**/portal/pro/threads/{world.thread_a}")
    assert "Merci, voici mes analyses." in pro.locator(".message.patient .body").last.inner_text()
    _shot(pro, "07-practitioner-thread")

    prescription = tmp_path / "ordonnance.pdf"
    prescription.write_bytes(PDF)
    pro.fill("textarea[name=body]", "Voici votre ordonnance.")
    pro.set_input_files("input[type=file]", str(prescription))
    pro.click("form[action$='/messages'] button")
    pro.wait_for_url(re.compile(rf".*/portal/pro/threads/{world.thread_a}#m-.*"))
    assert pro.locator(".message.practitioner .attachments a").last.inner_text() == "ordonnance.pdf"
    pro.goto(site.url + "/portal/pro/")
    _shot(pro, "08-practitioner-inbox")
    # Setting up an authenticator app: the key is shown as a QR code an app's camera can read.
    pro.goto(site.url + "/portal/pro/settings")
    pro.click("form[action='/portal/pro/totp/start'] button")
    qr = pro.locator(".qr svg")
    box = qr.bounding_box()
    assert box is not None and 120 <= box["width"] <= 400 and box["width"] == box["height"]
    _shot(pro, "08b-practitioner-authenticator-qr")

    # A new notice goes out to the patient, and its fresh link opens the thread with the answer.
    site.deliver()
    patient_links = _links_to(site, canaries["email"])
    assert len(patient_links) == 2 and patient_links[1] != patient_links[0]
    page.goto(patient_links[1])
    page.click("form button")
    page.wait_for_url(f"**/portal/threads/{world.thread_a}")
    assert "Voici votre ordonnance." in page.locator(".message.practitioner .body").last.inner_text()
    _shot(page, "09-patient-sees-answer")

    assert errors == []  # no CSP violation or other console error on any page
    patient.close()
    doctor.close()
    captured = capfd.readouterr()
    for value in canaries.values():
        assert value not in captured.out and value not in captured.err


def test_mobile_thread_page(browser, site: Site) -> None:  # type: ignore[no-untyped-def]
    context = browser.new_context(locale="en-GB", viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    page.goto(f"{site.url}/l/{site.issue(patient_id=site.world.patient_b, thread_id=site.world.thread_b)}")
    page.click("form button")
    page.wait_for_url(f"**/portal/threads/{site.world.thread_b}")
    assert page.locator("h1").inner_text() == "Bob's question"
    assert page.locator(".emergency").is_visible() and "Not for emergencies." in page.locator(".emergency").inner_text()
    # Nothing wider than the screen.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    _shot(page, "10-patient-thread-mobile")
    context.close()
