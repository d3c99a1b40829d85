"""Turn MIME text parts into readable Unicode: charset decoding that never fails, format=flowed, HTML to text.

Quote and signature stripping of plain text lives in `gateway.intake.quotes` (`strip_reply_text`,
re-exported here).

HTML is read with the standard library's tolerant parser (linear on hostile nesting, unlike a DOM
rebuild); with `drop_quotes` the quote/signature markup rules of `gateway.intake.quotes` are applied
while converting, so quoted history never reaches the text.
"""
from __future__ import annotations

import codecs
import re
from html.parser import HTMLParser
from typing import Final

from gateway.intake import quotes
from gateway.intake.quotes import strip_reply_text

__all__ = ["decode_bytes", "html_to_text", "printable", "repair_surrogates", "strip_reply_text", "unflow"]

_FALLBACKS: Final = ("utf-8", "cp1252", "latin-1")
# Labels mail clients write that Python does not know, mapped to the codec they mean.
_ALIASES: Final = {
    "ks_c_5601-1987": "cp949",
    "iso-8859-8-i": "iso-8859-8",
    "x-sjis": "shift_jis",
    "windows-874": "cp874",
    "x-mac-roman": "mac_roman",
    "unicode-1-1-utf-7": "utf-7",
}
# Labels that are often a lie: text declared in them is frequently UTF-8 in fact.
_SINGLE_BYTE_LABELS: Final = frozenset({"ascii", "latin-1", "iso8859-1", "cp1252", "iso8859-15"})


def _codec_name(declared: str | None) -> str | None:
    if not declared:
        return None
    label = declared.strip().strip("\"'").lower()
    label = _ALIASES.get(label, label)
    try:
        info = codecs.lookup(label)
    except (LookupError, ValueError, TypeError):
        return None
    name = info.name
    # Only real text encodings: `base64`, `rot13`, `*_escape`, `idna` are codecs too, not charsets.
    if not getattr(info, "_is_text_encoding", True) or "escape" in name or name in ("idna", "punycode"):
        return None
    return name


def decode_bytes(data: bytes, declared: str | None = None) -> str:
    """Decode text in its declared charset, else UTF-8, else Windows-1252, else Latin-1 (which cannot fail)."""
    name = _codec_name(declared)
    candidates: tuple[str, ...] = (name, *_FALLBACKS) if name else _FALLBACKS
    if name in _SINGLE_BYTE_LABELS and not data.isascii():
        # Valid UTF-8 under a Latin label is UTF-8 mislabelled; and "Latin-1" mail is Windows-1252 in
        # practice (as browsers assume), so its curly quotes and euro sign come out right.
        candidates = ("utf-8", "cp1252", name, "latin-1")
    for candidate in candidates:
        try:
            return data.decode(candidate)
        except (UnicodeDecodeError, LookupError, ValueError):
            continue
    return data.decode("latin-1")


_CONTROL: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """Drop control characters (a wrong charset's leftovers, NULs) but keep tabs and line breaks."""
    return _CONTROL.sub("", text)


def repair_surrogates(text: str) -> str:
    """Headers carrying raw 8-bit bytes come out of `email` as surrogate escapes; decode them properly."""
    if not any("\udc80" <= c <= "\udcff" for c in text):
        return text
    return decode_bytes(text.encode("utf-8", "surrogateescape"))


def unflow(text: str, *, delsp: bool = False) -> str:
    """Join RFC 3676 format=flowed soft line breaks, keeping quote depth as `> ` prefixes."""
    out: list[str] = []
    pending: str | None = None
    pending_depth = 0
    for raw in text.split("\n"):
        stripped = raw.lstrip(">")
        depth = len(raw) - len(stripped)
        if stripped.startswith(" "):
            stripped = stripped[1:]  # space-stuffing
        soft = stripped.endswith(" ") and stripped != "-- "
        if soft and delsp:
            stripped = stripped[:-1]
        if pending is not None and depth == pending_depth:
            pending += stripped
        else:
            if pending is not None:
                out.append(_with_depth(pending, pending_depth))
            pending, pending_depth = stripped, depth
        if not soft:
            out.append(_with_depth(pending, pending_depth))
            pending = None
    if pending is not None:
        out.append(_with_depth(pending, pending_depth))
    return "\n".join(out)


