"""E-mail: an inbound SMTP listener (aiosmtpd) at ``TSUNAGI_SMTP_LISTEN`` and replies through
``TSUNAGI_SMTP_RELAY`` (aiosmtplib), as docs/contract.md says.

Inbound: the listener runs on the service's own event loop (started and stopped with the channel). It
accepts mail for ``TSUNAGI_MAIL_ADDRESS`` and its plus-addresses (``soudan+<token>@domain``; anything
else is 550), at most ``TSUNAGI_MAIL_MAX_BYTES`` (552 above it). Inside DATA the mail is parsed
(channels/email/parse.py) and what is needed of it (sender, ids, subject, the new text that triage reads,
the whole text for the counsellor, a count of attachments, never the attachments) stored in the inbox,
keyed on its Message-ID (or a hash of the raw mail); only then is it 250. If it cannot be stored the
answer is 451, so the sending server tries again. The inbox worker hands it to ``process``. The person
is the address of the conversation the mail continues (our Message-ID in In-Reply-To/References, or the
conversation's token in the plus-address), else the sender address, lower-cased; what a reply threads
to is kept with the contact.

Loops: mail no person wrote (Auto-Submitted, Precedence bulk/junk/list, X-Autoreply, a list, a
mailer-daemon or postmaster sender, an empty return path) is stored but never answered; a bounce that
carries one of our Message-IDs marks that delivery failed. Our own replies from the bot say
``Auto-Submitted: auto-replied`` so that other robots do not answer them.

Outbound: one mail per reply (the engine joins what the bot says to one mail), UTF-8, "Re: <their
subject>" (or 「ご相談について」), threaded to the person's last mail (In-Reply-To, References), with a
deterministic Message-ID per outbox row (a retry is the same mail) and ``Reply-To:
soudan+<conversation token>@domain``. With no relay configured the reply is deferred (it waits
in the outbox); connection errors and 4xx are retries, 5xx are permanent failures.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import unicodedata
from email.message import EmailMessage
from email.utils import formatdate
from typing import TYPE_CHECKING, Any, ClassVar

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session

from bot.content import key
from bot.images import file_item, item_from_json, item_to_json
from bot.models import Sender
from bot.types import FULL_TEXT_FACTOR, WHOLE_MAIL, Delivery, Inbound, Item, Kind, Outbound
from channels.base import Channel
from channels.email.parse import Mail, parse_mail
from channels.host import ChannelHost

if TYPE_CHECKING:
    from bot.config import Settings

log = logging.getLogger("tsunagi.email")

DEFAULT_SUBJECT = "ご相談について"
_OUR_ID = re.compile(rb"<tsunagi\.(\d+)\.([0-9a-f]{12})@")
_NUMBER = re.compile(r"(\d{1,2})\s*[.)]?")
_NUMBERED = re.compile(r"(\d{1,2})\s*[.)]?\s*(.*)")
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CONVERSATION_TOKEN = re.compile(r"^([0-9a-f]{32})([0-9a-f]{8})$")


def pick_choice(labels: list[str], text: str) -> tuple[str, bool]:
    """Which of our numbered choices a reply picks, and whether the reply is only its number.

    A reply that is only a number ("1", "２.") picks that choice and says nothing else: it stands for the
    choice. A line of the reply that is a number, a number with its choice ("1. はい") or the choice
    itself ("はい") picks it too, and then what they wrote stays their message (stored, triaged). Lines
    that pick different choices pick none. ("", False) when nothing is picked."""
    if not labels:
        return "", False
    keys = [key(label) for label in labels]

    def picked(line: str) -> str:
        line = unicodedata.normalize("NFKC", line).strip()
        m = _NUMBERED.fullmatch(line)
        if m:
            n, rest = int(m.group(1)), m.group(2).strip()
            if 1 <= n <= len(labels) and (not rest or key(rest) == keys[n - 1]):
                return labels[n - 1]
            return ""
        k = key(line)
        return labels[keys.index(k)] if k and k in keys else ""

    if _NUMBER.fullmatch(unicodedata.normalize("NFKC", text).strip()):
        label = picked(text)
        return label, bool(label)
    found = {p for p in (picked(line) for line in text.splitlines()) if p}
    return (found.pop(), False) if len(found) == 1 else ("", False)


def host_port(value: str, default_port: int) -> tuple[str, int]:
    host, sep, port = value.strip().rpartition(":")
    if not sep:
        return value.strip(), default_port
    return host.strip("[]") or "127.0.0.1", int(port)


class _Handler:
    """aiosmtpd's hooks: recipients checked at RCPT, the mail stored inside DATA."""

    def __init__(self, channel: EmailChannel) -> None:
        self.channel = channel

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if not self.channel.accepts(address):
            return "550 5.1.1 No such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        if raw is None:
            return "554 5.6.0 No message"
        try:
            mail = parse_mail(raw, envelope.mail_from)
        except Exception as e:
            log.warning("an inbound mail could not be read: %s", type(e).__name__)
            return "554 5.6.0 The message could not be read"
        try:
            key, payload = await self.channel.payload_of(mail, envelope.rcpt_tos)
            await self.channel.store_events([(key, payload)])
        except Exception as e:
            log.warning("an inbound mail could not be stored: %s", type(e).__name__)
            return "451 4.3.0 Could not store the message, try again later"
        return "250 2.0.0 OK: stored"


