"""One thread as either side of it sees it in the portal — the page (an audited read), a reply with attachments,
an attachment download — and the helpers the patient's and the practitioner's pages share.

A thread that is not the viewer's answers 404, exactly like one that does not exist.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import File, Request, UploadFile
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.audit import record
from gateway.crypto import DecryptionError
from gateway.db.keystore import Keystore
from gateway.db.tables import Attachment, Message, Thread, ThreadRead
from gateway.errors import Conflict, InvalidInput
from gateway.intake.attachments import AttachmentLimits, Refused, screen
from gateway.threads.service import (
    MAX_BODY,
    MAX_SUBJECT,
    NewAttachment,
    attachment_content,
    post_message,
    read_thread,
    subject_aad,
    thread_key,
)
from gateway.web import pages
from gateway.web.security import Viewer, Visit, finish, signed_in

LIMITS = AttachmentLimits()
MAX_FILES = 10

Files = Annotated[list[UploadFile], File()]


@dataclass(frozen=True)
class Side:
    """One side of a thread as the portal serves it."""

    party: Literal["patient", "practitioner"]  # the author of its messages and the reader it marks
    root: str  # where its pages live: "/portal" or "/portal/pro"
    template: str
    # The signed-in viewer of this side, or the answer to someone who is not (sign-in page, second factor).
    who: Callable[[Request, Session, Any], Viewer | Response]
    # The page's locale and the names its template shows besides the thread (called after the audited read).
    context: Callable[[ThreadVisit], dict[str, Any]]


@dataclass(frozen=True)
class ThreadVisit(Visit):
    """A signed-in viewer on one of their own threads."""

    thread: Thread
    side: Side


def own_thread(db: Session, viewer: Viewer, thread_id: str, side: Side) -> Thread | None:
    """The thread when it is this viewer's (as that side), else None."""
    thread = db.get(Thread, thread_id) if len(thread_id) <= 64 else None
    if thread is None:
        return None
    if side.party == "patient":
        mine = viewer.patient_id is not None and thread.patient_id == viewer.patient_id
    else:
        mine = viewer.practitioner_id is not None and thread.practitioner_id == viewer.practitioner_id
    return thread if mine else None


def on_own_thread(
    request: Request, side: Side, thread_id: str, act: Callable[[ThreadVisit], Response], *, csrf: str | None
) -> Response:
    """`act` on the signed-in viewer's own thread in one transaction; `csrf` is the form's token (None: a GET)."""

    def on_thread(visit: Visit) -> Response:
        thread = own_thread(visit.db, visit.viewer, thread_id, side)
        if thread is None:
            return pages.error_page(request, 404)
        return act(ThreadVisit(visit.request, visit.gw, visit.keys, visit.db, visit.viewer, thread, side))

    return signed_in(request, side.who, on_thread, csrf=csrf)


def thread_page(
    visit: ThreadVisit,
    *,
    status: int = 200,
    draft: str = "",
    refused: tuple[Refused, ...] = (),
    error: str | None = None,
) -> Response:
    view = read_thread(visit.db, visit.keys, visit.thread, actor=visit.viewer.actor)
    mark_read(visit.db, visit.thread.id, visit.side.party)
    return pages.render(
        visit.request,
        visit.gw,
        visit.side.template,
        status=status,
        viewer_kind=visit.side.party,
        thread=view,
        draft=draft,
        refused=refused,
        error=error,
        base=f"{visit.side.root}/threads/{visit.thread.id}",
        **visit.side.context(visit),
    )


def show(request: Request, side: Side, thread_id: str) -> Response:
    return on_own_thread(request, side, thread_id, thread_page, csrf=None)


def reply(request: Request, side: Side, thread_id: str, *, csrf: str, body: str, files: list[UploadFile]) -> Response:
    """Post the viewer's reply; refused files, an empty or too long text or a closed thread show the page
    again with the draft and nothing sent."""

    def post(visit: ThreadVisit) -> Response:
        db, thread = visit.db, visit.thread
        accepted, refused = read_uploads(files)
        if refused:
            return thread_page(visit, status=422, draft=body, refused=refused)
        try:
            check_text(None, body)
            message = post_message(
                db, visit.keys, thread, author=side.party, channel="portal", body=body, attachments=accepted
            )
        except (InvalidInput, Conflict) as exc:
            problem = "closed" if isinstance(exc, Conflict) else "empty"
            return thread_page(visit, status=422, draft=body, error=problem)
        record(db, visit.viewer.actor, "message.post", "message", message.id, thread=thread.id, channel="portal")
        target = f"{side.root}/threads/{thread.id}#m-{message.id}"
        return finish(request, RedirectResponse(target, status_code=303), visit.gw.settings)

    return on_own_thread(request, side, thread_id, post, csrf=csrf)


