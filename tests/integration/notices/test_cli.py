"""`gateway login-link`, `gateway outbox list --failed` and `gateway worker` through the real entry point."""
from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import update

from gateway import links
from gateway.app import Gateway
from gateway.db.tables import OutboxRow
from tests.support.notice_world import login_token, make_world, post

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # each CLI call is a process: once is enough


@pytest.fixture
def world_gw(cli: Any, settings_factory: Any, canaries: dict[str, str]):  # type: ignore[no-untyped-def]
    gw = Gateway(settings_factory())  # the same data dir and database as the CLI's
    world = make_world(gw, canaries)
    yield gw, world
    gw.close()


def test_login_link_for_a_patient_and_a_practitioner(cli: Any, world_gw: Any) -> None:
    gw, world = world_gw
    out = cli.json("login-link", "--patient", world.patient_id, "--thread", world.thread_id)
    assert out["url"].startswith("http://127.0.0.1:8080/l/")
    doc = cli.json("login-link", "--practitioner", world.practitioner_slug)
    with gw.readers() as s:
        patient_token = links.peek(s, login_token(out["url"]), "login")
        doc_token = links.peek(s, login_token(doc["url"]), "login")
    assert patient_token is not None and links.usable(patient_token)
    assert (patient_token.patient_id, patient_token.thread_id) == (world.patient_id, world.thread_id)
    assert doc_token is not None and doc_token.practitioner_id == world.practitioner_id and doc_token.thread_id is None
    assert "unknown patient" in cli.fails("login-link", "--patient", "nope")


def test_outbox_list_failed_shows_ids_kinds_and_codes_only(cli: Any, world_gw: Any, canaries: dict[str, str]) -> None:
    gw, world = world_gw
    post(gw, world, "practitioner", canaries)
    post(gw, world, "patient", canaries)
    with gw.transaction() as s:
        s.execute(update(OutboxRow).where(OutboxRow.patient_id.is_not(None)).values(state="failed", error_code="smtp-550"))
    listed = cli.run("outbox", "list", "--failed").stdout
    for value in canaries.values():
        assert value not in listed
    (row,) = json.loads(listed)["outbox"]
    assert (row["kind"], row["state"], row["error_code"], row["patient_id"]) == ("new_message", "failed", "smtp-550", world.patient_id)
    assert set(row) <= {
        "id", "kind", "state", "channel", "attempts", "error_code", "patient_id", "practitioner_id", "thread_id",
        "message_id", "created_at", "next_attempt_at", "sent_at",
    }
    # The embedded broker lives inside `gateway run`: a separate worker would have nothing to consume.
    assert "GATEWAY_BROKER_URL" in cli.fails("worker")
