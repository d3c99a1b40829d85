"""Find quoted history and signatures in a reply, in plain text and in HTML markup.

The plain-text rules follow discourse/email_reply_trimmer (MIT): every line is classified (empty,
delimiter, signature, embedded-email marker, header, quote, text), then a few rules over the string of
classes decide what to keep. French and English Outlook/Gmail/Apple/Yahoo markers are added to its
lists, and the loosest signature rules are limited to short lines so a patient's sentence is not
mistaken for a phone footer.
"""
from __future__ import annotations

import re
from bisect import bisect_right
from typing import Final, Literal

EMPTY, DELIMITER, SIGNATURE, EMBEDDED, HEADER, QUOTE, TEXT = "e", "d", "s", "b", "h", "q", "t"

_BLANKS: Final = " \t\u00a0\u2000-\u200a\u202f\u3000"  # horizontal whitespace, for character classes
_LONGEST_MARKER_LINE: Final = 400  # longer lines are text: no marker is that long, and it bounds regex work

_DELIMITER: Final = re.compile(rf"[{_BLANKS}]*[-_,=+~#*ᐧ]+[{_BLANKS}]*")

# "On <date>, <someone> wrote:" in the languages we see, the "wrote" part possibly wrapped.
# (on, wrote, a word every match contains: text without it is left as it is, without a regex scan)
_ON_DATE_SOMEONE_WROTE: Final = [
    ("Op", r"het\s+volgende\s+geschreven", "geschreven"),
    ("On", r"wrote", "wrote"),
    ("Le", r"a\s+écrit", "écrit"),
    ("Il", r"ha\s+scritto", "scritto"),
    ("Dnia", r"napisał\(a\)", "napisał(a)"),
    ("Em", r"escreveu", "escreveu"),
    ("El", r"escribió", "escribió"),
    ("Am", r"schrieb", "schrieb"),
    ("Den", r"skrev", "skrev"),
]
_ON_DATE_SOMEONE_WROTE_RES: Final = [
    re.compile(rf"^([ \t>\-]*{on}\s(?:(?!{on}\s|{wrote}\s*:?)[\s\S])*{wrote}\s*:?[ \t\-]*)$", re.MULTILINE)
    for on, wrote, _ in _ON_DATE_SOMEONE_WROTE
]
_ON_DATE_SOMEONE_WROTE_WORDS: Final = [word for _, _, word in _ON_DATE_SOMEONE_WROTE]
_LINE_BREAKS: Final = re.compile(r"\n\s*")
# Other markers clients wrap: "Name <\naddress>:", "Name <address\n>:" and German Inbox's
# "X schrieb am Fr., 28.\nApr. ... Uhr:".
_WRAPPED_ADDRESS: Final = re.compile(
    r"(?:(?<=[ \t])|^)(<)[ \t]*\n(?=[^\s<>]+@)|(<[^\s<>]+@[^\s<>]+)[ \t]*\n(?=>[ \t]*:)", re.MULTILINE
)
_WRAPPED_SCHRIEB_AM: Final = re.compile(r"^([^\n]* schrieb am [^\n]*)\n([^\n]* Uhr:[ \t]*)$", re.MULTILINE)
_WROTE_VERBS: Final = (r"wrote|a\s+écrit|schrieb|skrev|escreveu|escribió|ha\s+scritto|schreef|napisał\(a\)"
                       r"|пише|написал|написала|kirjoitti|napsal|írta")

_SIGNATURE: Final = re.compile(
    "|".join(f"(?:{p})" for p in (
        rf"^[{_BLANKS}>]*從我的 iPhone 傳送",
        rf"^[{_BLANKS}>]*\w+ from mobile",
        rf"^[{_BLANKS}>]*[(<]*sent (?:from|via|with|by) .+",
        rf"^[{_BLANKS}>]*from my .{{1,20}}$",
        rf"^[{_BLANKS}>]*get \[?outlook for",
        rf"^[{_BLANKS}>]*(?:obtenir|obtenez|télécharger|téléchargez) \[?outlook pour",
        rf"^[{_BLANKS}>]*envoyé (?:de|depuis|avec|par|à partir de) .+",
        rf"^[{_BLANKS}>]*von meinem .+ gesendet",
        rf"^[{_BLANKS}>]*diese nachricht wurde von .+ gesendet",
        rf"^[{_BLANKS}>]*enviado desde mi .+",
        rf"^[{_BLANKS}>]*verzonden (?:met|vanaf|van) .+",
        rf"^[{_BLANKS}>]*(?:sendt fra min|skickat från min|lähetetty) .+",
    )),
    re.IGNORECASE,
)
_SIGNATURE_MAX_LINE: Final = 100

