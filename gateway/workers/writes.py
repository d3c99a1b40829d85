"""Short transactions for the outbound side.

On SQLite the writers of this process already queue on one lock per database file in
`gateway.db.engine.transaction` (handed over at once, instead of SQLite's sleeping busy handler), so
`writing` is `gw.transaction()` under the name the worker code reads best with. The notice actor's own
statements are Core only and go through `Combined`: it runs those that queue up at the same time as one
transaction, on a bare connection that it keeps (`HeldConnection`: the same writer queue, without a
Session or a pool checkout per transaction), a lone outcome UPDATE as a transaction of its own
(`one_statement`), and writes a sent notice's outcome behind the actor run (`later`).
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from gateway.app import Gateway
from gateway.db.engine import HeldConnection
from gateway.logs import get_logger

log = get_logger("gateway.workers.writes")


@contextmanager
def writing(gw: Gateway) -> Iterator[Session]:
    with gw.transaction() as session:
        yield session


T = TypeVar("T")


class _Work(Generic[T]):
    __slots__ = ("work", "one_statement", "deferred", "done", "result", "error")

    def __init__(self, work: Callable[[Connection], T], one_statement: bool, deferred: bool = False) -> None:
        self.work = work
        self.one_statement = one_statement
        self.deferred = deferred  # nobody waits for it (`Combined.later`)
        self.done = False
        self.result: T | None = None
        self.error: BaseException | None = None


class Combined:
    """The worker threads' short write transactions, run several in one when they queue up.

    A thread hands its work (a function of a connection) in and waits for its turn; the thread that gets
    the turn runs every work waiting by then, in order, in one transaction with one commit, and the
    others find theirs done. Each call still returns only after its own work is committed. Should any
    work in a shared transaction fail, the whole is rolled back and each is run again in a transaction of
    its own, so a failure reaches only its own caller. A work must therefore have no effect outside the
    database (metrics and log lines come after the call), and may run twice.

    `later(work)` hands a work in without waiting for it: it rides along with the next thread's turn, or is
    committed by a thread of this object's own at most `delay` seconds later (and at `close`). The notice
    actor writes a sent notice's outcome this way: the run ends when the relay has accepted the notice,
    without one more transaction and commit of its own. Until that commit the row stays `sending`; should
    the process die in between, the row is handed out again when its lease ends (at-least-once, as for a
    worker killed while sending).
    """

    def __init__(self, gw: Gateway, *, delay: float = 0.02) -> None:
        self.gw = gw
        self.delay = delay
        self._waiting: list[_Work[Any]] = []
        self._guard = threading.Lock()  # the list of waiting works
        self._turn = threading.Lock()  # one thread runs transactions at a time; the others' work rides along
        self._connection = HeldConnection(gw.sessions)  # used by the thread that has the turn
        self._kick = threading.Event()  # a deferred work waits (set once until the flusher takes it)
        self._closing = False
        self._closed = threading.Event()  # cuts the flusher's delay short
        self._flusher: threading.Thread | None = None

    def later(self, work: Callable[[Connection], object], *, one_statement: bool = False) -> None:
        """`work(connection)`, committed soon; the caller does not wait (a failure is logged, not raised)."""
        with self._guard:
            if self._closing:
                deferred = False
            else:
                deferred = True
                self._waiting.append(_Work(work, one_statement, deferred=True))
                if self._flusher is None:
                    self._flusher = threading.Thread(target=self._flush_loop, name="gateway-writes", daemon=True)
                    self._flusher.start()
        if not deferred:  # closing: nobody would commit it later
            self.run(work, one_statement=one_statement)
            return
        self._kick.set()

    def close(self) -> None:
        """Commit every deferred work now; later calls to `later` wait for their own commit."""
        with self._guard:
            self._closing = True
            flusher = self._flusher
        self._closed.set()
        self._kick.set()
        if flusher is not None:
            flusher.join()
        self._take_turn()
        with self._turn:
            self._connection.close()

    def _flush_loop(self) -> None:
        while True:
            self._kick.wait()
            self._closed.wait(self.delay)  # meanwhile the actor threads' own turns most often carry them
            self._kick.clear()
            self._take_turn()
            if self._closing:
                return

    def _take_turn(self) -> None:
        with self._turn:
            with self._guard:
                batch, self._waiting = self._waiting, []
            if batch:
                self._run(batch)

    def run(self, work: Callable[[Connection], T], *, one_statement: bool = False) -> T:
        """`work(connection)` committed; `one_statement`: it runs a single statement (see `HeldConnection`)."""
        mine = _Work(work, one_statement)
        with self._guard:
            self._waiting.append(mine)
        with self._turn:
            if not mine.done:
                with self._guard:
                    batch, self._waiting = self._waiting, []
                self._run(batch)
        if mine.error is not None:
            raise mine.error
        return mine.result  # type: ignore[return-value]

    def _run(self, batch: list[_Work[Any]]) -> None:
        try:
            if len(batch) > 1:
                try:
                    with self._connection.transaction() as db:
                        results = [item.work(db) for item in batch]
                except Exception:  # noqa: BLE001 - whichever failed, each runs again alone below
                    pass
                except BaseException as exc:  # interrupted, nothing committed: every caller hears of it
                    for item in batch:
                        item.error = exc
                    raise
                else:
                    for item, result in zip(batch, results):
                        item.result = result
                    return
            for item in batch:
                try:
                    with self._connection.transaction(one_statement=item.one_statement) as db:
                        item.result = item.work(db)
                except BaseException as exc:  # noqa: BLE001 - handed to the thread whose work it is
                    item.error = exc
        finally:
            for item in batch:
                item.done = True
                if item.deferred and item.error is not None:
                    log.error("writes.deferred_failed", error=type(item.error).__name__)
