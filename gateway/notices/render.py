"""Render a notice kind and its context into its email (subject, text, HTML) and SMS forms."""
from __future__ import annotations

import functools
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from jinja2 import Environment, FileSystemLoader, StrictUndefined, Template, select_autoescape

from gateway.notices.context import NoticeContext
from gateway.notices.gsm7 import SINGLE_SEGMENT_SEPTETS, is_gsm7, septets, to_gsm7
from gateway.notices.kinds import KINDS
from gateway.resources import templates_dir

_TOKEN: Final = re.compile(r"[A-Za-z0-9_-]{20,}")
_ELLIPSIS: Final = "..."
# Below this many septets a shortened practice name says nothing; refuse rather than send "C...".
_MIN_NAME_SEPTETS: Final = 8


@dataclass(frozen=True, slots=True)
class RenderedNotice:
    """A notice ready for a sender; a form is None when the kind is not sent on that channel."""

    subject: str | None
    text: str | None
    html: str | None
    sms: str | None


def render(
    kind: str, ctx: NoticeContext, *, public_url: str, channels: Collection[str] | None = None
) -> RenderedNotice:
    """Render every form of `kind` that its channels call for (only those of them in `channels`, when
    given: the sender renders the forms its routes use).

    Raises ValueError (fixed texts) for an unknown kind, a missing context field, a login link that does
    not start with `public_url`, or an SMS form that is not GSM-7 or does not fit one segment.
    """
    spec = KINDS.get(kind)
    if spec is None:
        raise ValueError("unknown notice kind")
    missing = sorted(name for name in spec.needs if getattr(ctx, name) is None)
    if missing:
        raise ValueError(f"notice {kind} needs " + ", ".join(missing))
    base = _public_base(public_url)
    if ctx.login_url is not None:
        prefix = base + "/l/"
        if not ctx.login_url.startswith(prefix) or not _TOKEN.fullmatch(ctx.login_url[len(prefix):]):
            raise ValueError("login_url must be <public url>/l/<token>")

    values = {
        "practice_name": ctx.practice_name,
        "locale": ctx.locale,
        "login_url": ctx.login_url,
        "thread_code": ctx.thread_code,
        "code": ctx.code,
        "emergency_numbers": ctx.emergency_numbers,
        "public_url": base,
    }
    subject = text = html = sms = None
    if "email" in spec.channels and (channels is None or "email" in channels):
        subject = _template(kind, ctx.locale, "subject.txt").render(values).strip()
        if "\n" in subject or "\r" in subject:
            raise ValueError("notice subject must be one line")
        text = _template(kind, ctx.locale, "body.txt").render(values).rstrip() + "\n"
        html = _template(kind, ctx.locale, "body.html").render(values, subject=subject)
    if "sms" in spec.channels and (channels is None or "sms" in channels):
        sms = _fit_one_segment(_template(kind, ctx.locale, "sms.txt"), values)
    return RenderedNotice(subject=subject, text=text, html=html, sms=sms)


@functools.lru_cache(maxsize=256)
def _template(kind: str, locale: str, form: str) -> Template:
    # The environment keeps compiled templates too, but looking one up there costs a loader and cache
    # round per form and notice.
    return _environment().get_template(f"{kind}/{locale}/{form}")


@functools.lru_cache(maxsize=8)
def _public_base(public_url: str) -> str:
    # One value per process (a setting); parsed once.
    base = public_url.rstrip("/")
    parts = urlsplit(base)
    if (
        parts.scheme not in ("http", "https")
        or not parts.netloc
        or parts.query
        or parts.fragment
        or any(ch.isspace() for ch in base)
    ):
        raise ValueError("public_url must be an http(s) URL without query or fragment")
    return base


def _fit_one_segment(template: Template, values: dict[str, str | None]) -> str:
    # Templates are GSM-7 by construction; the practice name is spelled in GSM-7 and, when the whole
    # SMS would take a second segment, shortened: the link and codes are what the SMS is for.
    full_name = to_gsm7(values["practice_name"] or "")
    name = full_name
    for _ in range(3):
        sms = template.render(values, practice_name=name).strip()
        if not is_gsm7(sms):
            raise ValueError("sms notice is not GSM-7")
        over = septets(sms) - SINGLE_SEGMENT_SEPTETS
        if over <= 0:
            return sms
        name = _shorten(full_name, septets(name) - over)
    raise ValueError("sms notice does not fit one GSM-7 segment")


def _shorten(name: str, budget: int) -> str:
    if budget < _MIN_NAME_SEPTETS:
        raise ValueError("sms notice does not fit one GSM-7 segment")
    while name and septets(name) + len(_ELLIPSIS) > budget:
        name = name[:-1]
    return name.rstrip(" ,.;:-") + _ELLIPSIS


@functools.cache
def _environment() -> Environment:
    # One environment per process: each template is compiled on first use and kept (auto_reload off).
    return Environment(
        loader=FileSystemLoader(templates_dir() / "notices"),
        undefined=StrictUndefined,
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False, default=False),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        auto_reload=False,
    )
