"""The `gateway` command through its real entry point: the contract, every bad-input path, the CSV import."""
from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture
def world(cli):
    cli.json("practice", "add", "--slug", "cab", "--name", "Cabinet", "--sms-number", "+33700000001")
    cli.json("practitioner", "add", "--practice", "cab", "--slug", "dr-a", "--name", "Dr A", "--email", "a@cab.test")
    cli.json("practitioner", "add", "--practice", "cab", "--slug", "dr-off", "--name", "Dr Off", "--email", "off@cab.test", "--no-messaging")
    p = cli.json("patient", "add", "--practice", "cab", "--name", "P One", "--email", "p1@example.org", "--phone", "06 12 34 56 78", "--verified", "--locale", "fr")
    return p["id"]


def test_round_trip(cli, world, tmp_path: Path):
    pid = world
    assert cli.json("care", "add", "--patient", pid, "--practitioner", "dr-a")["created"] is True
    assert cli.json("care", "add", "--patient", pid, "--practitioner", "dr-a")["created"] is False
    t = cli.json("thread", "open", "--patient", pid, "--practitioner", "dr-a", "--subject", "Sujet")
    assert t["reply_address"].startswith("r-") and t["reply_address"].endswith("@msg.example.test")
    assert t["reply_address"] != t["practitioner_reply_address"]
    body = tmp_path / "body.txt"
    body.write_text("Bonjour, voici vos résultats.\n", encoding="utf-8")
    pdf = tmp_path / "résultats.pdf"
    pdf.write_bytes(b"%PDF-1.4\n%\xe2\xe3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n")
    sent = cli.json("message", "send", "--thread", t["id"], "--as", "practitioner", "--body-file", str(body), "--attach", str(pdf))
    assert len(sent["outbox"]) == 1
    shown = cli.json("thread", "show", t["id"])
    assert shown["subject"] == "Sujet" and shown["status"] == "open"
    (msg,) = shown["messages"]
    assert msg["body"] == "Bonjour, voici vos résultats.\n"
    assert msg["author"] == "practitioner" and msg["channel"] == "cli"
    assert msg["attachments"] == [{"id": msg["attachments"][0]["id"], "filename": "résultats.pdf", "content_type": "application/pdf", "size": pdf.stat().st_size}]
    assert isinstance(msg["id"], str) and msg["created_at"]
    assert [x["id"] for x in cli.json("thread", "list", "--patient", pid)["threads"]] == [t["id"]]
    assert [x["id"] for x in cli.json("thread", "list", "--practitioner", "dr-a")["threads"]] == [t["id"]]
    assert cli.json("thread", "list", "--practitioner", "dr-off")["threads"] == []
    rotated = cli.json("keys", "rotate")
    assert rotated["rewrapped"] >= 1
    assert cli.json("thread", "show", t["id"])["messages"][0]["body"].startswith("Bonjour")
    erased = cli.json("patient", "erase", pid)
    assert erased["erased"] is True
    after = cli.json("thread", "show", t["id"])
    assert after["erased"] is True and after["messages"][0]["body"] is None


def test_init_is_idempotent(cli):
    first = cli.json("init")
    assert cli.json("init") == first


BAD_INPUT = [
    (["patient", "add", "--practice", "nope", "--name", "X", "--email", "x@example.org"], "unknown practice"),
    (["patient", "add", "--practice", "cab", "--name", "X", "--email", "not-an-email"], "malformed email"),
    (["patient", "add", "--practice", "cab", "--name", "X", "--email", "a@b"], "malformed email"),
    (["patient", "add", "--practice", "cab", "--name", "X", "--email", "a@["], "malformed email"),  # stdlib AttributeError
    (["patient", "add", "--practice", "cab", "--name", "X", "--phone", "12"], "phone number"),
    (["patient", "add", "--practice", "cab", "--name", "X", "--phone", "abc"], "phone number"),
    (["patient", "add", "--practice", "cab", "--name", " ", "--email", "x@example.org"], "name"),
    (["practitioner", "add", "--practice", "cab", "--slug", "dr-a", "--name", "D", "--email", "d@cab.test"], "exists"),
    (["practitioner", "add", "--practice", "cab", "--slug", "Bad Slug", "--name", "D", "--email", "d@cab.test"], "slug"),
    (["practitioner", "add", "--practice", "cab", "--slug", "postmaster", "--name", "D", "--email", "d@cab.test"], "reserved"),
    (["practitioner", "add", "--practice", "zzz", "--slug", "dr-z", "--name", "D", "--email", "d@cab.test"], "unknown practice"),
    (["practice", "add", "--slug", "cab", "--name", "Again"], "exists"),
    (["care", "add", "--patient", "nope", "--practitioner", "dr-a"], "unknown patient"),
    (["care", "add", "--patient", "PID", "--practitioner", "nobody"], "unknown practitioner"),
    (["thread", "open", "--patient", "PID", "--practitioner", "dr-a", "--subject", "S"], "no care relationship"),
    (["thread", "show", "nope"], "unknown thread"),
    (["patient", "erase", "nope"], "unknown patient"),
]


