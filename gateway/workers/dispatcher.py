"""The dispatcher: claims due outbox rows and hands their ids to the notice actor, after the claim commits.

A due row is `pending` with `next_attempt_at` in the past, or `queued`/`sending` past its lease (the worker
that held it died, or its broker message was lost). On PostgreSQL candidates are locked with
`FOR UPDATE SKIP LOCKED`, so several dispatchers share the work; SQLite serialises writers, and the
claim is a conditional UPDATE either way (state pending -> queued, claimed_at set).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from sqlalchemy import event, select, update
from sqlalchemy.orm import Session, sessionmaker

from gateway.app import Gateway
from gateway.db.tables import OutboxRow
from gateway.logs import get_logger
from gateway.workers.writes import writing

log = get_logger("gateway.workers.dispatcher")

BATCH = 200
# A wake-up comes at least this long after the previous claim began: the rows committed meanwhile are
# claimed together. Woken by every commit while messages are posted, the dispatcher otherwise ran one claim
# transaction per row (1.3 ms CPU per notice end to end, against 0.1 ms in a drain). At a calm rate (a post
# every 25 ms or more) nothing waits. Once a claim finds several rows (posts come faster than one per
# 6 ms), the next waits up to GATHER_BUSY_SECONDS: claims of a few dozen rows, a notice at most 0.1 s later.
GATHER_SECONDS = 0.025
GATHER_BUSY_SECONDS = 0.1
GATHER_BUSY_ROWS = 4
# The most rows in one actor run (`runs`). Each dramatiq message costs its delivery, its acknowledgement and
# the hand-overs between the consumer and worker threads: about 0.3 ms of CPU and a dozen thread switches
# in a busy worker, as much as a notice's own database work; and a run's emails go to the relay together
# (`Notifier.__call__`). With Redis (bench/notices.py) the worker went from 1.6-2.4 ms of CPU a notice to
# about 1.4 with runs sent one row after the other; sending together, a drain went from 400-510 to 520-680
# notices/s.
RUN_ROWS = 8


def runs(ids: list[str], *, threads: int, most: int = RUN_ROWS) -> list[list[str]]:
    """`ids` cut into actor runs of one size: one row each for a claim of up to twice `threads` rows (every
    thread, and another process's threads, still sends at once), larger runs, up to `most` rows, for a
    larger claim, always at least twice as many runs as threads (a worker process holds one run a thread:
    `NoticeService`, so the runs are shared out between processes)."""
    size = max(1, min(most, len(ids) // max(1, 2 * threads)))
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def claim_due(
    session: Session, *, now: datetime, lease: timedelta, limit: int = BATCH, stale: bool = True
) -> list[str]:
    """Mark up to `limit` due rows `queued` and return their ids (the caller commits, then enqueues).

    `stale=False` leaves rows past their lease for a later call (the dispatcher looks for them at its polls,
    not at every commit's wake-up)."""
    due = list(
        session.scalars(
            select(OutboxRow.id)
            .where(OutboxRow.state == "pending", OutboxRow.next_attempt_at <= now)
            .order_by(OutboxRow.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    lapsed: list[str] = []
    if stale and len(due) < limit:
        lapsed = list(
            session.scalars(
                select(OutboxRow.id)
                .where(OutboxRow.state.in_(("queued", "sending")), OutboxRow.claimed_at < now - lease)
                .order_by(OutboxRow.claimed_at)
                .limit(limit - len(due))
                .with_for_update(skip_locked=True)
            )
        )
    claimed: list[str] = []
    if due:
        result = session.execute(
            update(OutboxRow)
            .where(OutboxRow.id.in_(due), OutboxRow.state == "pending")
            .values(state="queued", claimed_at=now)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == len(due):
            claimed.extend(due)
        else:  # another dispatcher took some in between (cannot happen under the locks above; cheap to check)
            claimed.extend(_still_ours(session, due, now))
    if lapsed:
        session.execute(
            update(OutboxRow)
            .where(OutboxRow.id.in_(lapsed), OutboxRow.state.in_(("queued", "sending")), OutboxRow.claimed_at < now - lease)
            .values(state="queued", claimed_at=now)
            .execution_options(synchronize_session=False)
        )
        claimed.extend(_still_ours(session, lapsed, now))
        log.warning("outbox.reclaimed", rows=len(lapsed))
    return claimed


def _still_ours(session: Session, ids: list[str], now: datetime) -> list[str]:
    stmt = select(OutboxRow.id).where(OutboxRow.id.in_(ids), OutboxRow.state == "queued", OutboxRow.claimed_at == now)
    return list(session.scalars(stmt))


def release(session: Session, ids: list[str]) -> None:
    """Put claimed rows that never reached a worker back to `pending`, due now."""
    if ids:
        session.execute(
            update(OutboxRow)
            .where(OutboxRow.id.in_(ids), OutboxRow.state == "queued")
            .values(state="pending", claimed_at=None, next_attempt_at=datetime.now(timezone.utc))
            .execution_options(synchronize_session=False)
        )


class Dispatcher:
    """A thread that claims due rows every `poll` seconds, or at once when woken by a commit that wrote one,
    and hands them to `enqueue` in runs (`runs`: lists of row ids)."""

    def __init__(
        self,
        gw: Gateway,
        enqueue: Callable[[list[str]], object],
        *,
        poll: float | None = None,
        capacity: Callable[[], int] | None = None,
        threads: int | None = None,
    ) -> None:
        self.gw = gw
        self._enqueue = enqueue
        # The worker threads the runs are cut for: this process's, or those a `gateway worker` is set to.
        self._threads = threads or gw.settings.worker_threads
        # How many more rows the consumers can take now (the in-memory broker); None: no limit known.
        self._capacity = capacity
        self._poll = poll if poll is not None else gw.settings.notice_poll_seconds
        self._lease = timedelta(seconds=gw.settings.notice_lease_seconds)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._watched: sessionmaker[Session] | None = None

    def wake(self) -> None:
        self._wake.set()

    def tick(self, *, stale: bool = True) -> int:
        """Claim and enqueue one batch; returns how many rows were handed out (`stale=False`: due rows only,
        not those past their lease)."""
        limit = BATCH if self._capacity is None else min(BATCH, self._capacity())
        if limit <= 0:
            return 0
        now = datetime.now(timezone.utc)
        with writing(self.gw) as session:
            ids = claim_due(session, now=now, lease=self._lease, limit=limit, stale=stale)
        done = 0
        for run in runs(ids, threads=self._threads):
            try:
                self._enqueue(run)
            except Exception as exc:  # noqa: BLE001 - broker down: give the rest back rather than wait a lease
                log.error("outbox.enqueue_failed", rows=len(ids) - done, error=type(exc).__name__)
                with writing(self.gw) as session:
                    release(session, ids[done:])
                return done
            done += len(run)
        return len(ids)

    def start(self) -> Dispatcher:
        self._watch(self.gw.sessions)
        self._thread = threading.Thread(target=self._run, name="gateway-dispatcher", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._unwatch()

    def _run(self) -> None:
        looked = float("-inf")  # when rows past their lease were last looked for: once a poll period at most
        while not self._stopping.is_set():
            started = time.monotonic()
            stale = started - looked >= self._poll
            try:
                handed = self.tick(stale=stale)
                if stale:
                    looked = started
            except Exception as exc:  # noqa: BLE001 - the loop's edge: a database hiccup must not end dispatching
                log.error("outbox.dispatch_failed", error=type(exc).__name__)
                handed = 0
            if handed >= BATCH:
                continue  # a backlog, and room for it: take the next batch at once
            if self._wake.wait(self._poll):
                # Woken (a commit, room in memory): the commits of the next few ms join this claim.
                gather = GATHER_BUSY_SECONDS if handed >= GATHER_BUSY_ROWS else GATHER_SECONDS
                self._stopping.wait(max(0.0, started + gather - time.monotonic()))
            self._wake.clear()

    # A commit in this process that wrote an outbox row wakes the dispatcher: notices leave at once
    # instead of at the next poll. Rows written by other processes wait for the poll.
    def _watch(self, factory: sessionmaker[Session]) -> None:
        event.listen(factory, "after_flush", _note_outbox_rows)
        event.listen(factory, "after_commit", self._after_commit)
        event.listen(factory, "after_rollback", _forget_outbox_rows)
        self._watched = factory

    def _unwatch(self) -> None:
        if self._watched is not None:
            event.remove(self._watched, "after_flush", _note_outbox_rows)
            event.remove(self._watched, "after_commit", self._after_commit)
            event.remove(self._watched, "after_rollback", _forget_outbox_rows)
            self._watched = None

    def _after_commit(self, session: Session) -> None:
        if session.info.pop("outbox_written", False):
            self._wake.set()


def _note_outbox_rows(session: Session, _context: object) -> None:
    if any(isinstance(obj, OutboxRow) for obj in session.new):
        session.info["outbox_written"] = True


def _forget_outbox_rows(session: Session) -> None:
    session.info.pop("outbox_written", None)