def _with_depth(line: str, depth: int) -> str:
    return ">" * depth + (" " if depth and line else "") + line


# --- HTML ----------------------------------------------------------------------------------------

_VOID: Final = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
                          "track", "wbr"})
_INVISIBLE: Final = frozenset({"script", "style", "title", "template", "noscript", "head", "xml", "svg",
                               "object", "iframe", "select", "option"})
_LINE_BLOCKS: Final = frozenset({"div", "tr", "table", "ul", "ol", "dl", "dt", "dd", "section", "article",
                                 "header", "footer", "main", "nav", "aside", "address", "figure",
                                 "figcaption", "details", "summary", "center", "form", "fieldset", "caption",
                                 "tbody", "thead", "tfoot", "body", "html", "legend"})
_PARAGRAPH_BLOCKS: Final = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre"})
_WS: Final = re.compile(r"[ \t\n\r\f\v\u200b\u2028\u2029]+")
_LINK_SCHEMES: Final = ("http://", "https://")


def _breaks(tag: str, attributes: dict[str, str]) -> int:
    """Line breaks before and after an element: 2 for a paragraph, 1 for a line-level block, else 0."""
    if tag in _PARAGRAPH_BLOCKS:
        # Outlook writes every line as a zero-margin MsoNormal paragraph: a line, not a paragraph.
        return 1 if "msonormal" in attributes.get("class", "").lower() else 2
    return 1 if tag in _LINE_BLOCKS or tag == "li" else 0