_EMBEDDED: Final = re.compile("|".join(f"(?:{p})" for p in (
    # "Op 10 dec. 2015 18:35 schreef X:", "Am 18.09.2013 um 16:24 schrieb X:"
    *(rf"^[ \t>]*{on}\s.+\s{wrote}\s[^:]+:" for on, wrote in (("Op", "schreef"), ("Am", "schrieb"), ("Den", "skrev"))),
    r".+пользователь.+написал:",
    r"^[ \t>]*(?:Am|Op)\s.+\s(?:schrieb|schreef)\s.*@",
    r"^[ \t>]*.+ schrieb am .+:\s*$",
    # "<date> <someone> <address> <wrote>:" in any word order we know, and "At <date>, you wrote:"
    rf"^[ \t>]*.*\d.*<[^<>@\s]+@[^<>\s]+>\s*(?:{_WROTE_VERBS})\s*:?\s*$",
    r"^[ \t>]*\S.*\d.*\bwrote:\s*$",
    r"^[ \t>]*20\d\d-\d\d-\d\d \d\d:\d\d GMT\+\d\d:\d\d [\w \t]+$",
    r"^[ \t>]*.*\d{4}.+<[^@<>]+@[^@<>.]+\.[^@<>]+>:?$",
    r"^[ \t>]*.+ via .+ (?:wrote|schrieb):?[ \t]*$",
    r"^[ \t>]*.+ <.+@.+\..+> wrote:?",
    r"(?i:^[ \t>]*Posted by .+ on \d{2}/\d{2}/\d{4}$)",
    r"(?i:^[ \t>]*Begin forwarded message:)",
    r"(?i:^[ \t>]*Début du message (?:réexpédié|transféré)\s*:)",
    r"(?i:^[ \t>]*Reply message)",
    r"(?i:^[ \t>*]*-{2,}[ \t]*(?:Forwarded|Original) Message[ \t]*-{2,})",
    r"(?i:^[ \t>*]*-{2,}[ \t]*(?:Message transféré|Message d'origine|Message original|Mail original"
    r"|Courriel original|Ursprüngliche Nachricht|Mensaje original)[ \t]*-{2,})",
)))


def _embedded_hint(line: str) -> bool:
    """Whether the line holds a literal that every _EMBEDDED alternative needs (it may hold one and match
    none). Most lines of a reply have none, and _EMBEDDED's nested ".*" backtrack on every line it is tried
    on. Substring tests, not a regex: an alternation with a case-insensitive branch cost 3 us a line."""
    if ":" in line or "@" in line or "--" in line or "GMT+" in line or " via " in line:
        return True
    folded = line.casefold()
    return "posted by" in folded or "reply message" in folded


_ON_DATE_SOMEONE_WROTE_LINE: Final = re.compile("|".join(f"(?:{r.pattern})" for r in _ON_DATE_SOMEONE_WROTE_RES))

_HEADER_DATE_NAMES: Final = ("Sendt", "Sent", "Date", "Envoyé", "Envoyé le", "Gesendet", "Enviada em",
                             "Enviado", "Fecha", "Data", "Skickat")
_HEADER_TEXT_NAMES: Final = ("Fra", "Til", "Emne", "From", "To", "Cc", "Reply-To", "Subject", "De", "À", "A",
                             "Répondre à", "Objet", "Von", "An", "Betreff", "Para", "Assunto", "Asunto", "Da",
                             "Risposta", "Oggetto", "Från", "Till", "Ämne")
# Not after ">": a header block inside a quote is part of the quote.
_HEADER: Final = re.compile(
    rf"^[{_BLANKS}*]*(?:(?:{'|'.join(_HEADER_DATE_NAMES)})[{_BLANKS}*]*:.*\d"
    rf"|(?:{'|'.join(_HEADER_TEXT_NAMES)})[{_BLANKS}*]*:.*\w)"
)
_QUOTE: Final = re.compile(r"^[ \t]*>")
_OTHER_QUOTE_MARK: Final = re.compile(r"^[ \t]*(?:[A-Z]{1,3}>|\|)(?=[ \t>]|$)", re.MULTILINE)
_BULLETS: Final = frozenset({"-", "*", "+", "•", "·", "o"})
_CODE_OPEN: Final = re.compile(r"^```")
_CODE_CLOSE: Final = re.compile(r"^ {0,3}```\s*$")


