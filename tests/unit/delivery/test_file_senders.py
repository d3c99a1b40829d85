"""The development senders: .eml files for email, body-only JSON files for SMS, written atomically."""
from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

from gateway.delivery import FileEmailSender, FileSmsSender, build_notice_email
from gateway.notices import NoticeContext, render

PUBLIC_URL = "https://portail.exemple.fr"
PATIENT_NUMBER = "+33612345678"


def test_email_is_written_as_an_eml_named_by_message_id(tmp_path: Path) -> None:
    ctx = NoticeContext(practice_name="Cabinet Dupré", locale="fr", login_url=PUBLIC_URL + "/l/" + "k" * 43)
    message = build_notice_email(
        render("login_link", ctx, public_url=PUBLIC_URL),
        to="patient@example.org",
        sender="notifications@gw.exemple.fr",
        reply_to=None,
        message_id_domain="gw.exemple.fr",
        auto_submitted="auto-generated",
    )
    outbox = tmp_path / "outbox" / "email"
    provider_id = asyncio.run(FileEmailSender(outbox).send(message, mail_from="b@gw.exemple.fr", to="patient@example.org"))
    files = list(outbox.iterdir())
    assert [f.name for f in files] == [provider_id.strip("<>") + ".eml"]
    assert files[0].read_bytes() == message
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(outbox.stat().st_mode) == 0o700


def test_sms_file_holds_the_body_and_the_contact_reference_only(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox" / "sms"
    sender = FileSmsSender(outbox)
    body = "Cabinet Dupré: votre code de connexion est 123456. Ne le communiquez à personne."
    first = sender.send(body, to=PATIENT_NUMBER, from_="+33700000001", status_callback=None, recipient_ref="contact-42")
    second = sender.send(body, to=PATIENT_NUMBER, from_="+33700000001", status_callback=None, recipient_ref="contact-42")
    assert first != second
    files = sorted(outbox.iterdir())
    assert sorted(f.name for f in files) == sorted([f"{first}.json", f"{second}.json"])
    for path in files:
        assert json.loads(path.read_text(encoding="utf-8")) == {"recipient_ref": "contact-42", "body": body}
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # No number in the clear anywhere in the data dir, in any spelling.
    everything = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert b"612345678" not in everything and b"700000001" not in everything
