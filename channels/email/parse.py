"""Reading one inbound mail: Japanese charsets, the new text only, loops and bounces.

Everything here is pure (bytes in, ``Mail`` out), so it is tested without a server. The stdlib ``email``
package (``policy.default``) splits the MIME structure; text is decoded here, because Japanese mail often
lies about its charset: Windows writes "ISO-2022-JP" with NEC and IBM extensions (circled digits ①,
half-width kana), which the stdlib codecs refuse, so ISO-2022-JP falls back to cp932 through the JIS
codes (docs/reference.md), and Shift_JIS is read as its superset cp932.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from email import policy
from email.header import decode_header
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import getaddresses, parseaddr
from html.parser import HTMLParser

_ISO2022 = {"iso-2022-jp", "iso2022-jp", "iso2022_jp", "csiso2022jp", "iso-2022-jp-1", "iso-2022-jp-2"}
_SJIS = {
    "shift_jis",
    "shift-jis",
    "sjis",
    "x-sjis",
    "ms_kanji",
    "csshiftjis",
    "windows-31j",
    "cp932",
    "ms932",
}
_EUC = {"euc-jp", "euc_jp", "x-euc-jp", "eucjp", "cseucpkdfmtjapanese"}


# -- charsets -------------------------------------------------------------------------------------------


def _jis_to_sjis(j1: int, j2: int) -> bytes:
    s1 = ((j1 - 0x21) >> 1) + 0x81
    if s1 > 0x9F:
        s1 += 0x40
    if j1 & 1:
        s2 = j2 + 0x1F
        if s2 >= 0x7F:
            s2 += 1
    else:
        s2 = j2 + 0x7E
    return bytes((s1, s2))


def iso2022jp_as_cp932(data: bytes) -> str:
    """ISO-2022-JP as Windows writes it (CP50220/CP50221): each JIS X 0208 pair mapped to its Shift_JIS
    bytes and read as cp932, which has the NEC and IBM extensions; half-width kana (``ESC ( I`` or SO/SI)
    too."""
    out = bytearray()
    mode = "ascii"
    shifted = False
    i, n = 0, len(data)
    while i < n:
        b = data[i]
        if b == 0x1B and i + 2 < n:
            seq = data[i + 1 : i + 3]
            if seq in (b"$B", b"$@"):
                mode, i = "kanji", i + 3
                continue
            if seq in (b"(B", b"(J"):
                mode, i = "ascii", i + 3
                continue
            if seq == b"(I":
                mode, i = "kana", i + 3
                continue
            if data[i + 1 : i + 4] == b"$(D" or data[i + 1 : i + 4] == b"$(Q":
                mode, i = "kanji", i + 4
                continue
        if b == 0x0E:
            shifted, i = True, i + 1
            continue
        if b == 0x0F:
            shifted, i = False, i + 1
            continue
        if b in (0x0A, 0x0D):
            out.append(b)
            i += 1
            continue
        if shifted or mode == "kana":
            out.append(b | 0x80 if 0x21 <= b <= 0x5F else b)
            i += 1
        elif mode == "kanji" and i + 1 < n and 0x21 <= b <= 0x7E:
            out += _jis_to_sjis(b, data[i + 1])
            i += 2
        else:
            out.append(b)
            i += 1
    return out.decode("cp932", errors="replace")


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Text in the declared charset, with the fallbacks Japanese mail needs; never raises."""
    cs = (charset or "").strip().strip('"').lower()
    if cs in _ISO2022 or (not cs and b"\x1b$B" in data):
        try:
            return data.decode("iso2022_jp")
        except UnicodeDecodeError:
            return iso2022jp_as_cp932(data)
    if cs in _SJIS:
        return data.decode("cp932", errors="replace")
    if cs in _EUC:
        try:
            return data.decode("euc_jp")
        except UnicodeDecodeError:
            return data.decode("euc_jis_2004", errors="replace")
    if cs in ("", "us-ascii", "ascii", "unknown-8bit", "x-unknown"):
        cs = "utf-8"
    try:
        return data.decode(cs)
    except (LookupError, UnicodeDecodeError):
        pass
    for fallback in ("utf-8", "cp932", "euc_jp"):
        try:
            return data.decode(fallback)
        except UnicodeDecodeError:
            continue
    return data.decode("utf-8", errors="replace")


def decode_header_value(raw: str) -> str:
    """An encoded-word header (RFC 2047) decoded with the same fallbacks as bodies."""
    try:
        parts = decode_header(raw)
    except Exception:  # a broken encoded word: keep the raw text
        return " ".join(raw.split())
    out = []
    for value, charset in parts:
        if isinstance(value, bytes):
            out.append(decode_bytes(value, charset))
        else:
            out.append(value)
    return " ".join("".join(out).split()) if out else ""


# -- HTML -----------------------------------------------------------------------------------------------

_BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "hr"}


