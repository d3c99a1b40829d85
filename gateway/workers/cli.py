"""Commands of the outbound side: `gateway worker`, `gateway login-link`, `gateway outbox list`."""
from __future__ import annotations

import argparse
import gc
from datetime import timedelta
from typing import Any

from gateway.errors import InvalidInput


def _gateway():  # type: ignore[no-untyped-def]
    from gateway.app import Gateway
    from gateway.config import load_settings

    return Gateway(load_settings())


def cmd_worker(args: argparse.Namespace) -> None:
    from gateway.logs import configure, get_logger
    from gateway.workers.broker import EMBEDDED, broker_kind
    from gateway.workers.service import NoticeService, stop_signal

    gw = _gateway()
    configure(gw.settings.log_level)
    if broker_kind(gw.settings) == EMBEDDED:
        raise InvalidInput("gateway worker needs GATEWAY_BROKER_URL (redis:// or amqp://); the embedded broker runs inside `gateway run`")
    stopping = stop_signal()
    gw.start_checkpoints()
    service = NoticeService(gw, worker=True, threads=args.threads).start()
    # As `gateway run` does for its web app: the start-up heap (SQLAlchemy, jinja2, dramatiq) is left out
    # of the collector's full passes, each of which stopped every actor thread for tens of milliseconds.
    gc.freeze()
    stopping.wait()
    get_logger("gateway.workers").info("workers.stopping")
    service.stop()
    gw.close()


def cmd_login_link(args: argparse.Namespace) -> dict[str, Any]:
    from gateway import links
    from gateway.audit import record
    from gateway.directory.patients import get_patient
    from gateway.directory.practices import get_practitioner
    from gateway.errors import Conflict
    from gateway.threads.service import get_thread

    gw = _gateway()
    settings = gw.settings
    with gw.transaction() as s:
        if args.patient:
            patient = get_patient(s, args.patient)
            if patient.erased_at is not None:
                raise Conflict("patient was erased")
            owner: dict[str, Any] = {"patient_id": patient.id}
        else:
            owner = {"practitioner_id": get_practitioner(s, args.practitioner).id}
        thread_id = None
        if args.thread:
            thread = get_thread(s, args.thread)
            if thread.patient_id != owner.get("patient_id") and thread.practitioner_id != owner.get("practitioner_id"):
                raise Conflict("this thread is not theirs")
            thread_id = thread.id
        issued = links.issue(
            s, "login", ttl=timedelta(hours=settings.login_link_ttl_hours), thread_id=thread_id, **owner
        )
        kind, person = ("patient", owner["patient_id"]) if "patient_id" in owner else ("practitioner", owner["practitioner_id"])
        record(s, "cli", "login_link.issue", kind, person, token=issued.id)
        return {
            "url": f"{settings.resolved_public_url}/l/{issued.token}",
            "expires_at": issued.expires_at.isoformat(),
            "thread_id": thread_id,
        }


def cmd_outbox_list(args: argparse.Namespace) -> dict[str, Any]:
    from sqlalchemy import select

    from gateway.db.tables import OutboxRow

    gw = _gateway()
    stmt = select(OutboxRow).order_by(OutboxRow.created_at.desc()).limit(args.limit)
    if args.failed:
        stmt = stmt.where(OutboxRow.state.in_(("failed", "undelivered")))
    elif args.state:
        stmt = stmt.where(OutboxRow.state == args.state)
    with gw.readers() as s:
        rows = list(s.scalars(stmt))
    # Ids, kinds, states and codes only: what a practice needs to follow up, nothing about the content.
    return {
        "outbox": [
            {
                "id": r.id,
                "kind": r.kind,
                "state": r.state,
                "channel": r.channel,
                "attempts": r.attempts,
                "error_code": r.error_code,
                "patient_id": r.patient_id,
                "practitioner_id": r.practitioner_id,
                "thread_id": r.thread_id,
                "message_id": r.message_id,
                "created_at": r.created_at.isoformat(),
                "next_attempt_at": r.next_attempt_at.isoformat() if r.next_attempt_at else None,
                "sent_at": r.sent_at.isoformat() if r.sent_at else None,
            }
            for r in rows
        ]
    }


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def register_cli(sub: Any, leaf: Any, group: Any) -> None:
    p = leaf(sub, "worker", cmd_worker, "run a dramatiq worker (and the outbox dispatcher) for GATEWAY_BROKER_URL")
    p.add_argument("--threads", type=_positive, help="worker threads (default GATEWAY_WORKER_THREADS)")

    p = leaf(sub, "login-link", cmd_login_link, "issue a fresh single-use login link; prints {\"url\"}")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--patient", metavar="ID")
    who.add_argument("--practitioner", metavar="SLUG")
    p.add_argument("--thread", metavar="ID")

    outbox = group("outbox", "the notice outbox")
    p = leaf(outbox, "list", cmd_outbox_list, "list notices (newest first): ids, kinds, states and error codes")
    p.add_argument("--failed", action="store_true", help="only notices that could not be delivered")
    p.add_argument("--state", choices=("pending", "queued", "sending", "sent", "delivered", "undelivered", "failed", "coalesced"))
    p.add_argument("--limit", type=_positive, default=100)
