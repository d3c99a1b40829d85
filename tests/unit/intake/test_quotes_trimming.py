"""Quote and signature stripping: upstream expectations (email_reply_trimmer, talon) and our FR/EN cases."""
from __future__ import annotations

import email
import re
from email import policy
from email.message import EmailMessage

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.intake import quotes
from gateway.intake.quotes import html_quote_action, split_reply_text, strip_reply_text
from gateway.intake.text import html_to_text
from tests.support.intake_corpus import corpus_file, corpus_names

TRIMMER = "email_reply_trimmer"

# Upstream normalises Usenet "Name>" quote marks to ">" in the elided text but still reads them as text
# when trimming; we keep such lines verbatim, so only the elided text differs (the trimmed one matches).
ELIDED_XFAIL = {"embedded_email_1.txt": "upstream rewrites 'Richard>' to '>' in the elided text only"}


@pytest.mark.parametrize("name", corpus_names(f"{TRIMMER}/emails", "*.txt"))
def test_email_reply_trimmer_trimmed(name: str) -> None:
    source = corpus_file(f"{TRIMMER}/emails", name).read_text(encoding="utf-8")
    expected = corpus_file(f"{TRIMMER}/trimmed", name).read_text(encoding="utf-8")
    assert strip_reply_text(source.strip()) == expected.strip()


@pytest.mark.parametrize("name", corpus_names(f"{TRIMMER}/emails", "*.txt"))
def test_email_reply_trimmer_elided(name: str) -> None:
    if name in ELIDED_XFAIL:
        pytest.xfail(ELIDED_XFAIL[name])
    source = corpus_file(f"{TRIMMER}/emails", name).read_text(encoding="utf-8")
    expected = corpus_file(f"{TRIMMER}/elided", name).read_text(encoding="utf-8")
    assert split_reply_text(source.strip())[1] == expected.strip()


def test_email_reply_trimmer_crlf_input_really_has_crlf() -> None:
    # Guards the corpus itself: the CRLF case is only a test if the file kept its CR characters.
    assert b"\r\n" in corpus_file(f"{TRIMMER}/emails", "normalize_line_endings.txt").read_bytes()


def test_email_reply_trimmer_negative_embedded_case_is_kept() -> None:
    text = corpus_file(f"{TRIMMER}/matchers", "does_not_contain_embedded_email.txt").read_text(encoding="utf-8")
    assert strip_reply_text(text) == text.strip()


TALON_HTML_EXPECTED = re.sub(r"\s", "", "Hi. I am fine.\n\nThanks,\nAlex")


@pytest.mark.parametrize("name", corpus_names("talon/html_replies", "*.html"))
def test_talon_html_replies(name: str) -> None:
    html = corpus_file("talon/html_replies", name).read_bytes().decode("utf-8", "replace")
    reply = strip_reply_text(html_to_text(html, drop_quotes=True))
    assert re.sub(r"\s", "", reply) == TALON_HTML_EXPECTED


@pytest.mark.parametrize("name", corpus_names("talon/standard_replies", "*.eml"))
def test_talon_standard_replies_quotation_only(name: str) -> None:
    """Talon removes quotations only (signatures stay): the first text/plain part, stripped."""
    path = corpus_file("talon/standard_replies", name)
    message = email.message_from_bytes(path.read_bytes(), policy=policy.default)
    assert isinstance(message, EmailMessage)
    first_plain = next(part for part in message.walk() if part.get_content_type() == "text/plain")
    expected_file = path.with_name(path.stem + "_reply_text")
    expected = expected_file.read_text(encoding="utf-8").strip() if expected_file.exists() else "Hello"
    assert strip_reply_text(first_plain.get_content(), keep_signature=True) == expected