class _TextBuilder(HTMLParser):
    """Streams parser events into text; the stack of open elements tolerates unclosed and stray tags."""

    def __init__(self, *, drop_quotes: bool) -> None:
        super().__init__(convert_charrefs=True)
        self.drop_quotes = drop_quotes
        self.out: list[str] = []
        self.last_char = "\n"
        self.trailing_newlines = 0
        self.pending_newlines = 0
        self.started = False
        self.stack: list[tuple[str, bool, int]] = []  # (tag, hidden?, line breaks around it)
        self.open_counts: dict[str, int] = {}
        self.hidden = 0  # open elements whose content is not shown
        self.pre = 0
        self.done = False
        self.closing = False
        self.links: list[tuple[int, int, str]] = []  # (stack depth, output mark at start, href)
        self.tentative: list[tuple[int, int]] = []  # (stack depth, output mark at start)
        self.lists: list[list[int]] = []  # per open list: [counter, 1 if ordered else 0]

    # -- output ---------------------------------------------------------------------------------
    def _emit(self, text: str) -> None:
        if not text:
            return
        if self.started and self.pending_newlines > self.trailing_newlines:
            self._raw("\n" * (self.pending_newlines - self.trailing_newlines))
        self.pending_newlines = 0
        self.started = True
        self._raw(text)

    def _raw(self, text: str) -> None:
        self.out.append(text)
        stripped = text.rstrip("\n")
        if stripped:
            self.trailing_newlines = len(text) - len(stripped)
            self.last_char = stripped[-1]
        else:
            self.trailing_newlines += len(text)
            self.last_char = "\n"

    def _block(self, newlines: int) -> None:
        self.pending_newlines = max(self.pending_newlines, newlines)

    def _text_since(self, mark: int) -> str:
        return "".join(self.out[mark:])

    def _truncate(self, mark: int) -> None:
        del self.out[mark:]
        tail = "".join(self.out[-64:])
        stripped = tail.rstrip("\n")
        self.trailing_newlines = len(tail) - len(stripped)
        self.last_char = stripped[-1] if stripped else "\n"
        self.pending_newlines = 0

    def parse_marked_section(self, i: int, report: int = 1) -> int:
        try:
            return super().parse_marked_section(i, report)
        except AssertionError:  # Python < 3.13 asserts on unknown "<![keyword[" sections; skip the section
            end = self.rawdata.find(">", i + 3)
            return -1 if end < 0 else end + 1

    # -- parser events --------------------------------------------------------------------------
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.done:
            return
        if tag == "body":
            for unclosed in ("title", "head"):  # as browsers do: the body ends an unclosed head
                if self.open_counts.get(unclosed):
                    self.handle_endtag(unclosed)
        attributes = {name: value or "" for name, value in attrs}
        action = quotes.html_quote_action(tag, attributes) if self.drop_quotes and not self.hidden else "keep"
        if action == "cut":
            self.done = True
            return
        if tag in _VOID:
            self._void(tag, attributes)
            return
        hide = tag in _INVISIBLE or action == "skip"
        breaks = _breaks(tag, attributes)
        self.stack.append((tag, hide, breaks))
        self.open_counts[tag] = self.open_counts.get(tag, 0) + 1
        if hide:
            self.hidden += 1
            return
        if self.hidden:
            return
        if action == "tentative":
            self.tentative.append((len(self.stack), len(self.out)))
        self._open(tag, attributes, breaks)

    def _void(self, tag: str, attributes: dict[str, str]) -> None:
        if self.hidden:
            return
        if tag == "br":
            if self.started and self.pending_newlines > self.trailing_newlines:
                self._raw("\n" * (self.pending_newlines - self.trailing_newlines))
            self.pending_newlines = 0
            self.started = True
            self._raw("\n")
        elif tag == "hr":
            self._block(2)

    def _open(self, tag: str, attributes: dict[str, str], breaks: int) -> None:
        if tag == "pre":
            self.pre += 1
        self._block(breaks)
        if tag in ("ul", "ol"):
            self.lists.append([0, 1 if tag == "ol" else 0])
        elif tag == "li":
            marker = "- "
            if self.lists:
                self.lists[-1][0] += 1
                if self.lists[-1][1]:
                    marker = f"{self.lists[-1][0]}. "
            self._emit("  " * max(len(self.lists) - 1, 0) + marker)
        elif tag in ("td", "th"):
            if self.last_char not in " \t\n" and not self.pending_newlines:
                self._raw("\t")
        elif tag == "a":
            href = attributes.get("href", "").strip()
            if href.lower().startswith(_LINK_SCHEMES):
                self.links.append((len(self.stack), len(self.out), href))

    def handle_endtag(self, tag: str) -> None:
        if self.done or not self.open_counts.get(tag):
            return  # a stray end tag closes nothing
        while self.stack:
            open_tag, hide, breaks = self.stack.pop()
            self.open_counts[open_tag] -= 1
            depth = len(self.stack) + 1
            if hide:
                self.hidden -= 1
            elif not self.hidden:
                self._close(open_tag, depth, breaks)
                if self.done:
                    return
            if open_tag == tag:
                break

    def _close(self, tag: str, depth: int, breaks: int) -> None:
        if tag == "pre":
            self.pre -= 1
        self._block(breaks)
        if tag in ("ul", "ol") and self.lists:
            self.lists.pop()
        if self.links and self.links[-1][0] == depth:
            _, start, href = self.links.pop()
            label = self._text_since(start).strip()
            if label and href.rstrip("/") != label.rstrip("/") and not href.endswith(label):
                self._emit(f" <{href}>")
        if self.tentative and self.tentative[-1][0] == depth:
            _, start = self.tentative.pop()
            # An Outlook separator (a box with a top border) is only history if a header block follows.
            if quotes.starts_with_header_block(self._text_since(start)):
                self._truncate(start)
                self.done = True

    def handle_data(self, data: str) -> None:
        if self.done or self.hidden:
            return
        if self.closing and data.startswith("<"):
            return  # markup cut off by the end of input (an open comment or tag) is not text
        if self.pre:
            self._emit(data.replace("\r\n", "\n"))
            return
        text = _WS.sub(" ", data)
        if self.last_char in " \n" or self.pending_newlines:
            text = text.lstrip(" ")
        self._emit(text)

    def result(self) -> str:
        text = "".join(self.out).replace("\xa0", " ")
        lines = [line.rstrip() for line in text.split("\n")]
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


def html_to_text(html: str, *, drop_quotes: bool = False) -> str:
    """Readable text of an HTML body: no tags, no script/style, paragraphs and line breaks kept, links shown.

    With `drop_quotes`, quoted history (blockquotes, Gmail/Outlook/Apple/Thunderbird/Yahoo reply markup)
    and marked-up signatures are left out.
    """
    builder = _TextBuilder(drop_quotes=drop_quotes)
    try:
        builder.feed(html)
        builder.closing = True
        builder.close()
    except AssertionError:  # html.parser's last-resort checks on hostile markup: keep the text read so far
        pass
    return builder.result()
