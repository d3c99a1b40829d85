"""The audit log: who did what to which object and when; ids and states only, never content."""
from __future__ import annotations

import json

from sqlalchemy.orm import Session

from gateway.db.tables import AuditEvent


def record(session: Session, actor: str, action: str, object_kind: str, object_id: str | None, **detail: object) -> None:
    session.add(
        AuditEvent(
            actor=actor,
            action=action,
            object_kind=object_kind,
            object_id=object_id,
            detail=json.dumps(detail, sort_keys=True) if detail else None,
        )
    )
