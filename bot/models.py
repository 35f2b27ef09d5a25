"""The tables. Text a person wrote and platform ids are only ever stored encrypted (``*_enc``).

Times are timezone-aware UTC: ``UTCDateTime`` stores UTC and gives it back aware, on SQLite too
(which would otherwise return naive datetimes).
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from enum import IntEnum, StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _at(**kw: Any) -> Any:
    return Field(sa_type=UTCDateTime, **kw)


class State(StrEnum):
    NEW = "new"
    WELCOME = "welcome"
    LISTENING = "listening"
    OFFERED = "offered"
    WAITING = "waiting"
    WITH_COUNSELLOR = "with_counsellor"
    CLOSED = "closed"


class Direction(StrEnum):
    IN = "in"
    OUT = "out"


class Sender(StrEnum):
    USER = "user"
    BOT = "bot"
    COUNSELLOR = "counsellor"
    SYSTEM = "system"


class OutboxStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    # Not due: the person is not there to read it (a web chat closed); it goes when they come back.
    PARKED = "parked"
    DELIVERED = "delivered"
    FAILED = "failed"


# Outbox rows not yet out, in one of these states (one earlier in its conversation holds the later back).
UNSENT = (OutboxStatus.PENDING, OutboxStatus.SENDING, OutboxStatus.PARKED)


class Priority(IntEnum):
    """The order work is taken in, in the inbox and the outbox: a crisis first, then high, then the rest
    (within a conversation, always in order)."""

    CRISIS = 0
    HIGH = 1
    NORMAL = 2

    @classmethod
    def of(cls, risk: str) -> Priority:
        return {"crisis": cls.CRISIS, "high": cls.HIGH}.get(risk, cls.NORMAL)


class HandoffStatus(StrEnum):
    WAITING = "waiting"
    CLAIMED = "claimed"
    CLOSED = "closed"


class Role(StrEnum):
    COUNSELLOR = "counsellor"
    SUPERVISOR = "supervisor"
    ADMIN = "admin"


class Presence(StrEnum):
    """Whether a person is there to read a reply (Contact.presence)."""

    UNKNOWN = ""  # the channel cannot tell (e-mail), or nothing happened yet
    CONNECTED = "connected"  # the web chat page is open
    LEFT = "left"  # the page was closed or lost its connection: replies wait until it is back
    QUICK_EXIT = "quick_exit"  # すぐに閉じる: the page forgot its token, nothing can reach them there again
    BLOCKED = "blocked"  # LINE or Telegram: they blocked the account


class Contact(SQLModel, table=True):
    """A person on one channel, known by a keyed hash; the platform id is kept encrypted to reply."""

    __table_args__ = (sa.UniqueConstraint("channel", "lookup"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    channel: str = Field(max_length=32)
    lookup: str = Field(max_length=64)
    address_enc: str
    # What the channel keeps to answer this person well (e-mail: the mail a reply threads to), encrypted;
    # opaque to the engine, replaced by each message that brings one.
    state_enc: str = ""
    # The last conversation of this person that reached high or crisis (its id, risk and time, as JSON),
    # encrypted: someone who writes again within days starts at that risk (bot/engine.py).
    risk_enc: str = ""
    # Whether the person is there (``Presence``): connected, left or gone through the quick exit (web chat),
    # blocked (LINE, Telegram); "" when the channel cannot tell (e-mail). Shown to the counsellor.
    presence: str = Field(default="", max_length=16)
    presence_at: datetime | None = _at(default=None)
    # The age band they gave (or that they chose not to: age_asked with no band), so that a person who
    # comes back is not asked again (bot/storage/contacts.py carries it to and from their conversations).
    age_band: str = Field(default="", max_length=16)
    age_asked: bool = False
    created_at: datetime = _at(default_factory=utcnow)
    last_seen_at: datetime = _at(default_factory=utcnow)


class Conversation(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    contact_id: str | None = Field(default=None, foreign_key="contact.id", index=True, max_length=32)
    channel: str = Field(max_length=32)
    state: str = Field(default=State.NEW, max_length=20, index=True)
    risk: str = Field(default="low", max_length=10)
    categories: str = Field(default="", max_length=400)  # comma-separated Category values
    # What the bot is waiting for, if anything: an intake question, an erase confirmation, the survey.
    pending: str = Field(default="", max_length=32)
    consent_at: datetime | None = _at(default=None)
    age_band: str = Field(default="", max_length=16)
    prefecture: str = Field(default="", max_length=8)
    safe_now: str = Field(default="", max_length=16)
    survey_answer: str = Field(default="", max_length=32)
    outcome: str = Field(default="", max_length=32)
    referrals: str = Field(default="", max_length=400)  # ids of the referrals offered
    emergency: bool = False  # the crisis path was taken
    erased: bool = False  # the person asked to erase: no message is left, the contact follows
    out_of_hours: bool = False
    # Before consent, something of their trouble was said (not only a greeting).
    told: bool = False
    # The direct question (thinking of dying, of hurting themselves, in danger now?): the risk when it was
    # last asked ("" never) and its answer (yes, no, unsure, message: something else was written, none: no
    # reply before the idle time). See bot/dialogue.py.
    danger_asked: str = Field(default="", max_length=10)
    danger_answer: str = Field(default="", max_length=10)
    # The earlier conversation of a person who came back soon after one at high or crisis (no foreign key:
    # it may be purged first).
    previous_id: str = Field(default="", max_length=32)
    acked: bool = False  # what they told was acknowledged (the next replies do not say it again)
    age_asked: bool = False  # the age band was asked (the intake, or once after high risk skipped it)
    created_at: datetime = _at(default_factory=utcnow)
    updated_at: datetime = _at(default_factory=utcnow)
    last_user_at: datetime | None = _at(default=None)
    closed_at: datetime | None = _at(default=None, index=True)


class Message(SQLModel, table=True):
    __table_args__ = (sa.UniqueConstraint("channel", "external_id"),)
    id: int | None = Field(default=None, primary_key=True)
    conversation_id: str = Field(foreign_key="conversation.id", index=True, max_length=32)
    channel: str = Field(max_length=32)
    direction: str = Field(max_length=3)
    sender: str = Field(max_length=12)
    kind: str = Field(default="text", max_length=16)
    text_enc: str
    # Inbound mail: the whole mail as received (quoted thread, signature), when it differs from
    # ``text_enc`` (only the new text, which triage reads); encrypted like the text.
    full_enc: str = ""
    attachments: int = 0  # files that came with it and were not kept (counted only)
    # Platform message id (inbound) for idempotent ingest; null for our own messages.
    external_id: str | None = Field(default=None, max_length=128)
    risk: str = Field(default="", max_length=10)
    triage_enc: str = ""  # the triage result (its reasons quote the text), encrypted
    quick_replies: str = ""  # JSON list for outbound choices (labels are ours, not the user's)
    # Marks for the counsellor, comma-separated: whole_mail (no new text could be told from the quoted),
    # edited (a new version of an earlier message), withdrawn (the person took it back: its text is gone).
    flags: str = Field(default="", max_length=64)
    # What came when it was not text (a sticker's keywords, a place, a file's name and size): JSON,
    # encrypted like the text (a file name or an address says who someone is).
    meta_enc: str = ""
    withdrawn_at: datetime | None = _at(default=None)
    created_at: datetime = _at(default_factory=utcnow)


class Media(SQLModel, table=True):
    """A picture a person sent, as the counsellor sees it: decoded and re-encoded (no EXIF or GPS, never
    anything that is not a picture), encrypted at rest like text, gone with its message."""

    id: int | None = Field(default=None, primary_key=True)
    message_id: int = Field(foreign_key="message.id", index=True)
    conversation_id: str = Field(foreign_key="conversation.id", index=True, max_length=32)
    content_type: str = Field(max_length=32)  # image/jpeg or image/png, as re-encoded
    width: int
    height: int
    size: int  # bytes of the re-encoded picture
    data_enc: str  # the picture's bytes, encrypted (a Fernet token, rotated like the text)
    created_at: datetime = _at(default_factory=utcnow)


class Outbox(SQLModel, table=True):
    """Every outbound message is written here, in the same transaction as what caused it, before it is
    sent; the outbox worker sends it, retries with backoff and records the outcome."""

    __table_args__ = (sa.Index("ix_outbox_due", "channel", "status", "priority", "next_attempt_at"),)
    id: int | None = Field(default=None, primary_key=True)
    message_id: int = Field(foreign_key="message.id", index=True)
    conversation_id: str = Field(foreign_key="conversation.id", index=True, max_length=32)
    channel: str = Field(max_length=32)
    status: str = Field(default=OutboxStatus.PENDING, max_length=12, index=True)
    attempts: int = 0
    next_attempt_at: datetime = _at(default_factory=utcnow)
    lease_until: datetime | None = _at(default=None)
    last_error: str = Field(default="", max_length=500)
    # Parts of a text the channel split (Telegram's 4096-character limit) that earlier attempts delivered.
    progress: int = 0
    # ``Priority`` of the conversation's risk when the row was written: a crisis reply goes first.
    priority: int = Field(default=2)
    created_at: datetime = _at(default_factory=utcnow)
    delivered_at: datetime | None = _at(default=None)


class InboxStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"


class Inbox(SQLModel, table=True):
    """Platform events stored as they arrive (webhooks answer at once), processed by the inbox worker.
    The payload is the platform's own event, encrypted: it holds the person's words and id."""

    __table_args__ = (
        sa.UniqueConstraint("channel", "external_id"),
        sa.Index("ix_inbox_due", "status", "priority", "id"),
        sa.Index("ix_inbox_sender", "sender", "id"),
    )
    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(max_length=32)
    external_id: str = Field(max_length=128)  # the platform's event id: a redelivery is stored once
    payload_enc: str
    status: str = Field(default=InboxStatus.PENDING, max_length=12, index=True)
    attempts: int = 0
    lease_until: datetime | None = _at(default=None)
    last_error: str = Field(default="", max_length=500)
    received_at: datetime = _at(default_factory=utcnow)
    processed_at: datetime | None = _at(default=None)
    # ``Priority`` from the triage at intake (of this event's text alone; a later crisis of the same person
    # raises their earlier events too, so that they are not left behind it).
    priority: int = Field(default=2)
    # Whose event it is: a keyed hash of the person on the channel (never their id). One person's events
    # are processed one at a time, in arrival order.
    sender: str = Field(default="", max_length=64)


class Handoff(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    conversation_id: str = Field(foreign_key="conversation.id", index=True, max_length=32)
    risk: str = Field(max_length=10)
    status: str = Field(default=HandoffStatus.WAITING, max_length=12, index=True)
    counsellor_id: int | None = Field(default=None, foreign_key="counsellor.id")
    queued_at: datetime = _at(default_factory=utcnow)
    claimed_at: datetime | None = _at(default=None)
    closed_at: datetime | None = _at(default=None)


DISPLAY_NAME_MAX = 32  # characters of a counsellor's display name


class Counsellor(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(max_length=64, unique=True)
    # The name people and colleagues read (greetings, canned replies, the audit log); the username is only
    # for logging in and is never shown to a person. "" until the account or a supervisor sets it.
    display_name: str = Field(default="", max_length=DISPLAY_NAME_MAX)
    password_hash: str = ""  # argon2id
    role: str = Field(default=Role.COUNSELLOR, max_length=12)
    on_duty: bool = False
    active: bool = True
    must_change_password: bool = False  # the first-start admin's one-time password
    max_conversations: int | None = None  # None: the service's TSUNAGI_COUNSELLOR_LIMIT
    created_at: datetime = _at(default_factory=utcnow)


class ConsoleSession(SQLModel, table=True):
    """A console login. Only a hash of the cookie's token is stored."""

    __tablename__ = "console_session"
    id: str = Field(primary_key=True, max_length=64)  # sha256 of the session token
    counsellor_id: int = Field(foreign_key="counsellor.id", index=True)
    csrf_token: str = Field(max_length=64)
    created_at: datetime = _at(default_factory=utcnow)
    expires_at: datetime = _at()
    last_seen_at: datetime = _at(default_factory=utcnow)


