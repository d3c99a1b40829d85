"""Every notice kind, in every locale and on every channel, renders without content and fits its channel."""
from __future__ import annotations

import secrets
from pathlib import Path

import jinja2
import jinja2.meta
import pytest

from gateway.notices import KINDS, LOCALES, NoticeContext, RenderedNotice, render, templates_dir
from gateway.notices.gsm7 import is_gsm7, segments, to_gsm7
from tests.support.services import REPO
from tests.unit.notices.canaries import FAKE_THREAD, assert_clean

PUBLIC_URL = "https://portail.exemple.fr"
# A realistic worst case: secrets.token_urlsafe(32) after a public URL, 72 characters in all.
LONG_LOGIN_URL = f"{PUBLIC_URL}/l/{secrets.token_urlsafe(32)}"
# The longest practice name allowed, with letters GSM-7 lacks.
LONG_PRACTICE_NAME = "Maison de santé pluriprofessionnelle François-Côté de la Forêt, Île-Notre-Dame 2"
SHORT_PRACTICE_NAME = "Cabinet Dupont"
TEMPLATE_VARIABLES = {
    "practice_name", "locale", "login_url", "thread_code", "code", "emergency_numbers", "public_url", "subject",
}

CASES = [(kind, locale) for kind in KINDS for locale in LOCALES]


def careless_context(locale: str, practice_name: str = SHORT_PRACTICE_NAME, thread_code: str = "K7Q2") -> NoticeContext:
    """What a caller holding a whole thread can put in a context: it has nowhere for the rest."""
    thread = dict(FAKE_THREAD, practice_name=practice_name, login_url=LONG_LOGIN_URL)
    allowed = {"practice_name", "login_url"}
    return NoticeContext(
        locale=locale,  # type: ignore[arg-type]
        thread_code=thread_code,
        code="480213",
        **{key: value for key, value in thread.items() if key in allowed},
    )


def forms(notice: RenderedNotice) -> list[str | None]:
    return [notice.subject, notice.text, notice.html, notice.sms]


def test_login_url_is_realistically_long() -> None:
    assert len(LONG_LOGIN_URL) >= 70
    assert len(LONG_PRACTICE_NAME) == 80


@pytest.mark.parametrize(("kind", "locale"), CASES)
def test_every_form_renders_without_content(kind: str, locale: str) -> None:
    notice = render(kind, careless_context(locale), public_url=PUBLIC_URL)
    channels = KINDS[kind].channels
    assert (notice.subject is not None) == ("email" in channels)
    assert (notice.text is not None) == ("email" in channels)
    assert (notice.html is not None) == ("email" in channels)
    assert (notice.sms is not None) == ("sms" in channels)
    for form in forms(notice):
        assert_clean(form)
        if form is not None:
            assert SHORT_PRACTICE_NAME in form
            assert "{{" not in form and "{%" not in form
    if "login_url" in KINDS[kind].needs:
        assert all(LONG_LOGIN_URL in form for form in (notice.text, notice.html, notice.sms) if form is not None)
    if "code" in KINDS[kind].needs:
        assert all("480213" in form for form in (notice.text, notice.html, notice.sms) if form is not None)


@pytest.mark.parametrize(("kind", "locale"), [case for case in CASES if "sms" in KINDS[case[0]].channels])
def test_sms_fits_one_gsm7_segment_at_worst(kind: str, locale: str) -> None:
    notice = render(kind, careless_context(locale, LONG_PRACTICE_NAME, thread_code="K7Q2XZ"), public_url=PUBLIC_URL)
    assert notice.sms is not None
    assert is_gsm7(notice.sms)
    assert segments(notice.sms) == 1
    assert len(notice.sms) <= 160
    # The name may be shortened, never the link or the code the SMS is for.
    assert notice.sms.startswith(to_gsm7(LONG_PRACTICE_NAME)[:5])
    if "login_url" in KINDS[kind].needs:
        assert LONG_LOGIN_URL in notice.sms
    if "code" in KINDS[kind].needs:
        assert "480213" in notice.sms
    if kind == "new_message":
        assert "K7Q2XZ" in notice.sms


@pytest.mark.parametrize(("kind", "locale"), [case for case in CASES if "sms" in KINDS[case[0]].channels])
def test_sms_keeps_a_short_name_whole(kind: str, locale: str) -> None:
    # A 14-character name, a 72-character link and a 4-character thread code still fit whole.
    notice = render(kind, careless_context(locale, "Cabinet Dupré"), public_url=PUBLIC_URL)
    assert notice.sms is not None
    assert notice.sms.startswith("Cabinet Dupré: ")


def test_sms_spells_the_practice_name_in_gsm7() -> None:
    notice = render("verify_sms", NoticeContext(practice_name="Cabinet Françoise Bœuf", locale="fr", code="123456"), public_url=PUBLIC_URL)
    assert notice.sms is not None
    assert notice.sms.startswith("Cabinet Francoise Boeuf: ")


def test_an_sms_that_cannot_fit_is_refused() -> None:
    public_url = "https://messagerie-securisee.maison-de-sante-pluriprofessionnelle.example.fr"
    ctx = NoticeContext(practice_name=SHORT_PRACTICE_NAME, locale="fr", login_url=f"{public_url}/l/{'a' * 43}", thread_code="K7Q2XZ")
    with pytest.raises(ValueError, match="one GSM-7 segment"):
        render("new_message", ctx, public_url=public_url)


def test_new_message_sms_omits_the_reply_hint_without_a_thread_code() -> None:
    ctx = NoticeContext(practice_name=SHORT_PRACTICE_NAME, locale="en", login_url=LONG_LOGIN_URL)
    notice = render("new_message", ctx, public_url=PUBLIC_URL)
    assert notice.sms == f"{SHORT_PRACTICE_NAME}: new message {LONG_LOGIN_URL} Not for emergencies."


