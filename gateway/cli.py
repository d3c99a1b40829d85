"""The `gateway` command. Every command that creates or shows something prints one JSON object on stdout;
errors print one line on stderr and exit 2 (bad input) or 1 (anything else)."""
from __future__ import annotations

import argparse
import json
import mimetypes
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.errors import GatewayError

Handler = Callable[[argparse.Namespace], "dict[str, Any] | None"]
EXIT_USAGE = 2
EXIT_PARTIAL = 3  # `import` finished but rejected some rows (each named on stderr)


class UsageError(GatewayError, ValueError):
    """A command-line problem found before any work (a missing file, a bad combination)."""


def _gateway():  # type: ignore[no-untyped-def]
    from gateway.app import Gateway
    from gateway.config import load_settings

    return Gateway(load_settings())


# --- directory -------------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> dict[str, Any]:
    gw = _gateway()
    return gw.init()


def cmd_practice_add(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.directory.practices import add_practice

    gw = _gateway()
    with gw.transaction() as s:
        p = add_practice(s, slug=args.slug, name=args.name, sms_number=args.sms_number)
        return {"id": p.id, "slug": p.slug, "name": p.display_name, "sms_number": p.sms_number}


def cmd_practitioner_add(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.directory.practices import add_practitioner

    gw = _gateway()
    with gw.transaction() as s:
        p = add_practitioner(
            s, gw.keys, practice_slug=args.practice, slug=args.slug, name=args.name, email=args.email,
            messaging=not args.no_messaging,
        )
        return {"id": p.id, "slug": p.slug, "practice": args.practice, "messaging": p.messaging_enabled}


def cmd_patient_add(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.directory.patients import add_patient

    gw = _gateway()
    with gw.transaction() as s:
        p = add_patient(
            s, gw.keys, practice_slug=args.practice, name=args.name, email=args.email, phone=args.phone,
            verified=args.verified, locale=args.locale or gw.settings.default_locale,
        )
        s.flush()
        from gateway.db.tables import ContactPoint
        from sqlalchemy import select

        contacts = s.scalars(select(ContactPoint).where(ContactPoint.patient_id == p.id))
        return {
            "id": p.id,
            "practice": args.practice,
            "locale": p.locale,
            "contacts": [{"id": c.id, "kind": c.kind, "verified": c.verified_at is not None} for c in contacts],
        }


def cmd_patient_erase(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.directory.patients import erase_patient

    gw = _gateway()
    with gw.transaction() as s:
        p = erase_patient(s, args.id)
        return {"id": p.id, "erased": True, "erased_at": p.erased_at.isoformat() if p.erased_at else None}


def cmd_care_add(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.directory.patients import add_care

    gw = _gateway()
    with gw.transaction() as s:
        care, created = add_care(s, patient_id=args.patient, practitioner_slug=args.practitioner)
        return {"id": care.id, "patient_id": care.patient_id, "practitioner": args.practitioner, "created": created}


def cmd_import(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.directory.importer import import_csv

    path = Path(args.file)
    if not path.is_file():
        raise UsageError("CSV file not found")
    gw = _gateway()
    report = import_csv(gw, path, practice_slug=args.practice, dry_run=args.dry_run)
    for bad in report.rejected:
        print(f"gateway: line {bad['line']}: {bad['reason']}", file=sys.stderr)
    if report.rejected:
        args.exit_code = EXIT_PARTIAL
    return report.as_dict()


# --- threads ---------------------------------------------------------------------------------------


def _thread_summary(t: Any, practitioner_slug: str | None) -> dict[str, Any]:
    return {
        "id": t.id,
        "status": t.status,
        "code": t.code,
        "patient_id": t.patient_id,
        "practitioner": practitioner_slug,
        "created_at": t.created_at.isoformat(),
        "last_message_at": t.last_message_at.isoformat() if t.last_message_at else None,
    }


def cmd_thread_open(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.threads.service import open_thread, thread_reply_address

    gw = _gateway()
    domain = gw.settings.mail_domain
    with gw.transaction() as s:
        t = open_thread(s, gw.keys, patient_id=args.patient, practitioner_slug=args.practitioner, subject=args.subject)
        out = _thread_summary(t, args.practitioner)
        out["reply_address"] = thread_reply_address(gw.keys, t, "patient", domain)
        out["practitioner_reply_address"] = thread_reply_address(gw.keys, t, "practitioner", domain)
        return out


def cmd_thread_list(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.db.tables import Practitioner
    from gateway.directory.patients import get_patient
    from gateway.directory.practices import get_practitioner
    from gateway.threads.service import list_threads

    gw = _gateway()
    with gw.transaction() as s:
        patient_id = get_patient(s, args.patient).id if args.patient else None
        practitioner_id = get_practitioner(s, args.practitioner).id if args.practitioner else None
        threads = list_threads(s, patient_id=patient_id, practitioner_id=practitioner_id)
        slugs = {p.id: p.slug for p in s.query(Practitioner).all()}
        return {"threads": [_thread_summary(t, slugs.get(t.practitioner_id)) for t in threads]}


def cmd_thread_show(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.threads.service import get_thread, read_thread

    gw = _gateway()
    with gw.transaction() as s:
        return read_thread(s, gw.keys, get_thread(s, args.id), actor="cli")


def cmd_message_send(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.db.tables import OutboxRow
    from gateway.threads.service import NewAttachment, get_thread, post_message

    body_file = Path(args.body_file)
    if not body_file.is_file():
        raise UsageError("body file not found")
    try:
        body = body_file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError("body file is not UTF-8 text") from None
    attachments = []
    for name in args.attach or []:
        path = Path(name)
        if not path.is_file():
            raise UsageError("attachment file not found")
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        attachments.append(NewAttachment(path.name, ctype, path.read_bytes()))
    attachments = _screen_attachments(attachments)
    gw = _gateway()
    with gw.transaction() as s:
        thread = get_thread(s, args.thread)
        m = post_message(s, gw.keys, thread, author=args.as_, channel="cli", body=body, attachments=tuple(attachments))
        s.flush()
        outbox = [r.id for r in s.query(OutboxRow).filter(OutboxRow.message_id == m.id)]
        return {"id": m.id, "thread_id": thread.id, "author": m.author, "outbox": outbox}


def _screen_attachments(attachments: list[Any]) -> list[Any]:
    """The same allowlist as email and portal uploads; a refused file is a usage error here."""
    try:
        from gateway.intake.attachments import AttachmentLimits, screen
        from gateway.intake.parse import Attachment
    except ImportError:  # the intake package is optional for the CLI's own work
        return attachments
    parsed = [Attachment(a.filename, a.content_type, a.data, None, False) for a in attachments]
    accepted, refused = screen(tuple(parsed), AttachmentLimits())
    if refused:
        raise UsageError(f"attachment refused ({refused[0].reason})")
    return attachments


# --- keys ------------------------------------------------------------------------------------------


def cmd_keys_rotate(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.keys import rotate

    return rotate(_gateway(), batch=args.batch)


def cmd_keys_list(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.keys import describe

    return describe(_gateway())


def cmd_keys_retire(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.keys import retire

    return retire(_gateway(), args.id)


# --- parser ----------------------------------------------------------------------------------------


def _lazy(module: str, name: str) -> Handler:
    """A handler imported only when its command runs (the portal's modules are heavier than the CLI)."""

    def run(args: argparse.Namespace) -> dict[str, Any] | None:
        import importlib

        return getattr(importlib.import_module(module), name)(args)  # type: ignore[no-any-return]

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Secure messaging gateway for medical practices.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def leaf(parent: Any, name: str, handler: Handler, help_: str) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help_, description=help_)
        p.set_defaults(handler=handler)
        return p

    def group(name: str, help_: str) -> Any:
        return sub.add_parser(name, help=help_).add_subparsers(dest="action", required=True, metavar="ACTION")

    leaf(sub, "init", cmd_init, "create the data dir, the key file if no key is set, migrate the database; idempotent")

    practice = group("practice", "practices")
    p = leaf(practice, "add", cmd_practice_add, "add a practice")
    p.add_argument("--slug", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--sms-number")

    practitioner = group("practitioner", "practitioners")
    p = leaf(practitioner, "add", cmd_practitioner_add, "add a practitioner (messaging on unless --no-messaging)")
    p.add_argument("--practice", required=True)
    p.add_argument("--slug", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--email", required=True)
    p.add_argument("--no-messaging", action="store_true")
    p = leaf(practitioner, "invite", _lazy("gateway.web.cli", "cmd_practitioner_invite"),
             "print a single-use link where the practitioner sets their password")
    p.add_argument("slug")

    patient = group("patient", "patients")
    p = leaf(patient, "add", cmd_patient_add, "add a patient")
    p.add_argument("--practice", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--email")
    p.add_argument("--phone")
    p.add_argument("--verified", action="store_true", help="the practice attests the contacts (audited)")
    p.add_argument("--locale", choices=("fr", "en"))
    p = leaf(patient, "verify", _lazy("gateway.web.cli", "cmd_patient_verify"),
             "send a verification link (email) or code (SMS) to the patient's contact")
    p.add_argument("--patient", required=True)
    kind = p.add_mutually_exclusive_group(required=True)
    kind.add_argument("--email", action="store_true")
    kind.add_argument("--phone", action="store_true")
    p = leaf(patient, "erase", cmd_patient_erase, "crypto-shred a patient (right to erasure)")
    p.add_argument("id")

    care = group("care", "care relationships")
    p = leaf(care, "add", cmd_care_add, "record that a practitioner cares for a patient")
    p.add_argument("--patient", required=True)
    p.add_argument("--practitioner", required=True)

    p = leaf(sub, "import", cmd_import, "import a practice's patients from CSV (name,email,phone,practitioners,locale,verified)")
    p.add_argument("file")
    p.add_argument("--practice", required=True)
    p.add_argument("--dry-run", action="store_true")

    thread = group("thread", "threads")
    p = leaf(thread, "open", cmd_thread_open, "open a thread; prints its id and reply address")
    p.add_argument("--patient", required=True)
    p.add_argument("--practitioner", required=True)
    p.add_argument("--subject", required=True)
    p = leaf(thread, "list", cmd_thread_list, "list threads")
    p.add_argument("--patient")
    p.add_argument("--practitioner")
    p = leaf(thread, "show", cmd_thread_show, "show a decrypted thread (the read is audited)")
    p.add_argument("id")

    message = group("message", "messages")
    p = leaf(message, "send", cmd_message_send, "post a message to a thread (its notice goes to the outbox)")
    p.add_argument("--thread", required=True)
    p.add_argument("--as", dest="as_", required=True, choices=("practitioner", "patient"))
    p.add_argument("--body-file", required=True)
    p.add_argument("--attach", action="append", metavar="FILE")

    keys = group("keys", "encryption keys")
    p = leaf(keys, "rotate", cmd_keys_rotate, "add a key-encryption key and re-wrap every data key (resumable)")
    p.add_argument("--batch", type=int, default=500, help=argparse.SUPPRESS)
    leaf(keys, "list", cmd_keys_list, "list key ids and how many data keys each wraps")
    p = leaf(keys, "retire", cmd_keys_retire, "drop a key from the key file once nothing is wrapped by it")
    p.add_argument("id")

    for extend in _EXTENSIONS:
        extend(sub, leaf, group)
    return parser


# Later areas (runtime, notices, portal, API) register their commands here.
_EXTENSIONS: list[Callable[[Any, Any, Any], None]] = []


def _load_extensions() -> None:
    import importlib

    for module in ("gateway.runtime", "gateway.workers.cli", "gateway.web.cli"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and module.startswith(exc.name):
                continue
            raise
        register = getattr(mod, "register_cli", None)
        if register is not None:
            _EXTENSIONS.append(register)


def main(argv: list[str] | None = None) -> int:
    _load_extensions()
    args = build_parser().parse_args(argv)
    try:
        result = args.handler(args)
    except (GatewayError, ValueError, LookupError) as exc:
        # Our errors carry fixed texts (never content), so they can be shown as they are.
        from gateway.crypto import DecryptionError

        if isinstance(exc, DecryptionError):
            print(f"gateway: error: {exc}", file=sys.stderr)
            return 1
        if not isinstance(exc, GatewayError):
            print(f"gateway: error: invalid input ({type(exc).__name__})", file=sys.stderr)
        else:
            print(f"gateway: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the edge: one line, no traceback that could quote data
        print(f"gateway: internal error ({type(exc).__name__}); nothing was changed", file=sys.stderr)
        return 1
    if result is not None:
        print(json.dumps(result, ensure_ascii=False, default=str))
    return int(getattr(args, "exit_code", 0))


if __name__ == "__main__":
    sys.exit(main())