class _Text(HTMLParser):
    """Visible text of an HTML mail: no script or style, quoted mail (``<blockquote>``) left out."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "head", "blockquote"):
            self._skip += 1
        elif tag in _BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head", "blockquote"):
            self._skip = max(0, self._skip - 1)
        elif tag in _BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    p = _Text()
    p.feed(html)
    p.close()
    lines = [" ".join(line.split()) for line in "".join(p.parts).splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


# -- the new text only ----------------------------------------------------------------------------------

_QUOTE_HEADERS = [
    re.compile(
        r"^-{2,}\s*(Original Message|元のメッセージ|転送されたメッセージ|Forwarded message)\s*-{2,}", re.I
    ),
    re.compile(r"^On\s.+\swrote:\s*$", re.S),
    re.compile(r"^\d{4}\s*[年/\-]\s*\d{1,2}\s*[月/\-]\s*\d{1,2}.*[:：]\s*$", re.S),
    re.compile(r"^.+(のメッセージ|のメール|が書きました|wrote)\s*[:：]\s*$"),
    re.compile(r"^_{10,}\s*$"),
]
# The signature a phone's mail app adds ("iPhoneから送信", "Sent from my iPhone"): not what they wrote.
_SENT_FROM = re.compile(
    r"^((iPhone|iPad|Android|Galaxy|Xperia|AQUOS|Outlook for (iOS|Android)|Yahoo!メール|Gmail)"
    r"\s*(から|より)送信"
    r"|Sent from my (iPhone|iPad|Android|Galaxy|Samsung|phone|mobile).*|Get Outlook for (iOS|Android))\s*$",
    re.I,
)
_OUTLOOK_FROM = re.compile(r"^\s*(From|差出人|送信者)\s*[:：]")
_OUTLOOK_NEXT = re.compile(r"^\s*(Sent|Date|送信日時|日付|To|宛先)\s*[:：]")
# The fields of a quote header block ("From:", "Sent:", "件名:" ...) under "-----Original Message-----".
_HEADER_FIELD = re.compile(
    r"^\s*(From|Sent|Date|To|Cc|Subject|差出人|送信者|送信日時|日付|日時|宛先|件名|CC)\s*[:：]", re.I
)


def _quoted(bare: str) -> bool:
    return bare.startswith(">") or bare.startswith("＞")


def _header_at(lines: list[str], i: int) -> int:
    """How many lines the quote header starting at line ``i`` takes (0 when none starts there): an
    attribution ("On ... wrote:", also wrapped over two lines; "...さんが書きました:";
    "2026年11月25日(水) ...:"; "...のメール:"), a "-----Original Message-----" line with the header fields
    under it, or an Outlook "From:/Sent:" block."""
    bare = lines[i].strip()
    if any(rx.match(bare) for rx in _QUOTE_HEADERS):
        n = 1
        while i + n < len(lines) and _HEADER_FIELD.match(lines[i + n]):
            n += 1
        return n
    if (
        i + 1 < len(lines)
        and re.match(r"^On\s", bare)
        and _QUOTE_HEADERS[1].match(bare + " " + lines[i + 1].strip())
    ):
        return 2
    if _OUTLOOK_FROM.match(bare) and any(_OUTLOOK_NEXT.match(x) for x in lines[i + 1 : i + 4]):
        n = 1
        while i + n < len(lines) and _HEADER_FIELD.match(lines[i + n]):
            n += 1
        return n
    return 0


def strip_quoted(text: str) -> str:
    """What the person wrote this time, wherever they wrote it: above the quote, below it (Thunderbird's
    default), or between quoted lines (answering inline).

    Left out: quoted lines ("> ", "＞") wherever they are; a quote header ("On ... wrote:",
    "2026年11月25日(水) 10:00 山田 <x@example.jp>:", "-----Original Message-----", an Outlook "From:/Sent:"
    block) with the quoted lines under it; the phones' "Sent from" lines; a signature (from a "-- " line
    to the next quote). A quote header followed by lines that are not marked as quoted (Outlook's and most
    phones' top-posted replies) is the old mail down to the end: nothing marks where it would stop."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    kept: list[str] = []
    signature = False
    i = 0
    while i < len(lines):
        line = lines[i]
        bare = line.strip()
        if _quoted(bare):
            signature = False  # a quote after a signature: whatever follows it is theirs again
            i += 1
            continue
        header = _header_at(lines, i)
        if header:
            j = i + header
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j < len(lines) and _quoted(lines[j].strip()):
                i = j  # the quoted lines under it go; what follows them is kept
                continue
            break  # the old mail without quote marks: the rest of the body
        if line.rstrip() in ("-- ", "--"):
            signature = True
        elif not signature and not _SENT_FROM.match(bare):
            kept.append(line.rstrip())
        i += 1
    out = "\n".join(kept)
    return re.sub(r"\n{3,}", "\n\n", out).strip()


# -- the mail -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MailFile:
    """A file sent with a mail (decoration is not one): kept only if it is a picture (bot/images.py)."""

    name: str
    content_type: str
    data: bytes


@dataclass
class Mail:
    sender: str  # the From address, lower-cased ("" when there is none)
    message_id: str  # as written, with its angle brackets ("" when missing)
    subject: str
    text: str  # the new text only (the whole body when ``whole``)
    attachments: int  # files sent with it (decoration the HTML shows inline is not counted)
    whole: bool = False  # no new text could be told from the quoted: ``text`` is the whole body
    files: list[MailFile] = field(default_factory=list)  # the attachments, decoration left out
    full: str = ""  # the whole body as text (quoted thread and signature included), for the counsellor
    references: list[str] = field(default_factory=list)  # References, then In-Reply-To, oldest first
    automatic: bool = False  # an auto-reply, a list, a bounce: never answered
    bounce: bool = False
    raw_hash: str = ""
    scanned: bytes = b""  # a bounce's decoded parts, where the returned mail's Message-ID is looked for

    @property
    def key(self) -> str:
        """The inbox key: the Message-ID (hashed to fit), else a hash of the whole mail."""
        if self.message_id:
            return "mid:" + hashlib.sha256(self.message_id.encode("utf-8", "replace")).hexdigest()[:40]
        return "sha:" + self.raw_hash


def _part_text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    return decode_bytes(payload, part.get_content_charset())


_CID = re.compile(r"cid:([^\"'\s<>)]+)", re.I)


def _decoration(part: Message, cids: set[str]) -> bool:
    """An inline part the HTML shows by its Content-ID (a decomail picture, an emoji, a logo)."""
    if part.get_content_disposition() == "attachment":
        return False
    cid = _raw_header(part, "Content-ID").strip().strip("<>").lower()
    return bool(cid) and cid in cids


def _file(part: Message) -> MailFile:
    payload = part.get_payload(decode=True)
    name = part.get_filename() or ""
    return MailFile(
        name=decode_header_value(name) if name else "",
        content_type=part.get_content_type(),
        data=payload if isinstance(payload, bytes) else b"",
    )


def _raw_header(msg: Message, name: str) -> str:
    for k, v in msg.raw_items():
        if k.lower() == name.lower():
            return str(v)
    return ""


def _ids(value: str) -> list[str]:
    return re.findall(r"<[^<>\s]+>", value)


def is_automatic(msg: Message, sender: str, envelope_from: str | None) -> bool:
    """RFC 3834 and common practice: mail no person wrote, which must not be answered."""
    auto = _raw_header(msg, "Auto-Submitted").strip().lower()
    if auto and not auto.startswith("no"):
        return True
    if _raw_header(msg, "Precedence").strip().lower() in ("bulk", "junk", "list"):
        return True
    for name in ("X-Autoreply", "X-Autorespond", "X-Auto-Reply", "List-Id"):
        if _raw_header(msg, name):
            return True
    local = sender.partition("@")[0]
    if not sender or local in ("mailer-daemon", "postmaster"):
        return True
    if envelope_from is not None and envelope_from.strip() in ("", "<>"):
        return True
    return _raw_header(msg, "Return-Path").strip() == "<>"


def parse_mail(raw: bytes, envelope_from: str | None = None) -> Mail:
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(msg, EmailMessage)
    from_raw = decode_header_value(_raw_header(msg, "From"))
    pairs = getaddresses([from_raw]) if from_raw else []
    sender = (pairs[0][1] if pairs else parseaddr(from_raw)[1]).strip().lower()
    message_id = next(iter(_ids(_raw_header(msg, "Message-ID"))), "")
    references = _ids(_raw_header(msg, "References"))
    for mid in _ids(_raw_header(msg, "In-Reply-To")):
        if mid not in references:
            references.append(mid)
    subject = decode_header_value(_raw_header(msg, "Subject"))
    report = msg.get_content_type() == "multipart/report"
    cids: set[str] = set()  # the Content-IDs the HTML shows ("cid:...")

    plain: list[str] = []
    html: list[str] = []
    files: list[Message] = []
    scanned: list[bytes] = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        if report:
            decoded = part.get_payload(decode=True)
            if isinstance(decoded, bytes):
                scanned.append(decoded)
        ctype = part.get_content_type()
        if part.get_content_disposition() == "attachment" or not ctype.startswith("text/"):
            files.append(part)
            continue
        if ctype == "text/plain":
            plain.append(_part_text(part))
        elif ctype == "text/html":
            source = _part_text(part)
            html.append(html_to_text(source))
            cids.update(c.lower() for c in _CID.findall(source))
        else:
            files.append(part)  # text/calendar, text/csv... are files, not what they wrote
    # Decoration (decomail's pictures and emoji, a signature's logo): inline parts the HTML shows by their
    # Content-ID. They are the look of the mail, not files the person sent.
    sent = [_file(part) for part in files if not _decoration(part, cids)]
    body = "\n".join(plain) if plain else "\n".join(html)
    body = re.sub(r"\n{3,}", "\n\n", body.replace("\r\n", "\n").replace("\r", "\n")).strip()
    automatic = is_automatic(msg, sender, envelope_from)
    bounce = report or sender.partition("@")[0] in ("mailer-daemon", "postmaster")
    text = strip_quoted(body)
    # Nothing left once the quotes are out (a client that quotes everything, a mail that is all quote):
    # the whole mail is what there is to read, and the counsellor is told so.
    whole = not text and bool(body)
    return Mail(
        sender=sender,
        message_id=message_id,
        subject=subject,
        text=body if whole else text,
        whole=whole,
        full=body,
        attachments=0 if report else len(sent),
        files=[] if report else sent,
        references=references,
        automatic=automatic or report,
        bounce=bounce,
        raw_hash=hashlib.sha256(raw).hexdigest()[:40],
        scanned=raw + b"\n" + b"\n".join(scanned) if bounce else b"",
    )