def download(request: Request, side: Side, thread_id: str, attachment_id: str) -> Response:
    def send(visit: ThreadVisit) -> Response:
        response = attachment_response(visit.db, visit.keys, visit.thread, attachment_id, actor=visit.viewer.actor)
        return response if response is not None else pages.error_page(request, 404)

    return on_own_thread(request, side, thread_id, send, csrf=None)


# --- helpers ---------------------------------------------------------------------------------------


def read_uploads(files: Iterable[UploadFile]) -> tuple[tuple[NewAttachment, ...], tuple[Refused, ...]]:
    """Uploaded files through the same allowlist and limits as email attachments; an empty file input is
    not a file. A file over the per-file limit is not read beyond it."""
    items: list[NewAttachment] = []
    refused: list[Refused] = []
    for upload in files:
        name = (upload.filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
        if not name:
            continue
        data = upload.file.read(LIMITS.per_file_bytes + 1)
        if len(data) > LIMITS.per_file_bytes:
            refused.append(Refused(name[:200], "size"))
            continue
        items.append(NewAttachment(name[:200], upload.content_type or "application/octet-stream", data))
    if len(items) + len(refused) > MAX_FILES:
        refused.extend(Refused(a.filename, "total") for a in items[MAX_FILES:])
        items = items[:MAX_FILES]
    accepted, screened_out = screen(items, LIMITS)
    return accepted, tuple(refused) + screened_out


def content_disposition(filename: str) -> str:
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\;' else "_" for c in filename) or "file"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def attachment_response(
    db: Session, keys: Keystore, thread: Thread, attachment_id: str, *, actor: str
) -> Response | None:
    """The attachment's bytes with its stored type, always as a download; None when it is not in `thread`."""
    attachment = db.get(Attachment, attachment_id)
    message = db.get(Message, attachment.message_id) if attachment is not None else None
    if attachment is None or message is None or message.thread_id != thread.id:
        return None
    try:
        name, data = attachment_content(db, keys, attachment, thread)
    except DecryptionError:
        return None
    record(db, actor, "attachment.read", "attachment", attachment.id, thread=thread.id)
    return Response(
        data,
        media_type=attachment.content_type,
        headers={"Content-Disposition": content_disposition(name), "Cache-Control": "no-store"},
    )


def mark_read(db: Session, thread_id: str, party: str) -> None:
    now = datetime.now(timezone.utc)
    row = db.get(ThreadRead, (thread_id, party))
    if row is not None:
        row.read_at = now
        return
    try:
        with db.begin_nested():
            db.add(ThreadRead(thread_id=thread_id, party=party, read_at=now))
    except IntegrityError:  # a concurrent first read of the same thread
        row = db.get(ThreadRead, (thread_id, party))
        if row is not None:
            row.read_at = now


def unread(db: Session, thread_ids: list[str], party: str) -> set[str]:
    """The threads with a message from the other side newer than this side's last read."""
    if not thread_ids:
        return set()
    other = "practitioner" if party == "patient" else "patient"
    latest = db.execute(
        select(Message.thread_id, func.max(Message.created_at))
        .where(Message.thread_id.in_(thread_ids), Message.author == other)
        .group_by(Message.thread_id)
    ).all()
    reads = dict(
        db.execute(
            select(ThreadRead.thread_id, ThreadRead.read_at).where(
                ThreadRead.thread_id.in_(thread_ids), ThreadRead.party == party
            )
        ).all()
    )
    return {tid for tid, at in latest if tid not in reads or _aware(at) > _aware(reads[tid])}


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def subject_of(db: Session, keys: Keystore, thread: Thread) -> str | None:
    try:
        return thread_key(db, keys, thread).open_text(thread.subject_ct, aad=subject_aad(thread.id))
    except DecryptionError:
        return None


def check_text(subject: str | None, body: str) -> None:
    if subject is not None and not " ".join(subject.split()):
        raise InvalidInput("subject is required")
    if subject is not None and len(subject) > MAX_SUBJECT:
        raise InvalidInput("subject is too long")
    if len(body) > MAX_BODY:
        raise InvalidInput("message body is too long")