@pytest.mark.parametrize("locale", LOCALES)
def test_acknowledgement_says_whom_to_call(locale: str) -> None:
    ctx = NoticeContext(practice_name=SHORT_PRACTICE_NAME, locale=locale, emergency_numbers="15, 112")  # type: ignore[arg-type]
    notice = render("acknowledgement", ctx, public_url=PUBLIC_URL)
    assert all("15, 112" in form for form in (notice.text, notice.html, notice.sms) if form is not None)


@pytest.mark.parametrize("locale", LOCALES)
def test_sms_help_points_to_the_public_url_and_stop(locale: str) -> None:
    notice = render("sms_help", NoticeContext(practice_name=SHORT_PRACTICE_NAME, locale=locale), public_url=PUBLIC_URL + "/")  # type: ignore[arg-type]
    assert notice.sms is not None
    assert f" {PUBLIC_URL} " in notice.sms
    assert "STOP" in notice.sms


def test_html_escapes_the_practice_name_and_text_does_not() -> None:
    ctx = NoticeContext(practice_name="Cabinet <b>Dupont</b> & fils", locale="fr", login_url=LONG_LOGIN_URL)
    notice = render("new_message", ctx, public_url=PUBLIC_URL)
    assert notice.html is not None and notice.text is not None
    assert "<b>Dupont" not in notice.html
    assert "Cabinet &lt;b&gt;Dupont&lt;/b&gt; &amp; fils" in notice.html
    assert "Cabinet <b>Dupont</b> & fils" in notice.text
    assert notice.html.startswith("<!DOCTYPE html>\n<html lang=\"fr\">")


def test_login_url_must_start_with_the_public_url() -> None:
    ctx = NoticeContext(practice_name=SHORT_PRACTICE_NAME, locale="fr", login_url="https://evil.example.net/l/" + "a" * 43)
    with pytest.raises(ValueError, match="public url"):
        render("login_link", ctx, public_url=PUBLIC_URL)
    # The path under the public URL is exactly /l/<token>: nothing can ride along in it.
    ctx = NoticeContext(practice_name=SHORT_PRACTICE_NAME, locale="fr", login_url=f"{PUBLIC_URL}/biopsy/l/{'a' * 43}")
    with pytest.raises(ValueError, match="public url"):
        render("login_link", ctx, public_url=PUBLIC_URL)


@pytest.mark.parametrize("public_url", ["portail.exemple.fr", "https://", "https://portail.exemple.fr/?x=1", "ftp://portail.exemple.fr"])
def test_public_url_must_be_an_http_base(public_url: str) -> None:
    with pytest.raises(ValueError, match="public_url"):
        render("sms_help", NoticeContext(practice_name=SHORT_PRACTICE_NAME, locale="fr"), public_url=public_url)


def test_a_kind_refuses_a_context_missing_what_it_needs() -> None:
    with pytest.raises(ValueError, match="needs login_url"):
        render("new_message", NoticeContext(practice_name=SHORT_PRACTICE_NAME, locale="fr"), public_url=PUBLIC_URL)
    with pytest.raises(ValueError, match="needs code"):
        render("verify_sms", NoticeContext(practice_name=SHORT_PRACTICE_NAME, locale="fr"), public_url=PUBLIC_URL)
    with pytest.raises(ValueError, match="unknown notice kind"):
        render("lab_results", NoticeContext(practice_name=SHORT_PRACTICE_NAME, locale="fr"), public_url=PUBLIC_URL)


def test_template_files_match_the_kinds_exactly() -> None:
    root = templates_dir() / "notices"
    kinds_on_disk = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")}
    assert kinds_on_disk == set(KINDS)
    for kind, spec in KINDS.items():
        expected = set()
        if "email" in spec.channels:
            expected |= {"subject.txt", "body.txt", "body.html"}
        if "sms" in spec.channels:
            expected.add("sms.txt")
        for locale in LOCALES:
            assert {p.name for p in (root / kind / locale).iterdir()} == expected, (kind, locale)
        assert {p.name for p in (root / kind).iterdir()} == set(LOCALES)


def test_templates_use_only_context_variables() -> None:
    # Structural proof: no template can print anything the context does not hold.
    root = templates_dir() / "notices"
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(root))
    for path in sorted(root.rglob("*")):
        if path.is_file():
            source = path.read_text(encoding="utf-8")
            names = jinja2.meta.find_undeclared_variables(env.parse(source))
            assert names <= TEMPLATE_VARIABLES, (path, names - TEMPLATE_VARIABLES)


def test_sms_templates_are_written_in_gsm7() -> None:
    for path in (templates_dir() / "notices").rglob("sms.txt"):
        assert is_gsm7(path.read_text(encoding="utf-8")), path


def test_templates_are_found_in_the_checkout() -> None:
    assert templates_dir() == REPO / "templates"
    assert isinstance(templates_dir(), Path)


def test_only_the_forms_of_the_channels_asked_for_are_rendered() -> None:
    ctx = careless_context("fr")
    every = render("new_message", ctx, public_url=PUBLIC_URL)
    email = render("new_message", ctx, public_url=PUBLIC_URL, channels={"email"})
    sms = render("new_message", ctx, public_url=PUBLIC_URL, channels=("sms",))
    assert email.sms is None and (email.subject, email.text) == (every.subject, every.text)
    assert email.html is not None and sms.sms == every.sms
    assert (sms.subject, sms.text, sms.html) == (None, None, None)
    assert render("new_message", ctx, public_url=PUBLIC_URL, channels=()) == RenderedNotice(None, None, None, None)
