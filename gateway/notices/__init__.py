"""Notices: a kind name plus a context that cannot carry content, rendered from templates.

Template layout (under `templates/notices/`, shipped in the wheel as `gateway/_templates/notices/`)::

    <kind>/<locale>/subject.txt   email subject, one line          (kinds sent by email)
    <kind>/<locale>/body.txt      email text part                  (kinds sent by email)
    <kind>/<locale>/body.html     email HTML part, autoescaped     (kinds sent by email)
    <kind>/<locale>/sms.txt       SMS, GSM-7, one segment          (kinds sent by SMS)
    _layout.html, _button.html, _footer.txt   shared by the email forms (a leading "_" is not a kind)

Kinds and their channels are listed in `gateway.notices.kinds.KINDS`; locales are `fr` and `en`.
Templates see only the `NoticeContext` fields plus `public_url` (and `subject` in HTML).
"""
from gateway.notices.context import LOCALES, Locale, NoticeContext
from gateway.notices.kinds import KINDS, Channel, NoticeKind
from gateway.notices.render import RenderedNotice, render
from gateway.resources import templates_dir

__all__ = [
    "KINDS",
    "LOCALES",
    "Channel",
    "Locale",
    "NoticeContext",
    "NoticeKind",
    "RenderedNotice",
    "render",
    "templates_dir",
]
