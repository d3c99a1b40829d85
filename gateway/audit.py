"""The audit log: who did what to which object and when; ids and states only, never content."""
from __future__ import annotations

import json

from sqlalchemy import insert
from sqlalchemy.orm import Session

from gateway.db.tables import AuditEvent

_INSERT = insert(AuditEvent.__table__)


def record(session: Session, actor: str, action: str, object_kind: str, object_id: str | None, **detail: object) -> None:
    # Written at once with a Core statement on the session's connection, not left to the unit of work: an
    # audit row refers to nothing (no foreign key), so the caller's pending rows need not be flushed first.
    session.connection().execute(
        _INSERT,
        {
            "actor": actor,
            "action": action,
            "object_kind": object_kind,
            "object_id": object_id,
            "detail": json.dumps(detail, sort_keys=True) if detail else None,
        },
    )
