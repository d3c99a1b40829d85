"""The portal's and API's commands through the real `gateway` entry point: API keys, invitations, verifications."""
from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import select

from gateway.app import Gateway
from gateway.db.tables import OutboxRow
from gateway.directory.patients import add_patient
from gateway.directory.practices import add_practice, add_practitioner


# Each command costs a process start; one database backend is enough for what these add to the API tests.
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_apikey_invite_and_verify_commands(cli: Any, settings_factory: Any, db_url: str) -> None:
    gw = Gateway(settings_factory())
    keys = gw.keys
    with gw.transaction() as s:
        add_practice(s, slug="cab", name="Cabinet")
        add_practitioner(s, keys, practice_slug="cab", slug="dr-a", name="Dr A", email="a@example.org")
        patient_id = add_patient(s, keys, practice_slug="cab", name="P", email="p@example.org").id

    created = cli.json("apikey", "create", "--practice", "cab")
    assert created["key"].startswith(f"gwk_{created['id']}_")
    listed = cli.run("apikey", "list", "--practice", "cab").stdout
    assert created["id"] in listed and created["key"] not in listed
    assert cli.json("apikey", "revoke", created["id"])["revoked"] is True
    assert "unknown API key" in cli.fails("apikey", "revoke", "0" * 32)

    invite = cli.json("practitioner", "invite", "dr-a")
    assert invite["url"].startswith("http://127.0.0.1:8080/l/")
    assert httpx.URL(invite["url"]).path.count("/") == 2  # nothing but the token in the link

    sent = cli.json("patient", "verify", "--patient", patient_id, "--email")
    assert sent["sent"] is True and sent["kind"] == "email"
    with gw.readers() as s:
        row = s.scalar(select(OutboxRow).where(OutboxRow.kind == "verify_email"))
        assert row is not None and row.contact_id == sent["contact_id"] and row.patient_id == patient_id
    gw.close()