# --- our own French and English cases ------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    pytest.param(
        "Merci docteur.\n\nLe lun. 3 mars 2025 à 10:00, Dr Martin <cabinet@exemple.fr> a écrit :\n\n> Bonjour\n",
        "Merci docteur.", id="gmail-fr"),
    pytest.param(
        "Merci.\n\nLe lun. 3 mars 2025 à 10:00, Dr Martin <cabinet@exemple.fr> a\nécrit\u202f:\n> Bonjour\n",
        "Merci.", id="gmail-fr-wrapped-narrow-nbsp"),
    pytest.param("Thanks.\n\nOn Mon, Mar 3, 2025 at 10:00 AM Dr Office <o@clinic.test> wrote:\n> Hi\n",
                 "Thanks.", id="gmail-en"),
    pytest.param(
        "Bien reçu.\n\n________________________________\nDe : Cabinet <c@exemple.fr>\nEnvoyé : lundi 3 mars 2025 "
        "10:00\nÀ : Jean Dupont\nObjet : RDV\n\nVotre rendez-vous est confirmé.\n",
        "Bien reçu.", id="outlook-fr-header-block"),
    pytest.param(
        "Bien reçu.\n\nDe : Cabinet <c@exemple.fr>\nEnvoyé : lundi 3 mars 2025 10:00\nÀ : Jean Dupont\n"
        "Objet : RDV\n\nVotre rendez-vous est confirmé.\n",
        "Bien reçu.", id="outlook-fr-header-block-no-rule"),
    pytest.param(
        "Got it.\n\nFrom: Clinic <c@clinic.test>\nSent: Monday, March 3, 2025 10:00 AM\nTo: Anna\n"
        "Subject: Appointment\n\nConfirmed.\n",
        "Got it.", id="outlook-en-header-block"),
    pytest.param("Merci.\n\n-----Message d'origine-----\nDe : Cabinet\nEnvoyé : lundi 3 mars 2025 10:00\n\nTexte\n",
                 "Merci.", id="message-d-origine"),
    pytest.param("Thanks.\n\n-----Original Message-----\nFrom: Clinic\nSent: Monday, March 3, 2025\n\nText\n",
                 "Thanks.", id="original-message"),
    pytest.param("Oui.\n\nEnvoyé de mon iPhone\n", "Oui.", id="envoye-de-mon-iphone"),
    pytest.param("Yes.\n\nSent from my iPhone\n", "Yes.", id="sent-from-my-iphone"),
    pytest.param("Oui.\n\nObtenir Outlook pour iOS<https://aka.ms/o0ukef>\n", "Oui.", id="outlook-ios-fr-footer"),
    pytest.param("Oui.\n\n-- \nJean Dupont\n06 12 34 56 78\n", "Oui.", id="dash-dash-signature"),
    pytest.param(
        "Merci pour la réponse.\n\n\n    Le lundi 3 mars 2025, 10:00:00 UTC+1, Cabinet <c@exemple.fr> a écrit :\n\n"
        "Votre résultat est normal.\n",
        "Merci pour la réponse.", id="yahoo-fr-unquoted-history"),
    pytest.param(
        "Thanks.\n\nOn Monday, March 3, 2025, 10:00:00 AM GMT+1, Clinic <c@clinic.test> wrote:\n\nResult normal.\n",
        "Thanks.", id="yahoo-en-unquoted-history"),
    pytest.param("Le 03/03/2025 à 10:00, Cabinet a écrit :\n> Question ?\n\nRéponse en dessous.\n",
                 "Réponse en dessous.", id="thunderbird-bottom-post"),
    pytest.param(
        "Le 3 mars 2025 à 10:00, Cabinet <c@exemple.fr> a écrit :\n> Avez-vous de la fièvre ?\nNon.\n"
        "> Toux ?\nUn peu, le soir.\n",
        "> Avez-vous de la fièvre ?\nNon.\n> Toux ?\nUn peu, le soir.", id="interleaved-fr"),
    pytest.param(
        "On Mon, Mar 3, 2025 at 10:00 AM Clinic <c@clinic.test> wrote:\n> Any fever?\n\nNo.\n\n> Cough?\n\n"
        "A little.\n",
        "> Any fever?\n\nNo.\n\n> Cough?\n\nA little.", id="interleaved-en"),
])
def test_strip_reply_text_french_and_english(text: str, expected: str) -> None:
    assert strip_reply_text(text) == expected


@pytest.mark.parametrize("text", [
    pytest.param("From my side, the pain started on Monday and got worse after the walk in the park "
                 "on Saturday afternoon.", id="from-my-long-sentence"),
    pytest.param("Absent hier, je reviens vers vous.\nLa douleur est toujours là.", id="absent-word"),
    pytest.param("Le médecin a dit :\n- repos\n- hydratation", id="le-at-line-start"),
    pytest.param("Je prends :\n-\nDoliprane\n*\nSpasfon", id="lone-bullets"),
    pytest.param("Tension < 14\net pouls normal", id="less-than-at-line-end"),
])
def test_patient_text_is_not_mistaken_for_history(text: str) -> None:
    assert strip_reply_text(text) == text


