"""`parse`: our FR/EN fixtures (one expectation row each), the GitLab and talon corpora, edge cases."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from gateway.intake.attachments import screen
from gateway.intake.parse import Attachment, Bounce, ParsedEmail, Unparseable, parse
from tests.support.intake_corpus import corpus_file, corpus_names

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "emails"


@dataclass(frozen=True)
class Expect:
    body: str | None = None  # exact display body
    kind: str = "message"
    from_address: str | None = "<any>"
    subject: str | None = None
    full_contains: tuple[str, ...] = ()
    body_excludes: tuple[str, ...] = ()
    attachments: tuple[tuple[str, str, bool], ...] = ()  # (filename, content type, inline)
    accepted: tuple[str, ...] = ()
    refused: tuple[tuple[str, str], ...] = ()
    bounce: Bounce | None = None
    envelope_sender: str | None = None
    extra: dict[str, object] = field(default_factory=dict)  # other ParsedEmail fields, exact


ANY = "<any>"
CASES: dict[str, Expect] = {
    "gmail_reply_en.eml": Expect(body="Thank you, I will take the medication tonight.",
                                 from_address="anna.smith@gmail.com"),
    "gmail_reply_fr.eml": Expect(body="Bonjour docteur,\n\nLa douleur a diminué depuis hier. Merci beaucoup.\n\nMarie",
                                 full_contains=("Vous avez un nouveau message sécurisé.",)),
    "gmail_html_only_fr.eml": Expect(body="Bonjour,\n\nJe confirme le rendez-vous de jeudi.\n\nPaul",
                                     full_contains=("Vous avez un nouveau message.",)),
    "outlook_desktop_fr.eml": Expect(body="Bonjour,\n\nVoici mes questions sur les résultats.\n\nCordialement,\nJean",
                                     from_address="Jean.Dupont@exemple.fr", subject="RE: Résultats"),
    "outlook_desktop_en_html_only.eml": Expect(body="Hi Doctor,\n\nCan we move the appointment to Friday?\n\nTom",
                                               full_contains=("You have a new secure message.",)),
    "outlook_web_en.eml": Expect(body="The swelling is gone, thanks.",
                                 body_excludes=("Hidden history",), full_contains=("Hidden history",)),
    "outlook_ios_fr.eml": Expect(body="D'accord, je passerai à 15h."),
    "outlook_message_origine_fr.eml": Expect(body="Merci, j’ai bien reçu l’ordonnance."),
    "outlook_original_message_en.eml": Expect(body="Got it, thank you."),
    "outlook_mobile_signature_html.eml": Expect(body="Parfait, merci."),
    "apple_iphone_fr.eml": Expect(body="Oui je serai là demain matin."),
    "apple_mail_en.eml": Expect(body="I have attached nothing, just confirming Tuesday."),
    "thunderbird_fr_flowed.eml": Expect(
        body="Bonjour docteur, je voulais vous signaler que la fièvre est retombée hier soir après la deuxième prise.",
        full_contains=("> Vous avez un nouveau message sécurisé. Connectez-vous pour le lire.", "Jean Dupont")),
    "yahoo_fr_unquoted.eml": Expect(body="Merci pour votre réponse rapide."),
    "yahoo_en_unquoted_html.eml": Expect(body="Blood pressure this morning was 128/82."),
    "interleaved_en.eml": Expect(body="> Did the rash spread?\n\nNo, it stayed on the left arm.\n\n> Any fever?\n\n"
                                      "None since Saturday."),
    "interleaved_fr.eml": Expect(body="> Avez-vous encore de la fièvre ?\nNon, plus depuis samedi.\n"
                                      "> Prenez-vous le traitement ?\nOui, matin et soir."),
    "signature_dashes_fr.eml": Expect(body="Est-ce que je peux prendre du paracétamol avec ?",
                                      full_contains=("12 rue des Lilas",)),
    "sent_from_iphone_en.eml": Expect(body="See you on Thursday."),
    "html_script_style.eml": Expect(
        body="Bonjour,\n\nJ'ai une question & une remarque : voir le document <https://exemple.fr/doc>.\n\n"
             "- premier point\n- second point\n\nMerci\nPaul",
        body_excludes=("alert", "leak", "color", "nope", "comment", "Ignored title", "<p>")),
    "windows1252.eml": Expect(body="La consultation m’a coûté 25 € – c’est bien ça ?"),
    "latin1.eml": Expect(body="J'ai mal à la tête depuis l'été, ça empire."),
    "lying_charset.eml": Expect(body="La fièvre est à 38,5 °C ce matin."),
    "unknown_charset.eml": Expect(body="Très bien, merci."),
    "rfc2231_attachment.eml": Expect(
        body="Voici mes résultats d'analyse.",
        attachments=(("résultats d'analyse prélèvement.pdf", "application/pdf", False),),
        accepted=("résultats d'analyse prélèvement.pdf",)),
    "rfc2047_attachment.eml": Expect(
        body="Ci-joint l'ordonnance.", attachments=(("ordonnance médecin.pdf", "application/pdf", False),),
        accepted=("ordonnance médecin.pdf",)),
    "inline_cid_image.eml": Expect(body="Here is the rash:", attachments=(("attachment-1.png", "image/png", True),),
                                   accepted=("attachment-1.png",)),
    "heic_photo.eml": Expect(body="Voici la photo.", attachments=(("IMG_0042.HEIC", "image/heic", False),),
                             accepted=("IMG_0042.HEIC",)),
    "exe_attachment.eml": Expect(body="Please run this.",
                                 attachments=(("setup.exe", "application/x-msdownload", False),),
                                 refused=(("setup.exe", "type"),)),
    "fake_pdf.eml": Expect(body="Le scan.", attachments=(("scan.pdf", "application/pdf", False),),
                           refused=(("scan.pdf", "type"),)),
    "octet_stream_pdf.eml": Expect(body="Bilan sanguin ci-joint.",
                                   attachments=(("bilan.pdf", "application/octet-stream", False),),
                                   accepted=("bilan.pdf",)),
    "forward_as_attachment.eml": Expect(body="Voir le message du labo ci-joint.",
                                        attachments=(("attachment-1.eml", "message/rfc822", False),),
                                        refused=(("attachment-1.eml", "type"),)),
    "ooo_en.eml": Expect(kind="auto_reply"),
    "ooo_fr_reponse_automatique.eml": Expect(kind="auto_reply", subject="Réponse automatique\xa0: Nouveau message"),
    "ooo_fr_absent.eml": Expect(kind="auto_reply"),
    "auto_submitted.eml": Expect(kind="auto_reply", extra={"auto_submitted": "auto-replied"}),
    "precedence_bulk.eml": Expect(kind="auto_reply"),
    "read_receipt_mdn.eml": Expect(kind="auto_reply"),
    "x_auto_response_suppress_ordinary.eml": Expect(kind="message", body="Je confirme pour mardi."),
    "patient_subject_absent.eml": Expect(kind="message", body="Je ne pourrai pas venir demain, désolée."),
    "dsn_hard_bounce.eml": Expect(kind="bounce", bounce=Bounce(("Old.Address@exemple.fr",), True)),
    "dsn_soft_bounce.eml": Expect(kind="bounce", bounce=Bounce(("full.mailbox@contoso.com",), False)),
    "null_sender_dsn_mislabelled.eml": Expect(kind="bounce", bounce=Bounce(("gone@exemple.fr",), True),
                                              envelope_sender=""),
    "own_notice_returned.eml": Expect(kind="own_notice", extra={"auto_submitted": "auto-generated"}),
    "no_message_id.eml": Expect(body="Is the lab open on Saturday?", extra={"message_id": None}),
    "multiple_from.eml": Expect(from_address=None, extra={"from_domain": None}),
    "duplicate_from_header.eml": Expect(from_address=None, extra={"from_domain": None}),
    "no_from.eml": Expect(from_address=None, body="Nobody wrote this.", extra={"in_reply_to": (), "references": ()}),
    "empty_body.eml": Expect(body="", extra={"full_text": "", "attachments": ()}),
    "quote_only_fr.eml": Expect(body="Le lun. 3 mars 2025 à 10:00, Labo <labo@exemple.fr> a écrit :\n"
                                     "> Vos résultats sont disponibles.\n> Glycémie : 1,02 g/L"),
    "encoded_headers_fr.eml": Expect(subject="Résultats d'analyse – urgent", from_address="Helene.Faure@exemple.fr",
                                     extra={"from_domain": "exemple.fr"}),
    "raw_utf8_headers.eml": Expect(subject="Douleur à l'épaule", body="Ça tire quand je lève le bras."),
}


def test_at_least_forty_fixtures_each_with_an_expectation() -> None:
    on_disk = {p.name for p in FIXTURES.glob("*.eml")}
    assert len(on_disk) >= 40
    assert on_disk == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_fixture(name: str) -> None:
    expect = CASES[name]
    raw = (FIXTURES / name).read_bytes()
    parsed = parse(raw, envelope_sender=expect.envelope_sender)

    assert parsed.kind == expect.kind
    if expect.body is not None:
        assert parsed.body == expect.body
    if expect.from_address != ANY:
        assert parsed.from_address == expect.from_address
    if expect.subject is not None:
        assert parsed.subject == expect.subject
    for fragment in expect.full_contains:
        assert fragment in parsed.full_text
    for fragment in expect.body_excludes:
        assert fragment not in parsed.body
    assert tuple((a.filename, a.content_type, a.inline) for a in parsed.attachments) == expect.attachments
    accepted, refused = screen(parsed.attachments)
    assert tuple(a.filename for a in accepted) == expect.accepted
    assert tuple((r.filename, r.reason) for r in refused) == expect.refused
    assert parsed.bounce == expect.bounce
    for attribute, value in expect.extra.items():
        assert getattr(parsed, attribute) == value, attribute


@pytest.mark.parametrize("name", sorted(CASES))
def test_fixture_common_properties(name: str) -> None:
    raw = (FIXTURES / name).read_bytes()
    parsed = parse(raw, envelope_sender=CASES[name].envelope_sender)
    assert parsed.body.strip() or not parsed.full_text.strip()  # trimming never empties a message
    assert parsed.dedupe_id == (parsed.message_id or "sha256:" + hashlib.sha256(raw).hexdigest())
    if parsed.message_id:
        assert not parsed.message_id.startswith("<") and not parsed.message_id.endswith(">")
    if parsed.from_address:
        assert parsed.from_domain == parsed.from_address.rsplit("@", 1)[1]
        assert parsed.from_domain == parsed.from_domain.lower()
    assert (parsed.kind == "bounce") == (parsed.bounce is not None)
    for attachment in parsed.attachments:
        assert attachment.content_type == attachment.content_type.lower()
        assert attachment.filename and "/" not in attachment.filename


def test_common_headers_of_a_reply() -> None:
    parsed = parse((FIXTURES / "gmail_reply_en.eml").read_bytes())
    assert parsed.message_id == "gmail-reply-en.fixture@exemple.fr"
    assert parsed.dedupe_id == parsed.message_id
    assert parsed.in_reply_to == ("notice-1@gateway.test",)
    assert parsed.references == ("thread-1@gateway.test", "notice-1@gateway.test")
    assert parsed.date == datetime(2025, 3, 3, 10, 30, tzinfo=timezone(timedelta(hours=1)))
    assert parsed.auto_submitted is None
    assert parsed.subject == "Re: Your new secure message"


def test_no_message_id_dedupes_on_the_raw_bytes() -> None:
    raw = (FIXTURES / "no_message_id.eml").read_bytes()
    assert parse(raw).dedupe_id == "sha256:" + hashlib.sha256(raw).hexdigest()


def test_null_envelope_sender_makes_a_dsn_body_a_bounce_and_anything_else_automated() -> None:
    raw = (FIXTURES / "null_sender_dsn_mislabelled.eml").read_bytes()
    assert parse(raw).kind == "message"  # without the hint, a mislabelled report is just mail
    assert parse(raw, envelope_sender="<>").kind == "bounce"
    assert parse(raw, envelope_sender="MAILER-DAEMON@mx.exemple.fr").kind == "bounce"
    ordinary = (FIXTURES / "gmail_reply_en.eml").read_bytes()
    assert parse(ordinary, envelope_sender="").kind == "auto_reply"
    assert parse(ordinary, envelope_sender="anna.smith@gmail.com").kind == "message"


def test_own_notice_wins_over_auto_submitted() -> None:
    parsed = parse((FIXTURES / "own_notice_returned.eml").read_bytes())
    assert parsed.auto_submitted == "auto-generated" and parsed.kind == "own_notice"


@pytest.mark.parametrize("raw", [b"", b"   \r\n\t \n", b"\n\n\n"])
def test_empty_input_is_unparseable(raw: bytes) -> None:
    with pytest.raises(Unparseable) as caught:
        parse(raw)
    assert isinstance(caught.value, ValueError)
    assert str(caught.value) == "empty"


def test_text_without_any_header_is_unparseable() -> None:
    with pytest.raises(Unparseable, match="^no_headers$"):
        parse(b"just some words, no header at all\nand a second line\n")


def test_deep_mime_nesting_is_decided() -> None:
    depth = 1200  # beyond the interpreter recursion limit that `email` runs into
    raw = b"From: a@b.fr\nContent-Type: multipart/mixed; boundary=b0\n\n"
    for i in range(1, depth):
        raw += b"--b%d\nContent-Type: multipart/mixed; boundary=b%d\n\n" % (i - 1, i)
    raw += b"--b%d\nContent-Type: text/plain\n\ndeep\n" % (depth - 1)
    try:
        parsed = parse(raw)
    except Unparseable as error:
        assert error.code == "too_deep"
    else:
        assert isinstance(parsed, ParsedEmail)


def test_generated_names_and_sanitised_names() -> None:
    raw = (b"From: a@b.fr\nContent-Type: multipart/mixed; boundary=x\n\n--x\nContent-Type: text/plain\n\nhi\n"
           b"--x\nContent-Type: image/jpeg\nContent-Transfer-Encoding: base64\n\n/9j/4AAQ\n"
           b"--x\nContent-Type: application/pdf\nContent-Disposition: attachment; filename=\"../../etc/passwd.pdf\"\n"
           b"\n%PDF-1.4\n"
           b"--x\nContent-Type: application/octet-stream\nContent-Disposition: attachment\n\n\x00\x01\n--x--\n")
    names = [a.filename for a in parse(raw).attachments]
    assert names == ["attachment-1.jpg", "passwd.pdf", "attachment-3.bin"]


def test_repr_carries_no_content() -> None:
    canary = "CANARY-7f3a"
    raw = (f"From: {canary} <{canary.lower()}@exemple.fr>\nSubject: {canary}\nMessage-ID: <{canary}@x>\n"
           f"Content-Type: multipart/mixed; boundary=z\n\n--z\nContent-Type: text/plain\n\n{canary} body\n"
           f"--z\nContent-Type: application/pdf\nContent-Disposition: attachment; filename={canary}.pdf\n\n"
           f"%PDF-1.4 {canary}\n--z--\n").encode()
    parsed = parse(raw)
    assert canary in parsed.body and parsed.attachments[0].filename == f"{canary}.pdf"
    assert canary not in repr(parsed) and canary not in str(parsed)
    assert canary not in repr(parsed.attachments[0])
    assert canary.lower() not in repr(Bounce((f"{canary.lower()}@exemple.fr",), True))


# --- the shared corpus ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", corpus_names("gitlab", "*.eml"))
def test_gitlab_corpus_parses(name: str) -> None:
    parsed = parse(corpus_file("gitlab", name).read_bytes())
    assert isinstance(parsed, ParsedEmail)
    assert "\ufffd" not in parsed.subject
    assert all(isinstance(a, Attachment) and a.data for a in parsed.attachments)


GITLAB_BODIES = {
    "html_only.eml": "### This is a reply from standard GMail in Google Chrome.",
    "ios_default.eml": "### this is a reply from iOS default mail",
    "outlook_html.eml": "Microsoft Outlook 2010",
    "on_wrote.eml": "Sure, all you need to do is frobnicate the foobar and you'll be all set!",
    "dutch.eml": "Dit is een antwoord in het Nederlands.",
    "valid_reply_signed_smime.eml": "Me too, with an attachment",
    "valid_reply_signed_smime_mixed_protocol_prefix.eml": "Me too, with an attachment",
    "signature_delimiter_reply.eml": "This is the actual reply body.",
    "service_desk_encoding.eml": "Body of encoding iso-8859-2 test: ťžščľžťťč",
    "no_content_type.eml": "Test.",
    "commands_only_reply.eml": "/close\n/unsubscribe",
}


@pytest.mark.parametrize("name", sorted(GITLAB_BODIES))
def test_gitlab_corpus_display_bodies(name: str) -> None:
    parsed = parse(corpus_file("gitlab", name).read_bytes())
    assert parsed.body.startswith(GITLAB_BODIES[name])


def test_gitlab_corpus_specifics() -> None:
    def load(name: str) -> ParsedEmail:
        return parse(corpus_file("gitlab", name).read_bytes())

    attachment = load("attachment.eml")
    assert [(a.filename, a.content_type) for a in attachment.attachments] == [("bricks.png", "image/png")]
    assert attachment.attachments[0].data.startswith(b"\x89PNG\r\n\x1a\n")
    assert attachment.from_address is None  # its From is "Anakin Skywalker <FROM>"

    html_only = load("html_only.eml")
    assert "<" not in html_only.full_text.replace("<http", "") and "Second paragraph." in html_only.full_text

    assert load("auto_reply.eml").kind == "auto_reply"
    assert load("valid_reply.eml").kind == "message"

    illegal = load("service_desk_reply_illegal_utf8.eml")
    assert illegal.body.startswith("Service desk reply!") and "/label ~label2" in illegal.body
    assert not any("\x80" <= c <= "\x9f" for c in illegal.full_text)

    smime = load("valid_reply_signed_smime.eml")
    assert [a.filename for a in smime.attachments] == ["gitlab_logo.png"]  # the signature is not a file

    patches = load("merge_request_multiple_patches.eml")
    assert [a.filename for a in patches.attachments] == [
        "0002-This-does-not-apply-to-the-feature-branch.patch", "0001-A-commit-from-a-patch.patch",
        "really-not-a-patch.png"]

    quoted = load("no_content_with_quote.eml")
    assert "quote line 1" in quoted.body  # all quote: the full text is shown rather than nothing

    table = load("html_table_and_blockquote.eml")
    assert "Alfreds Futterkiste" in table.body and "Words can be like X-rays" not in table.body
    assert "Words can be like X-rays" in table.full_text

    assert load("valid_new_merge_request_no_subject.eml").subject == ""
    assert load("valid_reply_with_references_in_comma.eml").references


@pytest.mark.parametrize("name", corpus_names("talon/standard_replies", "*.eml"))
def test_talon_standard_replies_display_body(name: str) -> None:
    # The display body also drops signatures, so every talon reply is just "Hello".
    assert parse(corpus_file("talon/standard_replies", name).read_bytes()).body == "Hello"


def _mail(subject: str, extra_headers: str = "", body: str = "Bonjour") -> bytes:
    return (f"From: Jean Dupont <jean@exemple.fr>\nSubject: {subject}\nMessage-ID: <s@exemple.fr>\n"
            f"{extra_headers}Content-Type: text/plain; charset=utf-8\n\n{body}\n").encode()


@pytest.mark.parametrize(("subject", "kind"), [
    ("Out of Office: Re: Votre message", "auto_reply"),
    ("Out of office", "auto_reply"),
    ("Automatic reply: New secure message", "auto_reply"),
    ("Auto: Jean Dupont is out of the office", "auto_reply"),
    ("AutoReply: vacances", "auto_reply"),
    ("Réponse automatique : Nouveau message", "auto_reply"),
    ("Absence du bureau", "auto_reply"),
    ("Absent : retour le 10 mars", "auto_reply"),
    ("Absence : congés", "auto_reply"),
    ("Absent", "auto_reply"),
    ("Absent au rendez-vous de demain", "message"),
    # A patient's own subjects: a discarded message would be lost behind a 250.
    ("Absence : justificatif pour mon employeur", "message"),
    ("Je suis absent au rendez-vous de demain", "message"),
    ("Absente jusqu'au 12, peut-on décaler ?", "message"),
    ("Répondeur ne marche pas", "message"),
    ("Out of office until Monday, is my prescription ready?", "message"),
    ("Absence de règles depuis deux mois", "message"),
    ("Out of office hours: is it urgent?", "message"),
    ("Re: Automatic question", "message"),
    ("Question sur la réponse automatique du labo", "message"),
])
def test_out_of_office_subjects(subject: str, kind: str) -> None:
    assert parse(_mail(subject)).kind == kind


@pytest.mark.parametrize(("headers", "kind"), [
    ("Auto-Submitted: auto-generated\n", "auto_reply"),
    ("Auto-Submitted: auto-replied; owner-email=\"x@y.fr\"\n", "auto_reply"),
    ("Auto-Submitted: no\n", "message"),
    ("X-Autoreply: yes\n", "auto_reply"),
    ("X-Autorespond: Vacation\n", "auto_reply"),
    ("Precedence: junk\n", "auto_reply"),
    ("Precedence: list\n", "auto_reply"),
    ("Precedence: auto_reply\n", "auto_reply"),
    ("Precedence: first-class\n", "message"),
    ("X-Auto-Response-Suppress: DR, RN, NRN, OOF, AutoReply\n", "message"),
    ("X-Gateway-Notice: 1\nAuto-Submitted: auto-generated\n", "own_notice"),
    ("X-Gateway-Notice: 0\n", "message"),
])
def test_automation_headers(headers: str, kind: str) -> None:
    assert parse(_mail("Re: Rendez-vous", headers)).kind == kind


def test_byte_order_mark_and_leading_blank_lines_are_tolerated() -> None:
    parsed = parse(b"\r\n\r\n\xef\xbb\xbf" + _mail("Re: Rendez-vous"))
    assert parsed.from_address == "jean@exemple.fr" and parsed.body == "Bonjour"
