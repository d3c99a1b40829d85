"""The notices the gateway sends: each kind's channels and the context fields it cannot do without."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, get_args

Channel = Literal["email", "sms"]
CHANNELS: Final[tuple[Channel, ...]] = get_args(Channel)
EMAIL: Final[frozenset[Channel]] = frozenset({"email"})
SMS: Final[frozenset[Channel]] = frozenset({"sms"})
BOTH: Final[frozenset[Channel]] = EMAIL | SMS


@dataclass(frozen=True, slots=True)
class NoticeKind:
    name: str
    channels: frozenset[Channel]
    # NoticeContext fields that must be set (not None) for this kind.
    needs: frozenset[str] = frozenset()


KINDS: Final[dict[str, NoticeKind]] = {
    kind.name: kind
    for kind in (
        # A message is waiting in the portal; the SMS form also carries the thread code.
        NoticeKind("new_message", BOTH, frozenset({"login_url"})),
        # RFC 3834 auto-reply to an inbound message: received, and whom to call in an emergency.
        NoticeKind("acknowledgement", BOTH),
        NoticeKind("login_link", BOTH, frozenset({"login_url"})),
        NoticeKind("verify_email", EMAIL, frozenset({"login_url"})),
        NoticeKind("verify_sms", SMS, frozenset({"code"})),
        NoticeKind("second_factor", BOTH, frozenset({"code"})),
        # An SMS we could not route is held for triage; email is the fallback after an opt-out.
        NoticeKind("held_sms", BOTH, frozenset({"login_url"})),
        NoticeKind("sms_help", SMS),
        NoticeKind("refused_sms", SMS),
        NoticeKind("practitioner_invite", EMAIL, frozenset({"login_url"})),
    )
}