def test_bad_input_says_why_and_writes_nothing(cli, world, cli_env):
    # One world for every case: each CLI call is a fresh process (about a second).
    before = _counts(cli_env)
    for args, says in BAD_INPUT:
        args = [world if a == "PID" else a for a in args]
        err = cli.fails(*args)
        assert says in err and err.count("\n") == 1, (args, err)
        assert "x@example.org" not in err and "not-an-email" not in err
        assert _counts(cli_env) == before, args


def test_messaging_off_and_missing_body_file(cli, world, tmp_path: Path, cli_env):
    cli.json("care", "add", "--patient", world, "--practitioner", "dr-off")
    assert "does not use secure messaging" in cli.fails("thread", "open", "--patient", world, "--practitioner", "dr-off", "--subject", "S")
    cli.json("care", "add", "--patient", world, "--practitioner", "dr-a")
    t = cli.json("thread", "open", "--patient", world, "--practitioner", "dr-a", "--subject", "S")
    before = _counts(cli_env)
    assert "body file not found" in cli.fails("message", "send", "--thread", t["id"], "--as", "practitioner", "--body-file", str(tmp_path / "missing.txt"))
    exe = tmp_path / "virus.exe"
    exe.write_bytes(b"MZ\x90\x00" + b"\x00" * 100)
    body = tmp_path / "b.txt"
    body.write_text("x")
    assert "refused" in cli.fails("message", "send", "--thread", t["id"], "--as", "practitioner", "--body-file", str(body), "--attach", str(exe))
    assert _counts(cli_env) == before
    cli.run("message", "send", "--thread", t["id"], "--as", "robot", "--body-file", str(body), expect=2)


def _counts(env: dict[str, str]) -> dict[str, int]:
    from sqlalchemy import create_engine, func, select

    from gateway.db.tables import metadata

    engine = create_engine(env["GATEWAY_DATABASE_URL"])
    with engine.connect() as conn:
        counts = {t.name: conn.scalar(select(func.count()).select_from(t)) for t in metadata.sorted_tables}
    engine.dispose()
    return counts


def test_csv_import_dry_run_bad_rows_and_idempotent_rerun(cli, world, tmp_path: Path, cli_env):
    cli.json("practitioner", "add", "--practice", "cab", "--slug", "dr-b", "--name", "Dr B", "--email", "b@cab.test")
    csv_file = tmp_path / "patients.csv"
    csv_file.write_text(
        "name,email,phone,practitioners,locale,verified\n"
        "Alice Dupont,alice@example.org,+33611111111,dr-a;dr-b,fr,true\n"
        "Bob,not-an-email,,dr-a,fr,true\n"
        "Carl,,0622222222,dr-a;dr-unknown,en,no\n"
        "Dora,dora@example.org,,,en,1\n"
        "Eve,,,dr-a,fr,yes\n"
        "Fay,fay@example.org,,dr-a,de,no\n"
        "Alice again,ALICE@example.org,,dr-a,fr,true\n"
        "P One,p1@example.org,,dr-a,fr,true\n",
        encoding="utf-8",
    )
    before = _counts(cli_env)
    dry = cli.run("import", str(csv_file), "--practice", "cab", "--dry-run", expect=3)
    report = json.loads(dry.stdout)
    assert report["dry_run"] is True and report["rejected"] == 5
    assert [e["line"] for e in report["errors"]] == [3, 4, 6, 7, 8]
    for line in (3, 4, 6, 7, 8):
        assert f"line {line}:" in dry.stderr
    assert "not-an-email" not in dry.stderr + dry.stdout
    assert _counts(cli_env) == before

    first = json.loads(cli.run("import", str(csv_file), "--practice", "cab", expect=3).stdout)
    assert (first["created"], first["unchanged"], first["updated"], first["rejected"]) == (2, 0, 1, 5)
    after_first = _counts(cli_env)
    second = json.loads(cli.run("import", str(csv_file), "--practice", "cab", expect=3).stdout)
    assert (second["created"], second["unchanged"], second["updated"]) == (0, 3, 0)
    after_second = _counts(cli_env)
    assert {k: v for k, v in after_second.items() if k != "audit_events"} == {k: v for k, v in after_first.items() if k != "audit_events"}
    assert cli.fails("import", str(tmp_path / "nope.csv"), "--practice", "cab")
    assert "unknown practice" in cli.fails("import", str(csv_file), "--practice", "nope")