def _classify(line: str) -> str:
    if not line.strip():
        return EMPTY
    if len(line) > _LONGEST_MARKER_LINE:
        return QUOTE if _QUOTE.match(line) else TEXT
    if _DELIMITER.fullmatch(line):
        return DELIMITER
    if len(line) <= _SIGNATURE_MAX_LINE and _SIGNATURE.search(line):
        return SIGNATURE
    if (_embedded_hint(line) and _EMBEDDED.search(line)) or _ON_DATE_SOMEONE_WROTE_LINE.fullmatch(line):
        return EMBEDDED
    if _HEADER.search(line):
        return HEADER
    if _QUOTE.match(line):
        return QUOTE
    return TEXT


def _classify_all(lines: list[str]) -> str:
    classes = [_classify(line) for line in lines]
    # Lines inside a fenced code block are content, whatever they look like.
    closes = [j for j, line in enumerate(lines) if _CODE_CLOSE.match(line)]
    i = 0
    while i < len(lines):
        if _CODE_OPEN.match(lines[i]) and (k := bisect_right(closes, i)) < len(closes):
            end = closes[k]
            for j in range(i, end + 1):
                classes[j] = EMPTY if not lines[j].strip() else TEXT
            i = end
        i += 1
    # Backwards, so each line knows what follows it without rescanning (hostile input has many lines).
    after_footers: str | None = None  # first class after the run of empty/footer lines that follows
    after_empties: str | None = None  # first non-empty class that follows
    for i in range(len(lines) - 1, -1, -1):
        kind = classes[i]
        # A footer ("Sent from my iPhone") ends the new text: one followed by more text is the patient writing.
        if kind == SIGNATURE and after_footers == TEXT:
            kind = classes[i] = TEXT
        # A lone "-" or "*" followed by text is a list bullet (Gmail's plain text of a list), not a separator.
        elif kind == DELIMITER and after_empties == TEXT and lines[i].strip() in _BULLETS:
            kind = classes[i] = TEXT
        if kind not in (EMPTY, SIGNATURE):
            after_footers = kind
        if kind != EMPTY:
            after_empties = kind
    return "".join(classes)


def _drop(pattern: str, lines: list[str], kind: str) -> tuple[str, list[str]]:
    keep = [i for i, c in enumerate(pattern) if c != kind]
    return "".join(pattern[i] for i in keep), [lines[i] for i in keep]


def strip_reply_text(text: str, *, keep_signature: bool = False) -> str:
    """The new part of a plain-text reply: quoted history, forwarded/embedded mail and signatures removed.

    With `keep_signature`, only the quoted history goes. May return "" (a reply that is all quote);
    the caller decides what to show then.
    """
    return split_reply_text(text, keep_signature=keep_signature)[0]


