"""The project's own message types: what channels hand to the engine and get back to send.
No vendor payload crosses into the engine (see docs/style.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from bot.models import Sender, utcnow

# Marks on an inbound message for the counsellor (Message.flags).
WHOLE_MAIL = "whole_mail"  # no new text could be told from the quoted: the whole mail is the text
EDITED = "edited"  # a new version of a message the person edited (stored beside the first)
WITHDRAWN = "withdrawn"  # the person took it back (LINE's unsend): its text and pictures are gone
ALBUM = "album"  # one picture of several sent together (answered once)

# Why a message to a person failed without being tried (Outbox.last_error; the console says it in words).
QUICK_EXIT_REASON = "cancelled: the person left with the quick exit"
BLOCKED_REASON = "cancelled: the person blocked or left"

FULL_TEXT_FACTOR = 20  # the whole of a mail is kept up to this many times the longest message


class Kind(StrEnum):
    TEXT = "text"  # something the person wrote
    CHOICE = "choice"  # a button or quick reply they pressed (its label as text)
    MEDIA = "media"  # image, video, audio, file, sticker, location: text triage cannot read it
    FOLLOW = "follow"  # they opened the chat or added the account: greet them
    UNFOLLOW = "unfollow"  # they blocked or left: close, send nothing more


@dataclass(frozen=True)
class Picture:
    """An image as it is kept: decoded and re-encoded (bot/images.py), nothing else of the file."""

    content_type: str  # image/jpeg or image/png
    width: int
    height: int
    data: bytes


@dataclass(frozen=True)
class Item:
    """What came when it was not text, as the counsellor is shown it (never read by triage)."""

    kind: str  # image, video, audio, file, sticker, location, or the platform's own name for the type
    name: str = ""  # a file's name
    size: int = 0  # a file's size in bytes (0 when not known)
    keywords: tuple[str, ...] = ()  # a sticker's keywords
    title: str = ""  # a place's name
    address: str = ""  # a place's address
    # A file that was not kept, by what it is (pdf, archive, program, document, video, audio, other,
    # broken_image: an "image" that does not decode); "" when nothing was refused. The person is told.
    refused: str = ""
    picture: Picture | None = None  # an image that could be read: the counsellor sees it

    def shown(self) -> dict[str, object]:
        """What is stored (encrypted) for the console: everything but the picture's bytes."""
        out: dict[str, object] = {"kind": self.kind}
        for key in ("name", "title", "address"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.size:
            out["size"] = self.size
        if self.keywords:
            out["keywords"] = list(self.keywords)
        if self.refused:
            out["refused"] = self.refused
        if self.picture is not None:
            out["picture"] = True
        return out


@dataclass(frozen=True)
class Inbound:
    channel: str
    user_id: str  # the platform's id for the person; hashed for look-up and encrypted at rest
    text: str = ""
    kind: Kind = Kind.TEXT
    external_id: str | None = None  # the platform's message or event id: the same id is handled once
    at: datetime = field(default_factory=utcnow)
    # What the counsellor sees when it is more than ``text`` (a mail with its quoted thread and
    # signature; triage reads only ``text``, the new part). "" when it is the same.
    full_text: str = ""
    attachments: int = 0  # files sent with it that were not kept (the person is told)
    # The channel's own state for this person, kept with the contact (see Contact.state_enc); "" keeps
    # what is there.
    contact_state: str = ""
    flags: tuple[str, ...] = ()  # marks for the counsellor (WHOLE_MAIL ...), stored with the message
    items: tuple[Item, ...] = ()  # pictures, stickers, places, files that came with it
    quiet: bool = False  # stored and shown, nothing said (the second picture of an album onwards)
    # A choice the channel saw picked inside a longer text (a line of a mail that is one of our numbered
    # choices): the answer, while ``text`` keeps all they wrote (stored and triaged).
    choice: str = ""


@dataclass(frozen=True)
class Outbound:
    outbox_id: int
    message_id: int
    conversation_id: str
    contact_id: str
    channel: str
    address: str  # the platform id to send to (decrypted only for the send)
    text: str
    quick_replies: tuple[str, ...]
    sender: Sender
    attempt: int
    progress: int = 0  # parts of a long text (split by the channel) delivered by earlier attempts
    contact_state: str = ""  # what the channel last kept for this person (Inbound.contact_state)
    gone: bool = False  # the person left the web chat with the quick exit: nothing can reach them there


class Outcome(StrEnum):
    DELIVERED = "delivered"
    DEFERRED = "deferred"  # the person is not reachable now (web chat closed): keep it for later
    RETRY = "retry"  # a temporary failure: try again with backoff
    FAILED = "failed"  # a permanent failure


@dataclass(frozen=True)
class Delivery:
    outcome: Outcome
    reason: str = ""  # the platform's error, never message text
    after: float = 0.0  # seconds the platform asked us to wait before trying again (429 retry_after)
    progress: int = 0  # parts of a split text delivered so far, in all: a retry starts after them

    @classmethod
    def delivered(cls) -> Delivery:
        return cls(Outcome.DELIVERED)

    @classmethod
    def deferred(cls, reason: str = "") -> Delivery:
        return cls(Outcome.DEFERRED, reason)

    @classmethod
    def retry(cls, reason: str, after: float = 0.0, progress: int = 0) -> Delivery:
        return cls(Outcome.RETRY, reason, max(0.0, after), max(0, progress))

    @classmethod
    def failed(cls, reason: str) -> Delivery:
        return cls(Outcome.FAILED, reason)


@dataclass
class Handled:
    """What the engine did with one ``Inbound`` (a channel's ``receive`` returns it)."""

    conversation_id: str
    duplicate: bool = False
    replies: int = 0
    contact_id: str = ""