def test_keep_signature_keeps_the_footer_but_drops_history() -> None:
    text = "Hello\n\n-- \nJean\nSent from my phone\n\nOn Mon, Mar 3, 2025, Clinic wrote:\n\n> Hi\n"
    assert strip_reply_text(text, keep_signature=True) == "Hello\n\n-- \nJean\nSent from my phone"
    assert strip_reply_text(text) == "Hello"


def test_quote_only_reply_trims_to_empty_and_reports_what_was_removed() -> None:
    text = "On Mon, Mar 3, 2025 at 10:00 AM Clinic <c@clinic.test> wrote:\n> Your results are ready.\n"
    assert split_reply_text(text) == ("", text.strip())


def test_long_lines_do_not_blow_up() -> None:
    # Per-line marker regexes backtrack on long lines; lines beyond the longest marker are plain text.
    text = "1234 " + "a" * 200_000 + " <x@y.z>:\n" + ("On " * 50_000) + "\n> quote"
    assert strip_reply_text(text).startswith("1234 ")


@pytest.mark.parametrize(("tag", "attrs", "action"), [
    ("blockquote", {"type": "cite"}, "skip"),
    ("div", {"class": "gmail_quote"}, "skip"),
    ("div", {"class": "gmail_signature"}, "skip"),
    ("div", {"class": "moz-cite-prefix"}, "skip"),
    ("div", {"id": "divRplyFwdMsg"}, "cut"),
    ("div", {"id": "appendonsend"}, "cut"),
    ("hr", {"id": "stopSpelling"}, "cut"),
    ("div", {"style": "border:none;border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0cm 0cm 0cm"}, "tentative"),
    ("div", {"style": "border-top-style: solid; border-top-width: 1px"}, "tentative"),
    ("div", {"class": "WordSection1"}, "keep"),
    ("p", {}, "keep"),
])
def test_html_quote_rules(tag: str, attrs: dict[str, str], action: str) -> None:
    assert html_quote_action(tag, attrs) == action


def test_html_border_box_without_headers_is_kept() -> None:
    html = ('<div>Voici mon traitement :</div><div style="border-top:solid #ccc 1pt">Doliprane 1 g</div>'
            '<div>Merci</div>')
    assert html_to_text(html, drop_quotes=True) == "Voici mon traitement :\nDoliprane 1 g\nMerci"


def test_html_border_box_with_french_headers_cuts_the_rest() -> None:
    html = ('<p class="MsoNormal">Bien reçu.</p><div style="border:none;border-top:solid #E1E1E1 1.0pt">'
            '<p class="MsoNormal"><b>De&nbsp;:</b> Cabinet<br><b>Envoyé&nbsp;:</b> lundi 3 mars 2025</p></div>'
            '<p class="MsoNormal">Ancien message</p>')
    assert html_to_text(html, drop_quotes=True) == "Bien reçu."
    assert "Ancien message" in html_to_text(html)


@pytest.mark.parametrize("text", [
    pytest.param("Sent by my GP for a blood test last week.\nThe nurse said it was fine.", id="sent-by-sentence"),
    pytest.param("Envoyé de mon lit d'hôpital :\nla douleur est revenue cette nuit.", id="envoye-de-mon-sentence"),
])
def test_footer_words_followed_by_more_text_are_kept(text: str) -> None:
    assert strip_reply_text(text) == text


# The embedded-mail prefilter is substring tests; it must let through every line the regex it replaced
# let through (an alternation of the same literals, one branch case-insensitive), or a marker is missed.
_HINT_REGEX = re.compile(r"[:@]|GMT\+| via |--|(?i:posted by|reply message)")
_HINT_PIECES = [":", "@", "GMT", "+", " via ", "via", "-", "--", "Posted", "POSTED BY", "posted by", "poſted by",
                "Reply Message", "reply", " message", "a", "é", " ", "K", "\u212a", "ß", "SS", "\u00a0"]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(_HINT_PIECES), max_size=8).map("".join) | st.text(max_size=40))
def test_embedded_hint_passes_every_line_the_regex_did(line: str) -> None:
    assert quotes._embedded_hint(line) or not _HINT_REGEX.search(line)