def split_reply_text(text: str, *, keep_signature: bool = False) -> tuple[str, str]:
    """(the new part of a reply, what was removed from it): see `strip_reply_text`."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    if not text:
        return "", ""
    for marker, word in zip(_ON_DATE_SOMEONE_WROTE_RES, _ON_DATE_SOMEONE_WROTE_WORDS):
        # Join a wrapped "On ... wrote:" onto one line so it classifies as one marker.
        if word in text:
            text = marker.sub(lambda m: _LINE_BREAKS.sub(" ", m.group(0)), text)
    # Each pattern needs a literal that most replies lack; checking for it first skips a scan of the whole text.
    if "<" in text and "@" in text:
        text = _WRAPPED_ADDRESS.sub(lambda m: (m.group(1) or m.group(2)) + " ", text)
    if " schrieb am " in text:
        text = _WRAPPED_SCHRIEB_AM.sub(r"\1 \2", text)
    # Quote marks other than ">" ("| ", Usenet's "Name> ") are written as ">" so one rule reads them all.
    text = _OTHER_QUOTE_MARK.sub(">", text)
    all_lines = lines = text.split("\n")
    pattern = _classify_all(lines)

    if keep_signature:
        pattern = _signature_as_text(pattern)
    else:
        if (cut := pattern.find(DELIMITER)) >= 0:
            pattern, lines = pattern[:cut], lines[:cut]
        pattern, lines = _drop(pattern, lines, SIGNATURE)

    # Nothing but markers and quotes: a forwarded chain with no reply of its own.
    if EMBEDDED in pattern and TEXT not in pattern:
        return "", text
    # The reply is below the quote (bottom-posting): keep what follows the quote.
    if re.fullmatch(r"b+e*q[eq]*t[te]*", pattern):
        start = pattern.index(TEXT)
        pattern, lines = pattern[start:], lines[start:]
    # A marker not followed by a quote (Outlook/Yahoo unquoted history), or followed by a big quote.
    for rule in (r"te*b[^q]*$", r"te*b[eqbh]*$"):
        if m := re.search(rule, pattern):
            pattern, lines = pattern[: m.start() + 1], lines[: m.start() + 1]
    pattern, lines = _drop(pattern, lines, EMBEDDED)

    # A header block wrapped over several lines counts as headers throughout.
    if m := re.search(r"h+[hte]+h+e", pattern):
        pattern = pattern[: m.start()] + HEADER * (m.end() - m.start()) + pattern[m.end():]
    if m := re.search(r"t[eq]*h{3,}", pattern):
        pattern, lines = pattern[: m.start() + 1], lines[: m.start() + 1]
    pattern, lines = _drop(pattern, lines, HEADER)

    if TEXT in pattern and (m := re.search(r"[eq]+$", pattern)):
        pattern, lines = pattern[: m.start()], lines[: m.start()]
    return "\n".join(lines).strip(), _elided(all_lines, lines)


def _elided(original: list[str], kept: list[str]) -> str:
    """The lines of `original` that are not in `kept` (an ordered subsequence of it)."""
    removed: list[str] = []
    k = 0
    for line in original:
        if k < len(kept) and line == kept[k]:
            k += 1
        else:
            removed.append(line)
    return "\n".join(removed).strip()


def _signature_as_text(pattern: str) -> str:
    """Signatures and their delimiter stay as text, except a delimiter that opens quoted history."""
    out = []
    for i, c in enumerate(pattern):
        if c == SIGNATURE:
            c = TEXT
        elif c == DELIMITER:
            rest = pattern[i + 1:].lstrip(EMPTY)
            c = DELIMITER if rest[:1] in (HEADER, EMBEDDED, QUOTE) else TEXT
        out.append(c)
    result = "".join(out)
    cut = result.find(DELIMITER)
    return result if cut < 0 else result[:cut] + EMBEDDED * (len(result) - cut)


_HEADER_BLOCK_START: Final = re.compile(
    r"\A\s*\**(?:From|De|Von|Van|Da|Fra|Från|Od|От|Sent|Envoyé|Date|Subject|Objet)\**\s*:", re.IGNORECASE
)


def starts_with_header_block(text: str) -> bool:
    """True when `text` opens with a From:/De : style header (the top of quoted history in Outlook)."""
    return bool(_HEADER_BLOCK_START.match(text))


# --- HTML markup rules ---------------------------------------------------------------------------

HtmlAction = Literal["keep", "skip", "cut", "tentative"]

# Where the history starts: drop this element and everything after it.
_CUT_IDS: Final = frozenset({"divrplyfwdmsg", "appendonsend", "stopspelling", "olk_src_body_section", "zwchr",
                             "mail-editor-reference-message-container"})
_CUT_CLASSES: Final = frozenset({"outlookmessageheader", "zmail_extra"})
# Drop the element and its content only.
_SKIP_CLASSES: Final = frozenset({"gmail_quote", "gmail_attr", "gmail_signature", "moz-cite-prefix",
                                  "moz-signature", "yahoo_quoted", "ms-outlook-mobile-signature",
                                  "protonmail_quote", "protonmail_signature_block"})
_SKIP_IDS: Final = frozenset({"signature", "ms-outlook-mobile-signature", "applemailsignature"})
_TOP_BORDER: Final = re.compile(r"border-top(?:-style)?\s*:[^;]*\bsolid\b", re.IGNORECASE)


def html_quote_action(tag: str, attrs: dict[str, str]) -> HtmlAction:
    """What the display body does with an HTML element: keep it, skip it, cut here, or cut if headers follow."""
    element_id = attrs.get("id", "").strip().lower()
    classes = set(attrs.get("class", "").lower().split())
    if element_id in _CUT_IDS or classes & _CUT_CLASSES:
        return "cut"
    if tag == "blockquote" or classes & _SKIP_CLASSES or element_id in _SKIP_IDS:
        return "skip"
    if "data-signatureblock" in attrs or "data-smartmail" in attrs:
        return "skip"
    if tag in ("div", "p", "td", "table") and _TOP_BORDER.search(attrs.get("style", "")):
        return "tentative"
    return "keep"
