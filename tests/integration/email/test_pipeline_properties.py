"""Whatever arrives — real-world corpus mail, our own fixtures, arbitrary or mutated bytes — the pipeline
ends in a decided outcome (stored, discarded, or a named refusal), never an unexpected exception."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from gateway.errors import Reject
from gateway.intake.pipeline import Delivered, EmailIntake
from gateway.intake.values import InboundEmail
from tests.integration.email.conftest import PATIENT_EMAIL, build_world
from tests.support.services import REPO, corpus_dir

FIXTURES = REPO / "tests" / "fixtures" / "emails"


@pytest.fixture
def intake_world(settings_factory):
    from gateway.app import Gateway

    gw = Gateway(settings_factory(sender_auth="none", sender_rate_limit=0))
    gw.init()
    world = build_world(gw)
    yield world, EmailIntake(gw)
    gw.close()


def _as_patient(raw: bytes) -> bytes:
    """The message as if our verified patient had sent it (their From replaces the original)."""
    raw = re.sub(rb"(?mi)^From:.*(\r?\n[ \t].*)*", b"From: " + PATIENT_EMAIL.encode(), raw, count=1)
    return raw if re.search(rb"(?mi)^From:", raw) else b"From: " + PATIENT_EMAIL.encode() + b"\r\n" + raw


def _decided(intake: EmailIntake, raw: bytes, rcpt: str) -> str:
    try:
        result = intake.deliver(InboundEmail(raw, rcpt, PATIENT_EMAIL, "127.0.0.1", "client.example"))
    except Reject as outcome:
        return f"{outcome.smtp_code}"
    assert isinstance(result, Delivered)
    return "stored" if result.stored else f"discarded:{result.discarded}"


def _corpus_files() -> list[Path]:
    root = corpus_dir()
    files = sorted(root.glob("gitlab/*.eml")) + sorted(root.glob("talon/**/*.eml"))
    assert len(files) > 60
    return files


def test_every_corpus_and_fixture_message_is_decided(intake_world):
    world, intake = intake_world
    outcomes: dict[str, int] = {}
    files = _corpus_files() + sorted(FIXTURES.glob("*.eml"))
    for path in files:
        outcome = _decided(intake, _as_patient(path.read_bytes()), world.reply_address)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    # Most real replies are stored; auto-replies are discarded; nothing crashed.
    assert outcomes.get("stored", 0) > len(files) // 2, outcomes
    assert any(k.startswith("discarded:auto_reply") for k in outcomes), outcomes


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=3000))
def test_arbitrary_bytes_are_decided(intake_world, raw):
    world, intake = intake_world
    _decided(intake, raw, world.reply_address)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_corpus_messages_are_decided(intake_world, data):
    world, intake = intake_world
    files = _corpus_files()
    raw = bytearray(_as_patient(data.draw(st.sampled_from(files)).read_bytes()))
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["flip", "cut", "dup", "insert"]))
        pos = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "flip" and raw:
            raw[pos] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del raw[pos:]
        elif op == "dup":
            raw[pos:pos] = raw[: data.draw(st.integers(0, 400))]
        else:
            raw[pos:pos] = data.draw(st.binary(max_size=50))
    rcpt = data.draw(st.sampled_from([world.reply_address, "dr-martin@msg.example.test", "postmaster@msg.example.test"]))
    _decided(intake, bytes(raw), rcpt)
