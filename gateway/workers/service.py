"""The outbound side of one process: broker, notice actor, dispatcher and (optionally) a dramatiq worker.

`gateway run` starts one with the worker in-process (always with the embedded broker; with Redis or
RabbitMQ unless --no-worker), `gateway worker` one with the worker. Stopping it stops dispatching first,
then lets the actor runs in progress finish.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

import dramatiq
from sqlalchemy import update

from gateway.app import Gateway
from gateway.db.tables import OutboxRow
from gateway.logs import get_logger
from gateway.workers.broker import EMBEDDED, bind_notify, broker_check, broker_kind, make_broker
from gateway.workers.dispatcher import Dispatcher, release
from gateway.workers.notify import Notifier
from gateway.workers.senders import make_senders

log = get_logger("gateway.workers")


def _not_here(row_ids: str | list[str]) -> None:  # pragma: no cover - a process without a worker never runs the actor
    raise RuntimeError("this process does not run notice actors")


class NoticeService:
    def __init__(self, gw: Gateway, *, worker: bool, dispatcher: bool = True, threads: int | None = None) -> None:
        self.gw = gw
        self.kind = broker_kind(gw.settings)
        self.embedded = self.kind == EMBEDDED
        if self.embedded and not worker:
            raise ValueError("the embedded broker needs the in-process worker")
        self.broker = make_broker(gw.settings)
        threads = threads or gw.settings.worker_threads
        # As many emails in flight as threads, a run's sent together included: a worker killed mid-send
        # leaves at most that many to be sent twice.
        self.notifier = Notifier(gw, make_senders(gw.settings), max_sends=threads) if worker else None
        self.actor = bind_notify(self.broker, gw.settings, self._run if worker else _not_here)
        # Embedded only: rows handed to the in-memory broker and not yet run, given back when stopping. Their
        # number is capped, so a backlog waits in the outbox (durable, in order) rather than in memory. Eight
        # rows a thread: a refill (one claim transaction) every four rows a thread, seconds' work at most.
        self._outstanding: set[str] = set()
        self._lock = threading.Lock()
        self._room = threads * 8
        self.dispatcher = (
            Dispatcher(gw, self._enqueue, capacity=self._capacity if self.embedded else None, threads=threads)
            if dispatcher
            else None
        )
        self.worker = dramatiq.Worker(self.broker, worker_threads=threads, worker_timeout=250) if worker else None
        if self.worker is not None:
            # One message in hand a thread, not dramatiq's two: a message is a run of up to RUN_ROWS rows, and
            # several worker processes share a claim's runs rather than the first consumer taking them all.
            self.worker.queue_prefetch = threads

    def _enqueue(self, row_ids: list[str]) -> None:
        if self.embedded:
            with self._lock:
                self._outstanding.update(row_ids)
        self.actor.send(row_ids)

    def _capacity(self) -> int:
        with self._lock:
            return self._room - len(self._outstanding)

    def _run(self, row_ids: str | list[str]) -> None:
        """The actor's body: a run of row ids (one id in messages from before runs were lists)."""
        assert self.notifier is not None
        try:
            self.notifier(row_ids)
        finally:
            if self.embedded:
                with self._lock:
                    before = len(self._outstanding)
                    self._outstanding.difference_update([row_ids] if isinstance(row_ids, str) else row_ids)
                    # Woken once as the rows in memory fall to half the room (not at every run below it:
                    # each wake-up is a claim transaction, for a handful of rows); fewer rows than that
                    # are handed out as they are committed (a commit's wake-up) or at the next poll.
                    low = before > self._room // 2 >= len(self._outstanding)
                if low and self.dispatcher is not None:
                    self.dispatcher.wake()

    def health(self) -> Callable[[], None]:
        if not self.embedded:
            return broker_check(self.broker)

        def check() -> None:
            if self.worker is None or not any(t.is_alive() for t in self.worker.workers):
                raise RuntimeError("worker not running")

        return check

    def start(self) -> NoticeService:
        if self.embedded:
            # The previous process's in-memory broker died with it: its queued rows can be handed out again
            # now (a row being sent, `sending`, waits for its lease instead).
            with self.gw.transaction() as session:
                session.execute(
                    update(OutboxRow)
                    .where(OutboxRow.state == "queued")
                    .values(state="pending", claimed_at=None)
                    .execution_options(synchronize_session=False)
                )
        if self.worker is not None:
            self.worker.start()
        if self.dispatcher is not None:
            self.dispatcher.start()
        log.info("workers.started", broker=self.kind, worker=self.worker is not None, dispatcher=self.dispatcher is not None)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop dispatching, let actor runs in progress finish (up to `timeout`), give back what never ran."""
        if self.dispatcher is not None:
            self.dispatcher.stop()
        if self.notifier is not None:
            self.notifier.wind_down()
        if self.worker is not None:
            self.worker.stop(timeout=int(timeout * 1000))
        if self.embedded and self._outstanding:
            with self._lock:
                ids = sorted(self._outstanding)
                self._outstanding.clear()
            with self.gw.transaction() as session:
                release(session, ids)
        if self.notifier is not None:
            self.notifier.close()
        self.broker.close()
        log.info("workers.stopped", broker=self.kind)



def stop_signal() -> threading.Event:
    """An event set by the first SIGTERM or SIGINT (call from the main thread); a second SIGINT exits at once."""
    import signal
    import sys

    stopping = threading.Event()

    def handle(signum: int, _frame: object) -> None:
        if stopping.is_set() and signum == signal.SIGINT:
            sys.exit(130)
        stopping.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stopping
