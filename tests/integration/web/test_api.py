"""The JSON API: practice keys (hashed, revocable, scoped to their practice), patients, care, threads, messages
with attachments, polling with `since`, audited reads, and errors as {"code", "message"} with the right status."""
from __future__ import annotations

import base64
import hashlib
import json
import socket
from datetime import datetime, timezone

import httpx
from sqlalchemy import select, update

from gateway.db.tables import ApiKey, AuditEvent, Message
from gateway.web.api import create_key, revoke_key
from tests.integration.web.conftest import PDF, Site


def _key(site: Site, practice: str = "cab") -> str:
    with site.gw.transaction() as s:
        return create_key(s, practice)[1]


def _api(site: Site, key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return site.client(headers=headers)


def _error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert body["code"] == code and isinstance(body["message"], str) and body["message"]


def test_keys_are_required_hashed_and_revocable(site: Site) -> None:
    key = _key(site)
    _error(_api(site, None).get("/api/v1/patients"), 401, "unauthorized")
    _error(_api(site, "gwk_" + "0" * 32 + "_nope").get("/api/v1/patients"), 401, "unauthorized")
    _error(_api(site, key[:-1] + ("A" if key[-1] != "A" else "B")).get("/api/v1/patients"), 401, "unauthorized")
    assert _api(site, key).get("/api/v1/patients").status_code == 200
    key_id = key.split("_")[1]
    with site.gw.readers() as s:
        row = s.get(ApiKey, key_id)
        assert row is not None and row.secret_hash == hashlib.sha256(key.split("_", 2)[2].encode()).hexdigest()
        assert row.last_used_at is not None
    with site.gw.transaction() as s:
        revoke_key(s, key_id)
    _error(_api(site, key).get("/api/v1/patients"), 401, "unauthorized")


def test_a_key_sees_only_its_practice(site: Site) -> None:
    far = _api(site, _key(site, "far"))
    patients = far.get("/api/v1/patients").json()["patients"]
    assert [p["id"] for p in patients] == [site.world.other_practice_patient]
    threads = far.get("/api/v1/threads").json()["threads"]
    assert [t["id"] for t in threads] == [site.world.other_practice_thread]
    w = site.world
    _error(far.get(f"/api/v1/patients/{w.patient_a}"), 404, "not_found")
    _error(far.get(f"/api/v1/threads/{w.thread_a}"), 404, "not_found")
    _error(far.get(f"/api/v1/attachments/{w.attachment_a}"), 404, "not_found")
    _error(far.post(f"/api/v1/threads/{w.thread_a}/messages", json={"body": "x"}), 404, "not_found")
    _error(far.post(f"/api/v1/threads/{w.thread_a}/close"), 404, "not_found")
    _error(far.post("/api/v1/care", json={"patient_id": w.patient_a, "practitioner": "dr-z"}), 404, "not_found")
    _error(
        far.post("/api/v1/care", json={"patient_id": w.other_practice_patient, "practitioner": "dr-a"}),
        404,
        "not_found",
    )
    _error(
        far.post("/api/v1/threads", json={"patient_id": w.patient_a, "practitioner": "dr-z", "subject": "x"}),
        404,
        "not_found",
    )
    _error(far.get("/api/v1/care", params={"patient_id": w.patient_a}), 404, "not_found")
    since = datetime(2000, 1, 1, tzinfo=timezone.utc).isoformat()
    polled = far.get("/api/v1/messages", params={"since": since}).json()["messages"]
    assert {m["thread_id"] for m in polled} == {w.other_practice_thread}
    assert [p["slug"] for p in far.get("/api/v1/practitioners").json()["practitioners"]] == ["dr-z"]


def test_patients_care_threads_and_messages(site: Site, canaries: dict[str, str]) -> None:
    api = _api(site, _key(site))
    created = api.post(
        "/api/v1/patients",
        json={"name": "Api Patient", "email": "api.patient@example.org", "phone": "06 12 12 12 12", "locale": "en"},
    )
    assert created.status_code == 201, created.text
    patient = created.json()
    assert patient["name"] == "Api Patient" and patient["locale"] == "en"
    assert sorted((c["kind"], c["value"], c["verified"]) for c in patient["contacts"]) == [
        ("email", "api.patient@example.org", False),
        ("phone", "+33612121212", False),
    ]
    assert api.get(f"/api/v1/patients/{patient['id']}").json()["id"] == patient["id"]

    verification = api.post(f"/api/v1/patients/{patient['id']}/verifications", json={"kind": "email"})
    assert verification.status_code == 202 and verification.json()["sent"] is True
    assert any(r.kind == "verify_email" and r.patient_id == patient["id"] for r in site.outbox())

    _error(
        api.post("/api/v1/threads", json={"patient_id": patient["id"], "practitioner": "dr-a", "subject": "Hi"}),
        409,
        "conflict",
    )
    care = api.post("/api/v1/care", json={"patient_id": patient["id"], "practitioner": "dr-a"})
    assert care.status_code == 201 and care.json()["created"] is True
    again = api.post("/api/v1/care", json={"patient_id": patient["id"], "practitioner": "dr-a"})
    assert again.status_code == 200 and again.json()["created"] is False
    assert [
        c["practitioner"] for c in api.get("/api/v1/care", params={"patient_id": patient["id"]}).json()["care"]
    ] == ["dr-a"]

    thread = api.post(
        "/api/v1/threads",
        json={
            "patient_id": patient["id"],
            "practitioner": "dr-a",
            "subject": "Your results",
            "message": {
                "body": "See attached",
                "attachments": [
                    {
                        "filename": "results.pdf",
                        "content_type": "application/pdf",
                        "content_base64": base64.b64encode(PDF).decode(),
                    }
                ],
            },
        },
    )
    assert thread.status_code == 201, thread.text
    opened = thread.json()
    assert opened["subject"] == "Your results" and opened["reply_address"].endswith("@msg.example.test")
    shown = api.get(f"/api/v1/threads/{opened['id']}").json()
    assert [(m["author"], m["channel"], m["body"]) for m in shown["messages"]] == [
        ("practitioner", "api", "See attached")
    ]
    attachment = shown["messages"][0]["attachments"][0]
    assert (attachment["filename"], attachment["content_type"], attachment["size"]) == (
        "results.pdf",
        "application/pdf",
        len(PDF),
    )
    download = api.get(f"/api/v1/attachments/{attachment['id']}")
    assert download.content == PDF and download.headers["content-disposition"].startswith("attachment;")
    assert download.headers["content-type"] == "application/pdf"
    notice = [r for r in site.outbox("new_message") if r.thread_id == opened["id"]]
    assert [r.patient_id for r in notice] == [patient["id"]]

    reply = api.post(f"/api/v1/threads/{opened['id']}/messages", json={"body": "One more thing"})
    assert reply.status_code == 201 and reply.json()["body"] == "One more thing"
    closed = api.post(f"/api/v1/threads/{opened['id']}/close")
    assert closed.status_code == 200 and closed.json()["status"] == "closed"
    _error(api.post(f"/api/v1/threads/{opened['id']}/messages", json={"body": "late"}), 409, "conflict")
    listed = api.get("/api/v1/threads", params={"patient_id": patient["id"], "status": "closed"}).json()["threads"]
    assert [t["id"] for t in listed] == [opened["id"]]

    with site.gw.readers() as s:
        reads = s.scalars(
            select(AuditEvent.actor).where(AuditEvent.action == "thread.read", AuditEvent.object_id == opened["id"])
        ).all()
    assert reads and all(actor.startswith("api:") for actor in reads)


def test_polling_with_since(site: Site) -> None:
    api = _api(site, _key(site))
    first = api.get("/api/v1/messages", params={"since": "2000-01-01T00:00:00Z"}).json()
    assert {m["thread_id"] for m in first["messages"]} == {site.world.thread_a, site.world.thread_b}
    assert first["next_since"] is not None
    assert api.get("/api/v1/messages", params={"since": first["next_since"]}).json() == {
        "messages": [],
        "next_since": None,
    }
    posted = api.post(f"/api/v1/threads/{site.world.thread_b}/messages", json={"body": "Polled"}).json()
    later = api.get("/api/v1/messages", params={"since": first["next_since"]}).json()
    assert [(m["id"], m["body"]) for m in later["messages"]] == [(posted["id"], "Polled")]
    with site.gw.readers() as s:
        polls = s.scalars(select(AuditEvent.detail).where(AuditEvent.action == "thread.read")).all()
    assert polls and all('"via": "poll"' in (d or "") for d in polls)


def test_polling_pages_never_skip_messages_sharing_an_instant(site: Site) -> None:
    api = _api(site, _key(site))
    start = api.get("/api/v1/messages", params={"since": "2000-01-01T00:00:00Z", "limit": 500}).json()["next_since"]
    posted = [api.post(f"/api/v1/threads/{site.world.thread_b}/messages", json={"body": f"Same instant {i}"}).json()["id"]
              for i in range(3)]
    with site.gw.transaction() as s:  # as if three writers had read the clock at once
        s.execute(update(Message).where(Message.id.in_(posted)).values(created_at=datetime.now(timezone.utc)))
    seen: list[str] = []
    since = start
    for _ in range(5):  # limit 1: the page must still take every message of its instant
        page = api.get("/api/v1/messages", params={"since": since, "limit": 1}).json()
        if not page["messages"]:
            break
        seen += [m["id"] for m in page["messages"]]
        since = page["next_since"]
    assert sorted(seen) == sorted(posted)


def test_attachment_rules_and_sizes(site: Site) -> None:
    api = _api(site, _key(site))
    path = f"/api/v1/threads/{site.world.thread_a}/messages"
    notices_before = len(site.outbox("new_message"))
    exe = base64.b64encode(b"MZ\x90\x00" + b"\x00" * 100).decode()
    _error(
        api.post(
            path,
            json={
                "body": "x",
                "attachments": [
                    {"filename": "tool.exe", "content_type": "application/octet-stream", "content_base64": exe}
                ],
            },
        ),
        422,
        "attachment_refused",
    )
    _error(
        api.post(
            path,
            json={
                "body": "x",
                "attachments": [
                    {"filename": "a.pdf", "content_type": "application/pdf", "content_base64": "***not base64***"}
                ],
            },
        ),
        422,
        "invalid_input",
    )
    big = base64.b64encode(b"%PDF-1.4\n" + b"0" * (10 * 1024 * 1024)).decode()
    _error(
        api.post(
            path,
            json={
                "body": "x",
                "attachments": [{"filename": "big.pdf", "content_type": "application/pdf", "content_base64": big}],
            },
        ),
        413,
        "too_large",
    )
    # Over the request limit: refused from the headers alone, before any of the body is sent.
    host, port = site.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {api.headers['Authorization']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {40 * 1024 * 1024}\r\n\r\n".encode()
        )
        received = b""
        while chunk := conn.recv(65536):  # the server closes the connection after its answer
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ")
    assert json.loads(body)["code"] == "too_large"
    assert len(site.outbox("new_message")) == notices_before  # nothing was posted


def test_validation_errors_never_echo_the_input(site: Site, canaries: dict[str, str]) -> None:
    api = _api(site, _key(site))
    answer = api.post("/api/v1/patients", json={"name": canaries["name"], "email": canaries["email"] + " not valid"})
    _error(answer, 422, "invalid_input")
    assert canaries["email"] not in answer.text and canaries["name"] not in answer.text
    answer = api.post("/api/v1/patients", json={"name": 12345678, "email": {"nested": canaries["email"]}})
    _error(answer, 422, "invalid_input")
    assert canaries["email"] not in answer.text
    _error(api.get("/api/v1/messages"), 422, "invalid_input")
    _error(api.get("/api/v1/nothing-here"), 404, "not_found")
    _error(api.delete("/api/v1/patients"), 405, "method_not_allowed")


def test_openapi_documents_the_api_and_not_the_portal(site: Site) -> None:
    schema = site.client().get("/openapi.json").json()
    paths = set(schema["paths"])
    assert "/api/v1/threads/{thread_id}/messages" in paths and "/api/v1/messages" in paths
    assert not any(p.startswith(("/portal", "/l/")) for p in paths)
    assert "HTTPBearer" in schema["components"]["securitySchemes"]


def test_chunked_body_over_the_limit_is_refused(site: Site) -> None:
    # A chunked request has no Content-Length to refuse it by: the limit must still hold.
    import httpx

    from gateway.web.login import MAX_BODY_BYTES

    api = _api(site, _key(site))

    def chunks():  # type: ignore[no-untyped-def]
        piece = b" " * (1024 * 1024)
        for _ in range(MAX_BODY_BYTES // len(piece) + 2):
            yield piece

    answer = httpx.post(
        site.url + "/api/v1/patients", content=chunks(), timeout=60,
        headers={"Authorization": api.headers["Authorization"], "Content-Type": "application/json"},
    )
    assert answer.status_code == 413 and answer.json()["code"] == "too_large"
    small = httpx.post(
        site.url + "/api/v1/patients", content=iter([b'{"name": ', b'""}']), timeout=30,
        headers={"Authorization": api.headers["Authorization"], "Content-Type": "application/json"},
    )
    assert small.status_code == 422  # a small chunked body still reaches the API


def test_uploads_are_never_spooled_to_disk_in_the_clear(site: Site) -> None:
    from starlette.formparsers import MultiPartParser

    from gateway.web.login import MAX_BODY_BYTES

    assert MultiPartParser.spool_max_size >= MAX_BODY_BYTES
