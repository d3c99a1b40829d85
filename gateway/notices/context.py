"""What a notice may say: a context whose every field is validated so it cannot carry message content.

There is deliberately no field for a message body, subject, attachment name, patient or practitioner name,
or specialty (a specialty can reveal a condition). Errors name the field, never its value.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal, get_args

Locale = Literal["fr", "en"]
LOCALES: Final[tuple[Locale, ...]] = get_args(Locale)

PRACTICE_NAME_MAX = 80
EMERGENCY_NUMBERS_MAX = 40
DEFAULT_EMERGENCY_NUMBERS: Final = "15, 112, 114"

LOGIN_URL = re.compile(r"https?://[^\s]+/l/[A-Za-z0-9_-]{20,}")
THREAD_CODE = re.compile(r"[A-Z0-9]{2,6}")
ONE_TIME_CODE = re.compile(r"[0-9]{6}")
EMERGENCY_NUMBERS = re.compile(r"[0-9]+(?:,? [0-9]+|,[0-9]+)*")


@dataclass(frozen=True, slots=True, kw_only=True)
class NoticeContext:
    """Everything any notice template can show.

    practice_name: the practice's display name from the directory (it names who writes, not why).
    login_url: a single-use login link `<public url>/l/<token>`; the renderer checks the base.
    thread_code: the short code an SMS reply starts with to reach the thread.
    code: a 6-digit verification or second-factor code.
    emergency_numbers: whom to call instead, e.g. "15, 112, 114".
    """

    practice_name: str
    locale: Locale
    login_url: str | None = None
    thread_code: str | None = None
    code: str | None = None
    emergency_numbers: str = DEFAULT_EMERGENCY_NUMBERS

    def __post_init__(self) -> None:
        name = self.practice_name
        if not isinstance(name, str) or not 0 < len(name) <= PRACTICE_NAME_MAX or not name.isprintable():
            raise ValueError("practice_name must be 1 to 80 printable characters on one line")
        if self.locale not in LOCALES:
            raise ValueError("locale must be one of: " + ", ".join(LOCALES))
        if self.login_url is not None and not _matches(LOGIN_URL, self.login_url):
            raise ValueError("login_url must be a login link <public url>/l/<token>")
        if self.thread_code is not None and not _matches(THREAD_CODE, self.thread_code):
            raise ValueError("thread_code must be 2 to 6 upper-case letters or digits")
        if self.code is not None and not _matches(ONE_TIME_CODE, self.code):
            raise ValueError("code must be 6 digits")
        numbers = self.emergency_numbers
        if not _matches(EMERGENCY_NUMBERS, numbers) or len(numbers) > EMERGENCY_NUMBERS_MAX:
            raise ValueError("emergency_numbers must be digits, commas and spaces")


def _matches(pattern: re.Pattern[str], value: object) -> bool:
    return isinstance(value, str) and pattern.fullmatch(value) is not None