class EmailChannel(Channel):
    name: ClassVar[str] = "email"
    buttons: ClassVar[bool] = False  # quick replies become numbered lines
    joins_replies: ClassVar[bool] = True  # one mail answers one mail

    def __init__(self, host: ChannelHost) -> None:
        super().__init__(host)
        self.settings = host.settings
        self.max_bytes = self.settings.mail_max_bytes
        local, _, domain = self.settings.mail_address.strip().partition("@")
        self.local = local.lower()
        self.domain = (domain or "localhost").lower()
        self._server: asyncio.Server | None = None

    @classmethod
    def enabled(cls, settings: Settings) -> bool:
        return bool(settings.smtp_listen.strip() or settings.smtp_relay.strip())

    # -- lifecycle -------------------------------------------------------------------------------------

    @property
    def port(self) -> int | None:
        """The port the listener is bound to (None when it is not running)."""
        if self._server is None or not self._server.sockets:
            return None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        listen = self.settings.smtp_listen.strip()
        if not listen:
            return
        host, port = host_port(listen, 25)
        handler = _Handler(self)
        loop = asyncio.get_running_loop()

        def factory() -> SMTP:
            return SMTP(
                handler,
                data_size_limit=self.max_bytes,
                enable_SMTPUTF8=True,
                hostname=self.domain,
                ident="tsunagi",
                timeout=120,
            )

        try:
            self._server = await loop.create_server(factory, host=host, port=port)
        except OSError as e:
            # The rest of the service (web chat, console) still runs; a real MX keeps the mail and retries.
            log.error("the SMTP listener could not bind %s: %s", listen, e)
            return
        log.info("SMTP listener on %s:%s for %s", host, self.port, self.settings.mail_address)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            try:
                await asyncio.wait_for(server.wait_closed(), timeout=5)
            except TimeoutError:
                log.warning("SMTP sessions still open at stop")

    def reachable(self, contact_id: str) -> bool:
        """Without a relay nothing can be sent: the outbox keeps the mail for later, not in a loop."""
        return bool(self.settings.smtp_relay.strip())

    # -- addresses -------------------------------------------------------------------------------------

    def _tag(self, purpose: str, value: str, length: int) -> str:
        key = self.settings.resolved_secret_key.encode()
        return hmac.new(key, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()[:length]

    def token(self, conversation_id: str) -> str:
        """The conversation's token in the Reply-To plus-address: its id and a tag made with the secret
        key, so that only the tokens we gave out are taken."""
        return conversation_id + self._tag("mailtoken", conversation_id, 8)

    def reply_to(self, conversation_id: str) -> str:
        return f"{self.local}+{self.token(conversation_id)}@{self.domain}"

    def conversation_of_token(self, address: str) -> str | None:
        """The conversation a recipient's plus-address names (None when it names none of ours)."""
        local = address.strip().strip("<>").rpartition("@")[0].lower()
        m = _CONVERSATION_TOKEN.match(local.partition("+")[2])
        if not m or not hmac.compare_digest(m.group(2), self._tag("mailtoken", m.group(1), 8)):
            return None
        return m.group(1)

    def accepts(self, address: str) -> bool:
        local, at, domain = address.strip().strip("<>").rpartition("@")
        if not at or domain.lower() != self.domain:
            return False
        local = local.lower()
        if local == self.local:
            return True
        base, plus, token = local.partition("+")
        return bool(plus) and base == self.local and bool(_TOKEN.match(token))

    # -- inbound ---------------------------------------------------------------------------------------

    async def payload_of(self, mail: Mail, recipients: list[str]) -> tuple[str, str]:
        """What the inbox keeps of a mail (encrypted like messages): the whole text only as the counsellor
        may read it, and of its files only the pictures, decoded and re-encoded (bot/images.py), and the
        names, sizes and kinds of the rest; never the files as they came."""
        items = [] if mail.automatic else await asyncio.to_thread(_items, mail)
        bounced = sorted({int(m.group(1)) for m in _OUR_ID.finditer(mail.scanned) if self._ours(m)})
        thread = "" if mail.automatic else await self.thread_of(mail, recipients)
        payload = {
            "key": mail.key,
            "from": mail.sender,
            "thread": thread,
            "message_id": mail.message_id,
            "subject": mail.subject,
            "references": trim_references(mail.references, 20),
            "text": mail.text,
            "full": mail.full[: self.settings.max_message_chars * FULL_TEXT_FACTOR],
            "attachments": mail.attachments,
            "items": [item_to_json(i) for i in items],
            "whole": mail.whole,
            "automatic": mail.automatic,
            "bounced": bounced,
        }
        return mail.key, json.dumps(payload, ensure_ascii=False)

    async def thread_of(self, mail: Mail, recipients: list[str]) -> str:
        """Whose conversation a mail continues: the person our mail it answers went to (In-Reply-To or
        References naming one of our Message-IDs), else the person of the conversation its plus-address
        names, else its sender. So a reply from another of their addresses stays in its thread (and our
        answer goes where the conversation's mail goes)."""
        outbox_ids = [int(m.group(1)) for ref in reversed(mail.references) if (m := self._our_id(ref))][:5]
        tokens = [c for r in recipients if (c := self.conversation_of_token(r))][:5]
        if not outbox_ids and not tokens:
            return mail.sender
        # Our Message-IDs first, then the plus-address.
        address = await self.host.address_in_thread(self.name, outbox_ids=outbox_ids, conversation_ids=tokens)
        if not address:
            return mail.sender
        if address != mail.sender:
            log.info("a mail from another address continues its conversation's thread")
        return address

    def _our_id(self, value: str) -> re.Match[bytes] | None:
        m = _OUR_ID.match(value.strip().encode("utf-8", "replace"))
        return m if m and self._ours(m) else None

    def message_id(self, outbox_id: int) -> str:
        sig = hmac.new(
            self.settings.resolved_secret_key.encode(), f"msgid:{outbox_id}".encode(), hashlib.sha256
        ).hexdigest()[:12]
        return f"<tsunagi.{outbox_id}.{sig}@{self.domain}>"

    def _ours(self, m: re.Match[bytes]) -> bool:
        return self.message_id(int(m.group(1))).encode().startswith(m.group(0))

    async def process(self, payload: str) -> None:
        data: dict[str, Any] = json.loads(payload)
        if data.get("automatic"):
            bounced = [int(x) for x in data.get("bounced", [])]
            for outbox_id in bounced:
                await self._bounced(outbox_id)
            # One line, without the address or the text: that it came, and what became of it.
            log.info(
                "an automatic mail (auto-reply, list or bounce) was not answered; %d of ours bounced",
                len(bounced),
            )
            return  # never answer a robot
        sender = str(data.get("thread") or data.get("from") or "")
        if not sender:
            return
        ident = str(data.get("key") or "sha:" + hashlib.sha256(payload.encode()).hexdigest()[:40])
        text = new = str(data.get("text", ""))
        subject = str(data.get("subject", ""))
        if not data.get("references") and subject == _bare_subject(subject) and subject != DEFAULT_SUBJECT:
            # A new mail (not a reply): what its subject says is part of what they wrote ("死にたい" as the
            # subject of a first mail must be read).
            if subject and subject not in text:
                text = f"{subject}\n{text}" if text else subject
        if "items" in data:
            items = tuple(item_from_json(i) for i in data["items"])
        else:  # stored before pictures were kept: files counted only
            items = tuple(Item("file", refused="other") for _ in range(int(data.get("attachments", 0))))
        attachments = sum(1 for i in items if i.refused)
        full = str(data.get("full", ""))
        whole = bool(data.get("whole"))
        if whole:
            log.info("a mail had no new text once its quotes were out: the whole mail is kept and shown")
        # What our answer threads to (kept with the contact, as long as the conversation's data).
        last_mail = json.dumps(
            {k: data.get(k) for k in ("message_id", "references", "subject")}, ensure_ascii=False
        )
        if text:
            # A choice answered in the mail: the whole new text is one (kind CHOICE), or a line of it is
            label, only_choice = pick_choice(await self._choices(sender), new)
            inbound = Inbound(
                channel=self.name,
                user_id=sender,
                text=label if only_choice else text,
                kind=Kind.CHOICE if only_choice else Kind.TEXT,
                external_id=ident,
                full_text=full if full.strip() != new.strip() else "",
                attachments=attachments,
                items=items,
                contact_state=last_mail,
                flags=(WHOLE_MAIL,) if whole else (),
                choice="" if only_choice else label,
            )
        elif items:
            # Only files: pictures are kept for the counsellor, the rest is refused (the person is told).
            inbound = Inbound(
                channel=self.name,
                user_id=sender,
                kind=Kind.MEDIA,
                external_id=ident,
                full_text=full,
                attachments=attachments,
                items=items,
                contact_state=last_mail,
            )
        else:
            # A mail with an empty body: its subject is the whole of it (said so to the counsellor).
            log.info("a mail had an empty body: its subject is kept as the whole mail")
            inbound = Inbound(
                channel=self.name,
                user_id=sender,
                text=_bare_subject(subject) or " ",
                external_id=ident,
                contact_state=last_mail,
                flags=(WHOLE_MAIL,),
            )
        await self.receive(inbound)

    async def _choices(self, address: str) -> list[str]:
        """The choices of our last message to this person (sent as numbered lines)."""
        return await self.host.last_choices(self.name, address)

    async def _bounced(self, outbox_id: int) -> None:
        await self.host.bounced(self.name, outbox_id)

    # -- outbound --------------------------------------------------------------------------------------

    async def build(self, out: Outbound) -> EmailMessage:
        last = _thread_of(out.contact_state)
        msg = EmailMessage()
        msg["From"] = self.settings.mail_address
        msg["To"] = out.address
        subject = _bare_subject(str(last.get("subject", ""))) if last else ""
        msg["Subject"] = f"Re: {subject}" if subject else DEFAULT_SUBJECT
        msg["Date"] = formatdate(localtime=False, usegmt=True)
        msg["Message-ID"] = self.message_id(out.outbox_id)
        msg["Reply-To"] = self.reply_to(out.conversation_id)
        if last and last.get("message_id"):
            refs = [str(r) for r in last.get("references", [])]
            refs.append(str(last["message_id"]))
            msg["In-Reply-To"] = str(last["message_id"])
            msg["References"] = " ".join(trim_references(refs, 10))
        if out.sender is Sender.BOT:
            msg["Auto-Submitted"] = "auto-replied"  # RFC 3834: other robots must not answer it
        msg.set_content(out.text, charset="utf-8")
        return msg

    async def send(self, out: Outbound) -> Delivery:
        relay = self.settings.smtp_relay.strip()
        if not relay:
            return Delivery.deferred("no relay configured")
        if "@" not in out.address:
            return Delivery.failed("not a mail address")
        host, port = host_port(relay, 25)
        msg = await self.build(out)
        try:
            await aiosmtplib.send(
                msg,
                sender=self.settings.mail_address,
                recipients=[out.address],
                hostname=host,
                port=port,
                username=self.settings.smtp_username or None,
                password=self.settings.smtp_password or None,
                start_tls=self.settings.smtp_starttls,
                cert_bundle=self.settings.smtp_ca_file or None,
                local_hostname=self.domain,
                timeout=self.settings.smtp_timeout,
            )
        except aiosmtplib.SMTPAuthenticationError as e:  # a configuration error: it may be fixed
            return Delivery.retry(f"authentication failed ({e.code})")
        except aiosmtplib.SMTPRecipientsRefused as e:
            codes = [r.code for r in e.recipients]
            reason = f"recipient refused ({', '.join(map(str, codes))})"
            return (
                Delivery.failed(reason) if codes and all(c >= 500 for c in codes) else Delivery.retry(reason)
            )
        except aiosmtplib.SMTPResponseException as e:
            reason = f"{type(e).__name__} {e.code}: {e.message[:200]}"
            return Delivery.failed(reason) if e.code >= 500 else Delivery.retry(reason)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
            return Delivery.retry(type(e).__name__)
        return Delivery.delivered()


MAX_PICTURES = 10  # pictures kept of one mail; more are refused like other files


def _items(mail: Mail) -> list[Item]:
    """The mail's files as the counsellor will see them (CPU work: run in a thread)."""
    out: list[Item] = []
    for f in mail.files:
        item = file_item(f.name, f.content_type, f.data)
        if item.picture is not None and len([i for i in out if i.picture is not None]) >= MAX_PICTURES:
            item = Item("file", name=f.name, size=len(f.data), refused="other")
        out.append(item)
    return out


def trim_references(refs: list[str], limit: int) -> list[str]:
    """At most ``limit`` Message-IDs of a thread, keeping its first one (the thread's root) and the most
    recent ones, as RFC 5322 section 3.6.4 asks of a References field that has to be trimmed."""
    if len(refs) <= limit:
        return list(refs)
    return [refs[0], *refs[len(refs) - (limit - 1) :]]


def _bare_subject(subject: str) -> str:
    """The subject without its "Re:" / "Fwd:" / "返信:" prefixes."""
    s = subject.strip()
    while True:
        m = re.match(r"^(re|fw|fwd|aw|返信|転送)\s*(\[\d+\])?\s*[:：]\s*", s, re.I)
        if not m:
            return s
        s = s[m.end() :]


def _thread_of(state: str) -> dict[str, Any] | None:
    """The person's last mail as kept with the contact ({"message_id", "references", "subject"})."""
    try:
        data = json.loads(state) if state else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
