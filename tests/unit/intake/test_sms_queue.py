"""The SMS webhook's queue: webhooks that wait while a batch is filed go together in the next one, oldest
first; each request gets its own webhook's outcome (result or exception); an MMS never waits in it."""
from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest

from gateway.ingress.sms import MAX_BATCH, SignedForm, SmsQueue
from gateway.intake.sms import SmsResult


class FakeIntake:
    """deliver_many answers each form by its Body; the first batch waits until `release` is set."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.held: list[bool] = []  # whether the first batch was still held when each began
        self.single: list[str] = []
        self.release = threading.Event()

    def deliver_many(self, forms: list[SignedForm]) -> list[SmsResult | Exception]:
        self.batches.append([f["Body"] for f in forms])
        self.held.append(not self.release.is_set())
        if len(self.batches) == 1:
            assert self.release.wait(10)
        return [ValueError(f["Body"]) if f["Body"].startswith("fail") else SmsResult("stored", reason=f["Body"])
                for f in forms]

    def deliver(self, form: SignedForm) -> SmsResult:
        self.single.append(form["Body"])
        return SmsResult("stored", reason=form["Body"])


def form(body: str, **fields: str) -> SignedForm:
    return SignedForm([("Body", body), *fields.items()])


def run_all(queue: SmsQueue, intake: FakeIntake, forms: list[SignedForm]) -> dict[str, Any]:
    answers: dict[str, Any] = {}

    async def one(f: SignedForm) -> None:
        try:
            answers[f["Body"]] = await queue.deliver(f)
        except ValueError as exc:
            answers[f["Body"]] = exc

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for f in forms:
                tg.start_soon(one, f)
                await anyio.sleep(0.01)  # in this order
            await anyio.sleep(0.05)
            intake.release.set()

    anyio.run(main)
    return answers


@pytest.mark.parametrize("batches", [1, 2])
def test_waiting_webhooks_go_together_oldest_first_and_each_gets_its_own_outcome(batches: int) -> None:
    intake = FakeIntake()
    queue = SmsQueue(intake, anyio.CapacityLimiter(4), batches)  # type: ignore[arg-type]
    bodies = ["first", *(f"m{i}" for i in range(MAX_BATCH + 2)), "fail-1"]
    answers = run_all(queue, intake, [form(b) for b in bodies])
    # The first is filed alone at once; those that came while it was filed, in batches of MAX_BATCH.
    assert intake.batches == [["first"], bodies[1:MAX_BATCH + 1], bodies[MAX_BATCH + 1:]]
    # With room for two batches, a full one goes while the first is still being filed; the rest wait.
    assert intake.held == [True, batches == 2, False]
    for body in bodies[:-1]:
        assert isinstance(answers[body], SmsResult) and answers[body].reason == body
    assert isinstance(answers["fail-1"], ValueError)  # its own failure, no one else's


def test_an_mms_does_not_wait_for_the_batch() -> None:
    intake = FakeIntake()
    queue = SmsQueue(intake, anyio.CapacityLimiter(4))  # type: ignore[arg-type]
    answers: dict[str, Any] = {}

    async def main() -> None:
        async with anyio.create_task_group() as tg:

            async def deliver(f: SignedForm) -> None:
                answers[f["Body"]] = await queue.deliver(f)

            tg.start_soon(deliver, form("sms"))
            await anyio.sleep(0.01)
            with anyio.fail_after(5):
                await deliver(form("mms", NumMedia="1"))  # answered while the SMS batch is still held
            intake.release.set()

    anyio.run(main)
    assert intake.single == ["mms"] and intake.batches == [["sms"]] and set(answers) == {"sms", "mms"}


@pytest.mark.parametrize("waiting", [1, 3])
def test_a_cancelled_request_leaves_the_queue_unfiled(waiting: int) -> None:
    intake = FakeIntake()
    queue = SmsQueue(intake, anyio.CapacityLimiter(4))  # type: ignore[arg-type]

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(queue.deliver, form("first"))
            await anyio.sleep(0.01)
            with anyio.move_on_after(0.05):
                async with anyio.create_task_group() as inner:
                    for i in range(waiting):
                        inner.start_soon(queue.deliver, form(f"gone-{i}"))
            tg.start_soon(queue.deliver, form("later"))
            await anyio.sleep(0.01)
            intake.release.set()

    anyio.run(main)
    assert intake.batches == [["first"], ["later"]]


def test_a_request_cancelled_while_waiting_for_a_thread_leaves_the_others_to_be_filed() -> None:
    intake = FakeIntake()
    intake.release.set()
    limiter = anyio.CapacityLimiter(1)
    queue = SmsQueue(intake, limiter)  # type: ignore[arg-type]
    answers: dict[str, Any] = {}
    scopes: list[anyio.CancelScope] = []

    async def deliver(body: str) -> None:
        answers[body] = await queue.deliver(form(body))

    async def cancelled(body: str) -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            await deliver(body)

    async def main() -> None:
        await limiter.acquire()  # every thread busy (fetching an MMS's media, say)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(cancelled, "gone")  # takes a batch of itself, and waits for a thread
                await anyio.sleep(0.01)
                tg.start_soon(deliver, "a")
                tg.start_soon(deliver, "b")
                await anyio.sleep(0.01)
                scopes[0].cancel()
                await anyio.sleep(0.01)
                limiter.release()

    anyio.run(main)
    assert intake.batches == [["a", "b"]] and set(answers) == {"a", "b"}
