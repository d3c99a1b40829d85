"""Under load, messages waiting for the intake are stored several to a transaction (`deliver_many`); each
still gets the outcome, and the reply, it would have had alone, and only after its own commit."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import event, select

from gateway.db.tables import Message
from gateway.errors import Reject
from gateway.intake.pipeline import Delivered, EmailIntake
from gateway.intake.values import InboundEmail
from tests.integration.email.conftest import DOMAIN, PATIENT_EMAIL, World, make_email


def _inbound(world: World, rcpt: str, *, sender: str = PATIENT_EMAIL, message_id: str | None = None) -> InboundEmail:
    raw = make_email(to=rcpt, sender=sender, message_id=message_id).as_bytes()
    return InboundEmail(raw, rcpt, sender, "127.0.0.1", "client.example")


def _stored_ids(world: World) -> list[str]:
    with world.gw.readers() as s:
        return list(s.scalars(select(Message.id).where(Message.author == "patient")))


def _commits(world: World) -> list[int]:
    count = [0]
    event.listen(world.gw.engine, "commit", lambda conn: count.__setitem__(0, count[0] + 1))
    return count


def test_a_batch_that_all_stores_takes_one_commit(smtp_world: World) -> None:
    intake = EmailIntake(smtp_world.gw)
    commits = _commits(smtp_world)
    outcomes = intake.deliver_many([_inbound(smtp_world, smtp_world.reply_address) for _ in range(5)])
    assert all(isinstance(o, Delivered) and o.stored is not None for o in outcomes)
    assert len({o.stored.message_id for o in outcomes}) == 5  # type: ignore[union-attr]
    assert len(_stored_ids(smtp_world)) == 5
    assert commits[0] == 1


def test_each_message_of_a_batch_gets_its_own_outcome(smtp_world: World) -> None:
    intake = EmailIntake(smtp_world.gw)
    reply = smtp_world.reply_address
    batch = [
        _inbound(smtp_world, reply, message_id="<twice@patient.example>"),
        _inbound(smtp_world, reply, sender="stranger@elsewhere.example"),  # not a contact: 550 before storing
        _inbound(smtp_world, reply),
        _inbound(smtp_world, reply, message_id="<twice@patient.example>"),  # the same message again
        _inbound(smtp_world, "postmaster@" + DOMAIN),
        _inbound(smtp_world, "dr-martin@" + DOMAIN),  # a new thread
    ]
    outcomes = intake.deliver_many(batch)
    first, stranger, other, again, postmaster, new_thread = outcomes
    assert isinstance(first, Delivered) and first.stored is not None
    assert isinstance(stranger, Reject) and stranger.smtp_code == 550
    assert isinstance(other, Delivered) and other.stored is not None
    # The duplicate rolled the shared transaction back; each was stored again on its own, once.
    assert again == Delivered(discarded="duplicate")
    assert postmaster == Delivered(discarded="postmaster")
    assert isinstance(new_thread, Delivered) and new_thread.stored is not None and new_thread.stored.new_thread
    assert sorted(_stored_ids(smtp_world)) == sorted(
        o.stored.message_id for o in (first, other, new_thread)  # type: ignore[union-attr]
    )


def test_concurrent_smtp_deliveries_share_commits_and_each_is_answered(smtp_world: World) -> None:
    commits = _commits(smtp_world)

    def connection(n: int) -> list[int]:
        codes = []
        with smtp_world.smtp() as client:
            for i in range(4):
                msg = make_email(to=smtp_world.reply_address, message_id=f"<c{n}-{i}@patient.example>")
                client.mail(PATIENT_EMAIL)
                client.rcpt(smtp_world.reply_address)
                codes.append(client.data(msg.as_bytes())[0])
        return codes

    with ThreadPoolExecutor(8) as pool:
        codes = [c for codes in pool.map(connection, range(8)) for c in codes]
    assert codes == [250] * 32
    assert len(_stored_ids(smtp_world)) == 32
    # Resolving recipients takes no commit; storing 32 messages took fewer than 32 (batches formed while
    # one was being stored). Each answer came after its message's commit: all 32 are there.
    assert commits[0] < 32


def test_recipients_looked_up_together_each_get_their_own_answer(smtp_world: World) -> None:
    intake = EmailIntake(smtp_world.gw)
    addresses = [smtp_world.reply_address, "nobody@" + DOMAIN, "dr-off@" + DOMAIN, "POSTMASTER@" + DOMAIN,
                 "dr-martin@" + DOMAIN, "x@elsewhere.example"]
    reply, nobody, off, postmaster, new_thread, elsewhere = intake.resolve_many(addresses)
    assert not isinstance(reply, Exception) and reply.kind == "reply" and reply.thread_id == smtp_world.thread_id
    assert isinstance(nobody, Reject) and (nobody.smtp_code, nobody.enhanced) == (550, "5.1.1")
    assert isinstance(off, Reject) and (off.smtp_code, off.enhanced) == (550, "5.7.1")
    assert not isinstance(postmaster, Exception) and postmaster.kind == "postmaster"
    assert not isinstance(new_thread, Exception) and new_thread.kind == "new_thread"
    assert isinstance(elsewhere, Reject) and elsewhere.smtp_code == 550
    # The same answers as one at a time.
    for address, together in zip(addresses, (reply, nobody, off, postmaster, new_thread, elsewhere)):
        try:
            alone: object = intake.resolve(address)
        except Reject as refusal:
            alone = refusal
        assert alone == together


def test_a_batch_holding_a_message_stored_before_stores_the_rest_once(smtp_world: World) -> None:
    intake = EmailIntake(smtp_world.gw)
    reply = smtp_world.reply_address
    earlier = _inbound(smtp_world, reply, message_id="<earlier@patient.example>")
    assert intake.deliver(earlier).stored is not None
    fresh, resent = intake.deliver_many([_inbound(smtp_world, reply), earlier])
    assert isinstance(fresh, Delivered) and fresh.stored is not None
    assert resent == Delivered(discarded="duplicate")
    assert len(_stored_ids(smtp_world)) == 2
