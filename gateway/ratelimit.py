"""Fixed-window counters in the database, shared by every gateway process (sender rate limits,
once-a-day replies). Buckets name a purpose and an id or blind index, never an address or number."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import bindparam, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.db.tables import RateCounter


def window_start(now: datetime, window: timedelta) -> datetime:
    epoch = datetime(2000, 1, 1, tzinfo=timezone.utc)
    return epoch + ((now - epoch) // window) * window


_counters = RateCounter.__table__.c
# One Core statement, built once: no ORM bookkeeping, and the new count comes back with the update.
_BUMP = (
    update(RateCounter.__table__)
    .where(_counters.bucket == bindparam("bucket_name"), _counters.window_start == bindparam("start"))
    .values(count=_counters.count + 1)
    .returning(_counters.count)
)


def hit(session: Session, bucket: str, window: timedelta, *, now: datetime | None = None) -> int:
    """Count one event in the bucket's current window; returns the count including this one."""
    start = window_start(now or datetime.now(timezone.utc), window)
    params = {"bucket_name": bucket, "start": start}
    # Nothing pending in the session can change a counter (counters are only ever added, and flushed, below):
    # the statement goes straight to the session's connection.
    count = session.connection().execute(_BUMP, params).scalar()
    if count is None:
        try:
            with session.begin_nested():  # a concurrent first hit wins the insert; we then count on it
                session.add(RateCounter(bucket=bucket, window_start=start, count=1))
            return 1
        except IntegrityError:
            count = session.connection().execute(_BUMP, params).scalar()
    return int(count or 0)


def first_in_window(session: Session, bucket: str, window: timedelta) -> bool:
    """True the first time in the window (for "at most one a day" replies)."""
    return hit(session, bucket, window) == 1
