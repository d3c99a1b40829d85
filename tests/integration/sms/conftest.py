"""A gateway behind a real uvicorn on loopback, a Twilio stand-in for its REST API, and a practice with
patients, practitioners and threads to route SMS to. Webhooks are signed as Twilio signs them: against
the public URL (https://gw.example.test), not the loopback address they are actually posted to."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import func, select

from gateway.app import Gateway
from gateway.db.tables import ContactPoint, HeldSms, Message, OutboxRow, SmsInbound, Thread, new_id
from gateway.directory.patients import add_care, add_patient
from gateway.directory.practices import add_practice, add_practitioner
from gateway.threads.service import get_thread, open_thread, read_thread
from gateway.web.app import create_app
from tests.support.http_server import http_server  # noqa: F401 - fixture
from tests.support.twilio_standin import TwilioStandIn, new_sid, twilio_standin  # noqa: F401 - fixture

PUBLIC_URL = "https://gw.example.test"
PRACTICE_NUMBER = "+33700000001"
SMS_PATH = "/webhooks/twilio/sms"
STATUS_PATH = "/webhooks/twilio/status"


@dataclass
class World:
    gw: Gateway
    twilio: TwilioStandIn
    url: str  # where the server really listens
    canaries: dict[str, str]
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))

    # -- directory set-up, in process --

    def patient(self, phone: str | None = None, *, verified: bool = True, care: tuple[str, ...] = ("dr-a", "dr-b"),
                locale: str = "fr") -> str:
        with self.gw.transaction() as s:
            p = add_patient(s, self.gw.keys, practice_slug="cab", name=self.canaries["name"],
                            phone=phone or self.canaries["phone"], verified=verified, locale=locale)
            for slug in care:
                add_care(s, patient_id=p.id, practitioner_slug=slug)
            return p.id

    def thread(self, patient_id: str, practitioner: str = "dr-a", *, code: str | None = None) -> str:
        with self.gw.transaction() as s:
            t = open_thread(s, self.gw.keys, patient_id=patient_id, practitioner_slug=practitioner,
                            subject=self.canaries["subject"])
            if code:
                t.code = code
            return t.id

    def sms_notice(self, patient_id: str, thread_id: str, *, days_ago: float, state: str = "delivered") -> str:
        """An SMS notice the dispatcher sent about `thread_id` (what a reply within 7 days goes back to)."""
        with self.gw.transaction() as s:
            row = OutboxRow(id=new_id(), kind="new_message", patient_id=patient_id, thread_id=thread_id, channel="sms",
                            state=state, provider_id=new_sid("SM"),
                            sent_at=datetime.now(timezone.utc) - timedelta(days=days_ago))
            s.add(row)
            return row.provider_id or ""

    # -- Twilio's side --

    def sms_form(self, body: str, *, from_: str | None = None, to: str = PRACTICE_NUMBER, **kw: Any) -> dict[str, str]:
        return self.twilio.inbound_sms(to=to, from_=from_ or self.canaries["phone"], body=body, **kw)

    def post(self, form: dict[str, str], *, path: str = SMS_PATH, signature: str | None = None,
             signed_url: str | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
        sig = signature if signature is not None else self.twilio.sign(signed_url or PUBLIC_URL + path, form)
        return self.client.post(self.url + path, content=urlencode(form),
                                headers={"Content-Type": "application/x-www-form-urlencoded",
                                         "X-Twilio-Signature": sig, **(headers or {})})

    def post_json(self, document: dict[str, Any], *, path: str = SMS_PATH, with_hash: bool = True) -> httpx.Response:
        body = json.dumps(document)
        query = f"?bodySHA256={self.twilio_hash(body)}" if with_hash else ""
        sig = self.twilio.sign(PUBLIC_URL + path + query, body)
        return self.client.post(self.url + path + query, content=body,
                                headers={"Content-Type": "application/json", "X-Twilio-Signature": sig})

    @staticmethod
    def twilio_hash(body: str) -> str:
        from twilio.request_validator import RequestValidator

        return RequestValidator("unused").compute_hash(body)

    def sms(self, body: str, **kw: Any) -> httpx.Response:
        return self.post(self.sms_form(body, **kw))

    def status(self, sid: str, status: str, error_code: int | None = None) -> httpx.Response:
        return self.post(self.twilio.status_callback(sid, status, error_code=error_code), path=STATUS_PATH)

    # -- what the database holds --

    def messages(self, thread_id: str) -> list[dict[str, Any]]:
        with self.gw.transaction() as s:
            return read_thread(s, self.gw.keys, get_thread(s, thread_id), actor="test")["messages"]

    def count(self, table: Any, *where: Any) -> int:
        with self.gw.readers() as s:
            return int(s.scalar(select(func.count()).select_from(table).where(*where)) or 0)

    def nothing_posted(self) -> bool:
        return self.count(Message) == 0 and self.count(HeldSms) == 0

    def contact(self, patient_id: str) -> ContactPoint:
        with self.gw.readers() as s:
            return s.scalars(select(ContactPoint).where(ContactPoint.patient_id == patient_id,
                                                        ContactPoint.kind == "phone")).one()

    def notices(self, kind: str | None = None) -> list[OutboxRow]:
        with self.gw.readers() as s:
            stmt = select(OutboxRow).order_by(OutboxRow.created_at)
            if kind:
                stmt = stmt.where(OutboxRow.kind == kind)
            return list(s.scalars(stmt))

    def inbound(self, sid: str) -> str | None:
        with self.gw.readers() as s:
            row = s.get(SmsInbound, sid)
            return row.outcome if row else None

    def thread_code(self, thread_id: str) -> str:
        with self.gw.readers() as s:
            t = s.get(Thread, thread_id)
            assert t is not None
            return t.code


def make_world(settings_factory, twilio: TwilioStandIn, http_server, canaries, **overrides: Any) -> World:  # type: ignore[no-untyped-def]
    settings = settings_factory(
        public_url=PUBLIC_URL, twilio_account_sid=twilio.account_sid, twilio_auth_token=twilio.auth_token,
        twilio_api_base=twilio.base_url, **overrides,
    )
    gw = Gateway(settings)
    gw.init()
    with gw.transaction() as s:
        add_practice(s, slug="cab", name="Cabinet Test", sms_number=PRACTICE_NUMBER)
        add_practitioner(s, gw.keys, practice_slug="cab", slug="dr-a", name="Dr A", email="dr-a@cab.test")
        add_practitioner(s, gw.keys, practice_slug="cab", slug="dr-b", name="Dr B", email="dr-b@cab.test")
        add_practitioner(s, gw.keys, practice_slug="cab", slug="dr-off", name="Dr Off", email="dr-off@cab.test",
                         messaging=False)
    server = http_server(create_app(gw))
    return World(gw, twilio, server.url, canaries)


@pytest.fixture
def world(settings_factory, twilio_standin, http_server, canaries):  # type: ignore[no-untyped-def]
    w = make_world(settings_factory, twilio_standin, http_server, canaries)
    yield w
    w.client.close()
    w.gw.close()