class LoginFailure(SQLModel, table=True):
    """Failed console logins, for rate limiting (a keyed hash of the username and of the address)."""

    __tablename__ = "login_failure"
    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=64, index=True)
    at: datetime = _at(default_factory=utcnow, index=True)


class Note(SQLModel, table=True):
    """A counsellor's private note on a conversation: never sent to the person. Encrypted at rest."""

    id: int | None = Field(default=None, primary_key=True)
    conversation_id: str = Field(foreign_key="conversation.id", index=True, max_length=32)
    counsellor_id: int = Field(foreign_key="counsellor.id")
    text_enc: str
    kind: str = Field(default="note", max_length=12)  # note (a counsellor's), advice (a supervisor's)
    created_at: datetime = _at(default_factory=utcnow)


class Alert(SQLModel, table=True):
    """A notice for one on-duty supervisor (a crisis arrived); the console shows and clears them."""

    id: int | None = Field(default=None, primary_key=True)
    counsellor_id: int = Field(foreign_key="counsellor.id", index=True)
    conversation_id: str = Field(max_length=32)
    kind: str = Field(max_length=16)
    created_at: datetime = _at(default_factory=utcnow)
    seen_at: datetime | None = _at(default=None)


class AuditLog(SQLModel, table=True):
    """Append-only (database triggers refuse UPDATE and DELETE): who did what to which conversation."""

    __tablename__ = "audit_log"
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = _at(default_factory=utcnow, index=True)
    actor: str = Field(max_length=64)  # "system", "user", or a counsellor's username
    action: str = Field(max_length=32)
    conversation_id: str = Field(default="", max_length=32, index=True)
    detail: str = Field(default="", max_length=200)  # never message text


ALL_CATEGORIES = "*"  # the statistics row (StatCount.category) that counts each conversation once


class StatCount(SQLModel, table=True):
    """De-identified statistics that outlive the conversations: counts per day and dimension only."""

    __tablename__ = "stat_count"
    __table_args__ = (sa.UniqueConstraint("day", "channel", "risk", "category", "age_band", "metric"),)
    id: int | None = Field(default=None, primary_key=True)
    day: date
    channel: str = Field(max_length=32)
    risk: str = Field(max_length=10)
    # The category ("*" all, a conversation counts once in each of its own); for the metrics outcome and
    # referral, the outcome code or the referral id (bot/storage/statistics.py).
    category: str = Field(max_length=32)
    age_band: str = Field(max_length=16)
    metric: str = Field(max_length=24)  # conversations, handed_off, emergencies, outcome, referral
    count: int = 0
