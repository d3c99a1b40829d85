"""Fixed-window counters in the database, shared by every gateway process (sender rate limits,
once-a-day replies). Buckets name a purpose and an id or blind index, never an address or number."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.db.tables import RateCounter


def window_start(now: datetime, window: timedelta) -> datetime:
    epoch = datetime(2000, 1, 1, tzinfo=timezone.utc)
    return epoch + ((now - epoch) // window) * window


def hit(session: Session, bucket: str, window: timedelta, *, now: datetime | None = None) -> int:
    """Count one event in the bucket's current window; returns the count including this one."""
    start = window_start(now or datetime.now(timezone.utc), window)
    where = (RateCounter.bucket == bucket, RateCounter.window_start == start)
    if session.execute(update(RateCounter).where(*where).values(count=RateCounter.count + 1)).rowcount == 0:
        try:
            with session.begin_nested():  # a concurrent first hit wins the insert; we then count on it
                session.add(RateCounter(bucket=bucket, window_start=start, count=1))
            return 1
        except IntegrityError:
            session.execute(update(RateCounter).where(*where).values(count=RateCounter.count + 1))
    return int(session.scalar(select(RateCounter.count).where(*where)) or 0)


def first_in_window(session: Session, bucket: str, window: timedelta) -> bool:
    """True the first time in the window (for "at most one a day" replies)."""
    return hit(session, bucket, window) == 1
