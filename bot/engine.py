"""The conversation engine: one for every channel.

A channel hands it an ``Inbound``; in one database transaction the engine stores the message
(encrypted), triages it with its conversation, asks the dialogue (bot/dialogue.py, pure: the states,
what moves them and what the bot says) what follows, does it (the queue's handoff row, alerts, closing,
erasing) and writes the replies to the outbox. Only after the commit are the queue and live views told,
and the outbox worker woken to send. So a reply is never sent for a message that was not stored, and a
stored message always gets its reply, even across a crash.

A person who writes again within ``REMEMBER`` of a conversation that reached high or crisis starts at
that risk (the contact keeps it, encrypted), and the new conversation links the earlier one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from bot.content import Content, Text
from bot.crypto import Crypto
from bot.db import Database, give_back, take_riders
from bot.dialogue import (
    QUEUE_FIELDS,
    Claimed,
    ClosedByCounsellor,
    Conv,
    Dialogue,
    Left,
    Opened,
    Reply,
    Requeued,
    Said,
    Timeout,
    Turn,
)
from bot.events import Event, EventBus
from bot.hours import Hours
from bot.metrics import Metrics
from bot.models import (
    ALL_CATEGORIES,
    Alert,
    Contact,
    Conversation,
    Counsellor,
    Direction,
    Handoff,
    HandoffStatus,
    Media,
    Message,
    Note,
    Outbox,
    OutboxStatus,
    Presence,
    Priority,
    Role,
    Sender,
    StatCount,
    State,
    utcnow,
)
from bot.storage import audit_write, contacts, conversations, handoffs
from bot.types import (
    BLOCKED_REASON,
    EDITED,
    FULL_TEXT_FACTOR,
    QUICK_EXIT_REASON,
    WITHDRAWN,
    Handled,
    Inbound,
    Kind,
)
from handoff.queue import HandoffQueue, QueueEntry
from triage import Risk, TriageResult, get_engine
from triage.normalize import sanitize

log = logging.getLogger("tsunagi.engine")

HISTORY = 10  # earlier messages read with each new one
REMEMBER = timedelta(days=7)  # how long a conversation at high or crisis sets the risk of the next
PROMISE = "promise"  # the placeholder of what can honestly be promised (content/messages.yaml)
PROMISE_GROUPS = {"crisis_repeat": "crisis"}  # texts that share promises


@dataclass
class _Step:
    """What one inbound message leads to, gathered while the transaction is open."""

    conv: Conversation
    now: datetime
    replies: list[tuple[Text, Sender]] = field(default_factory=list)
    enqueue: bool = False
    dequeue: bool = False
    alert: bool = False
    erase: bool = False
    release_from: int | None = None  # the counsellor who held it, freed once the change is in
    # Who did it, for the audit row of a close: the bot ("system"), or the counsellor who closed it.
    actor: str = audit_write.SYSTEM
    action: str = ""  # the safety table's action (bot/dialogue.py), for the log
    # The inbound message and its pictures, written with the replies (one flush gives them their ids).
    inbound: Message | None = None
    media: list[Media] = field(default_factory=list)

    def say(self, text: Text, sender: Sender = Sender.BOT) -> None:
        self.replies.append((text, sender))


def _risk(value: str) -> Risk:
    return Risk(value) if value in Risk.__members__.values() else Risk.LOW


# Fields the dialogue's Conv and the stored Conversation share as they are (same name, same value).
_SHARED_FIELDS = (
    "pending",
    "emergency",
    "out_of_hours",
    "told",
    "danger_asked",
    "danger_answer",
    "age_band",
    "prefecture",
    "safe_now",
    "survey_answer",
    "outcome",
    "referrals",
    "acked",
    "age_asked",
)


def _snapshot(conv: Conversation) -> Conv:
    """What the dialogue reads of a conversation."""
    return Conv(
        state=State(conv.state),
        risk=_risk(conv.risk),
        categories=tuple(conversations.categories(conv)),
        consented=conv.consent_at is not None,
        **{name: getattr(conv, name) for name in _SHARED_FIELDS},
    )


def _write_back(conv: Conversation, new: Conv, now: datetime) -> None:
    """What the dialogue decided, into the stored conversation."""
    conv.state = new.state.value
    conv.risk = new.risk.value
    conv.categories = conversations.joined(new.categories)
    if new.consented and conv.consent_at is None:
        conv.consent_at = now
    for name in _SHARED_FIELDS:
        setattr(conv, name, getattr(new, name))


class ConversationEngine:
    def __init__(
        self,
        *,
        db: Database,
        crypto: Crypto,
        content: Content,
        queue: HandoffQueue,
        events: EventBus,
        hours: Hours,
        minutes_per_place: int = 10,
        max_chars: int = 5000,
        counsellor_limit: int = 2,
        metrics: Metrics | None = None,
    ) -> None:
        self.db = db
        self.metrics = metrics or Metrics()
        self.crypto = crypto
        self.content = content
        self.queue = queue
        self.events = events
        self.hours = hours
        self.minutes_per_place = minutes_per_place
        self.max_chars = max_chars
        self.counsellor_limit = counsellor_limit  # TSUNAGI_COUNSELLOR_LIMIT, for accounts without their own
        self.triage = get_engine()
        self.dialogue = Dialogue(content, hours)
        self._locks = KeyedLocks()
        self.outbox_wakeup = asyncio.Event()  # a row is due on any channel (every channel's loop looks)
        # A reply is waiting on one channel: only that channel's outbox loop needs to look (the service
        # sets the outbox worker's ``wake``; alone, the engine wakes every loop).
        self.wake_outbox: Callable[[str], None] = lambda _channel: self.outbox_wakeup.set()
        # Channels whose replies to one message go out as one (see ``_joined``).
        self.joined_channels: set[str] = set()
        self.queue_dirty = False  # a queue update failed: the watchdog rebuilds the queue
        self.clock: Callable[[], datetime] = utcnow  # tests set the time of day

    # -- ingest ------------------------------------------------------------------------------------

    async def handle(self, inbound: Inbound) -> Handled:
        # Whatever arrived must be storable: a lone surrogate (half an emoji) becomes U+FFFD.
        inbound = replace(inbound, text=sanitize(inbound.text), user_id=sanitize(inbound.user_id))
        lookup = self.crypto.lookup(inbound.channel, inbound.user_id)
        # One message of a person at a time (they often send several fragments at once).
        async with self._locks.hold(lookup):
            for _ in range(3):
                try:
                    return await self._handle_locked(inbound, lookup)
                except IntegrityError:
                    # Another instance got there first: with the same external id (it answers, we do
                    # not), or with a first message of the same new person (the contact now exists:
                    # try again, and this message is handled like any other).
                    seen = await self._seen(inbound) if inbound.external_id is not None else None
                    if seen is not None:
                        # Stored before (a redelivery), or by another instance just now: it answers.
                        log.info("duplicate inbound on %s ignored (conversation %s)", inbound.channel, seen)
                        return Handled(conversation_id=seen, duplicate=True)
                    log.info("inbound on %s raced another instance; retrying", inbound.channel)
            raise RuntimeError("could not store an inbound message after three attempts")

    async def _seen(self, inbound: Inbound) -> str | None:
        """The conversation of the message stored with this one's external id, if there is one."""
        async with self.db.session() as s:
            return await s.scalar(
                select(col(Message.conversation_id)).where(
                    col(Message.channel) == inbound.channel, col(Message.external_id) == inbound.external_id
                )
            )

    async def _handle_locked(self, inbound: Inbound, lookup: str) -> Handled:
        # A message stored before (its external id is unique) fails the flush with IntegrityError: ``handle``
        # then finds it. What the caller wants written with this message's transaction rides in it (the
        # inbox's "done" for the event: one commit per message).
        riders = take_riders()
        try:
            async with self.db.session() as s, s.begin():
                contact, latest = await self._contact(s, inbound, lookup)
                step = await self._route(s, contact, latest, inbound)
                replies = await self._write_replies(s, step) if step is not None else 0
                for statement, params in riders:
                    await s.execute(statement, params)
        except BaseException:
            give_back(riders)
            raise
        if step is None:
            return Handled(conversation_id="")
        conv = step.conv
        await self._after_commit(step, contact.id)
        log.info(
            "handled %s on %s: conversation %s state %s risk %s action %s, %d replies",
            inbound.kind.value,
            inbound.channel,
            conv.id,
            conv.state,
            conv.risk,
            step.action or "-",
            replies,
        )
        return Handled(conversation_id=conv.id, replies=replies, contact_id=contact.id)

    async def _contact(
        self, s: AsyncSession, inbound: Inbound, lookup: str
    ) -> tuple[Contact, Conversation | None]:
        """The person (made on their first message) and their latest conversation, read in one statement."""
        contact, latest = await contacts.with_latest(s, channel=inbound.channel, lookup=lookup)
        if contact is None:
            contact = Contact(
                channel=inbound.channel,
                lookup=lookup,
                address_enc=self.crypto.encrypt(inbound.user_id),
                created_at=inbound.at,
                last_seen_at=inbound.at,
            )
            s.add(contact)  # (its id is made here: the insert goes with the rest of the transaction)
        else:
            contact.last_seen_at = inbound.at
        if inbound.contact_state:  # in this transaction, so the replies it leads to see it
            contact.state_enc = self.crypto.encrypt(inbound.contact_state)
        return contact, latest

    async def _route(
        self, s: AsyncSession, contact: Contact, latest: Conversation | None, inbound: Inbound
    ) -> _Step | None:
        now = self.clock()
        conv = latest
        if inbound.kind is Kind.UNFOLLOW:
            # They left or blocked us: close quietly, say nothing more, and what was still waiting to go
            # to them is cancelled (a push to someone who blocked us is refused, and counted).
            contact.presence, contact.presence_at = Presence.BLOCKED, now
            await self._cancel_unsent(s, contact, BLOCKED_REASON)
            if conv is None or conv.state == State.CLOSED:
                return None
            step = _Step(conv, now)
            await self._store_inbound(s, step, inbound, None)
            await self._apply(s, step, contact, self.dialogue.step(_snapshot(conv), Left(), now))
            return step
        if conv is not None and not self.dialogue.continues(_snapshot(conv), inbound.text):
            conv = None  # a message after closure starts a new conversation
        fresh = conv is None
        if conv is None:
            conv = self._new_conversation(s, contact, now)
        step = _Step(conv, now)
        if contact.presence == Presence.BLOCKED:  # they unblocked us (or wrote again): they are back
            contact.presence, contact.presence_at = Presence.UNKNOWN, now
        if inbound.kind is Kind.FOLLOW:
            await self._store_inbound(s, step, inbound, None)
            await self._apply(s, step, contact, self.dialogue.step(_snapshot(conv), Opened(), now))
            return step
        text = inbound.text
        truncated = 0
        if len(text) > self.max_chars:
            text = text[: self.max_chars]
            truncated = self.max_chars
        result = None
        if inbound.kind is not Kind.MEDIA and conv.state != State.CLOSED:  # (a closed one: its survey)
            history = [] if fresh else await self._history(s, conv)  # a new one has none yet
            started = time.perf_counter()
            result = self.triage.triage_conversation(text, history)
            self.metrics.triaged("conversation", time.perf_counter() - started)
        full = inbound.full_text[: self.max_chars * FULL_TEXT_FACTOR]
        await self._store_inbound(s, step, replace(inbound, text=text, full_text=full), result)
        if conv.state != State.CLOSED:
            conv.last_user_at = now
        event = Said(
            text,
            result,
            choice=inbound.choice,
            media=inbound.kind is Kind.MEDIA,
            attachments=max(0, inbound.attachments),
            truncated=truncated,
            pictures=sum(1 for i in inbound.items if i.picture is not None),
            refused=tuple(i.refused for i in inbound.items if i.refused),
            quiet=inbound.quiet,
            edited=EDITED in inbound.flags,
        )
        await self._apply(s, step, contact, self.dialogue.step(_snapshot(conv), event, now))
        return step

    async def _cancel_unsent(self, s: AsyncSession, contact: Contact, why: str) -> None:
        """Messages to a person not yet sent are cancelled (recorded failed, with why)."""
        ids = select(col(Conversation.id)).where(col(Conversation.contact_id) == contact.id)
        done = await s.execute(
            update(Outbox)
            .where(
                col(Outbox.conversation_id).in_(ids),
                col(Outbox.status).in_([OutboxStatus.PENDING, OutboxStatus.PARKED]),
            )
            .values(status=OutboxStatus.FAILED, last_error=why)
        )
        if done.rowcount:  # type: ignore[attr-defined]
            log.info("cancelled %d unsent messages on %s", done.rowcount, contact.channel)  # type: ignore[attr-defined]

    async def _unpark(self, s: AsyncSession, contact: Contact, now: datetime) -> int:
        """The person is back (their web chat connected): what waited for them is due again."""
        ids = select(col(Conversation.id)).where(col(Conversation.contact_id) == contact.id)
        done = await s.execute(
            update(Outbox)
            .where(col(Outbox.conversation_id).in_(ids), col(Outbox.status) == OutboxStatus.PARKED)
            .values(status=OutboxStatus.PENDING, next_attempt_at=now)
        )
        return int(done.rowcount or 0)  # type: ignore[attr-defined]

    async def set_presence(self, contact_id: str, presence: Presence) -> None:
        """Whether the person is there (the web chat's page connected, left, or closed with the quick exit).
        After the quick exit nothing can reach them on that page again (it forgot its token): what was still
        waiting to go to them is cancelled, and so is whatever is written to them later (bot/outbox.py). The
        console hears of it through the conversation's event."""
        now = self.clock()
        unparked = 0
        async with self.db.session() as s, s.begin():
            contact = await s.get(Contact, contact_id)
            if contact is None or contact.presence == presence:
                return
            if contact.presence == Presence.QUICK_EXIT:
                return  # gone for good: a late disconnect does not make it "left"
            contact.presence, contact.presence_at = presence, now
            if presence == Presence.QUICK_EXIT:
                await self._cancel_unsent(s, contact, QUICK_EXIT_REASON)
            elif presence == Presence.CONNECTED:
                unparked = await self._unpark(s, contact, now)
            conv = await conversations.latest(s, contact_id=contact_id)
            if conv is not None and presence != Presence.CONNECTED:
                self._audit(s, f"presence.{presence.value}", conv.id)
        log.info("contact %s on %s: %s", contact_id, contact.channel, presence.value)
        if unparked:
            self.outbox_wakeup.set()
        if conv is not None:
            self.events.publish(Event("conversation", conv.id, contact_id, conv.state, conv.risk))

    async def withdraw(self, channel: str, user_id: str, external_id: str) -> bool:
        """The person took a message back (LINE's unsend): its text, the whole of it, what came with it
        and its pictures are erased, with its edited versions (external id ``<id>:...``), and so is
        whatever the triage quoted of it (its reasons, and later messages' context). It stays in the
        transcript as withdrawn; the conversation's risk and categories stay as they were (a crisis
        withdrawn still needs a counsellor's eyes), and its reasons say that a withdrawn message raised
        them. False when no such message of theirs is stored."""
        lookup = self.crypto.lookup(channel, sanitize(user_id))
        now = self.clock()
        async with self._locks.hold(lookup), self.db.session() as s, s.begin():
            found = (
                await s.execute(
                    select(Message, Conversation)
                    .join(Conversation, col(Conversation.id) == col(Message.conversation_id))
                    .join(Contact, col(Contact.id) == col(Conversation.contact_id))
                    .where(
                        col(Message.channel) == channel,
                        or_(
                            col(Message.external_id) == external_id,
                            col(Message.external_id).startswith(external_id + ":", autoescape=True),
                        ),
                    )
                    .where(col(Contact.lookup) == lookup, col(Message.direction) == Direction.IN)
                    .order_by(col(Message.id))
                )
            ).all()
            if not found:
                log.info("a withdrawn message on %s is not stored (never was, or already gone)", channel)
                return False
            for msg, conv in found:
                if msg.withdrawn_at is None:
                    await self._withdraw_one(s, msg, conv, now)
            contact_id = conv.contact_id or ""
        self.events.publish(Event("conversation", conv.id, contact_id, conv.state, conv.risk))
        self.events.publish(Event("queue"))  # its preview may have been this message
        log.info("a message of conversation %s was withdrawn; risk stays %s", conv.id, conv.risk)
        return True

    async def _withdraw_one(self, s: AsyncSession, msg: Message, conv: Conversation, now: datetime) -> None:
        text = self.crypto.decrypt(msg.text_enc)
        if msg.triage_enc:
            t = json.loads(self.crypto.decrypt(msg.triage_enc))
            reasons = [
                {"rule": f"{WITHDRAWN}.{r.get('rule', '')}", "matched": "", "span": [0, 0]}
                for r in t.get("reasons", [])
            ]
            kept = {"risk": t.get("risk"), "categories": t.get("categories", []), "reasons": reasons}
            msg.triage_enc = self.crypto.encrypt(json.dumps(kept, ensure_ascii=False))
        msg.text_enc = self.crypto.encrypt("")
        msg.full_enc = ""
        msg.meta_enc = ""
        msg.flags = conversations.joined([*conversations.split(msg.flags), WITHDRAWN], limit=64)
        msg.withdrawn_at = now
        await s.execute(delete(Media).where(col(Media.message_id) == msg.id))
        if text.strip():
            await self._forget_quotes(s, conv.id, msg.id or 0, text)
        self._audit(s, "message.withdrawn", conv.id)

    async def _forget_quotes(self, s: AsyncSession, conversation_id: str, after: int, text: str) -> None:
        """Later messages' triage context quotes earlier ones (``history.<rule>``): what it quoted of a
        withdrawn text goes, the rule stays."""
        rows = (
            await s.scalars(
                select(Message).where(
                    col(Message.conversation_id) == conversation_id,
                    col(Message.id) > after,
                    col(Message.triage_enc) != "",
                )
            )
        ).all()
        for m in rows:
            t = json.loads(self.crypto.decrypt(m.triage_enc))
            context = t.get("context") or []
            if not any(c.get("matched") and c["matched"] in text for c in context):
                continue
            for c in context:
                if c.get("matched") and c["matched"] in text:
                    c["matched"] = ""
            m.triage_enc = self.crypto.encrypt(json.dumps(t, ensure_ascii=False))

    def _new_conversation(self, s: AsyncSession, contact: Contact, now: datetime) -> Conversation:
        conv = Conversation(contact_id=contact.id, channel=contact.channel, created_at=now, updated_at=now)
        # The age band they gave before (bot/storage/age_band.py), from the contact in hand.
        conv.age_band, conv.age_asked = contact.age_band, contact.age_asked
        remembered = self._remembered(contact, now)
        if remembered is not None:
            # They come back soon after a conversation at high or crisis: this one starts at that risk
            # (so it goes to the queue at once), and the counsellor sees the earlier one linked.
            conv.risk, conv.previous_id = remembered
        s.add(conv)  # (its id is made here: the insert goes with the rest of the transaction)
        self._audit(s, "conversation.start", conv.id, f"channel={conv.channel}")
        if remembered is not None:
            self._audit(s, "conversation.returning", conv.id, f"risk={conv.risk} previous={conv.previous_id}")
        return conv

    def _remembered(self, contact: Contact, now: datetime) -> tuple[str, str] | None:
        """The risk and id of this person's last conversation at high or crisis, if within REMEMBER."""
        if not contact.risk_enc:
            return None
        memory = json.loads(self.crypto.decrypt(contact.risk_enc))
        at = datetime.fromisoformat(str(memory.get("at", "")))
        risk = str(memory.get("risk", ""))
        if risk not in (Risk.HIGH.value, Risk.CRISIS.value) or now - at > REMEMBER:
            return None
        return risk, str(memory.get("conversation", ""))[:32]

    def _remember(self, contact: Contact | None, conv: Conversation, now: datetime) -> None:
        """A conversation at high or crisis is remembered with the contact (encrypted), from its last word."""
        if contact is None or conv.erased or _risk(conv.risk).rank < Risk.HIGH.rank:
            return
        memory = {"conversation": conv.id, "risk": conv.risk, "at": now.isoformat()}
        contact.risk_enc = self.crypto.encrypt(json.dumps(memory))

    async def _history(self, s: AsyncSession, conv: Conversation) -> list[str]:
        rows = (await s.scalars(_HISTORY, {"conversation_id": conv.id})).all()
        return [self.crypto.decrypt(t) for t in reversed(rows)]

    async def _store_inbound(
        self, s: AsyncSession, step: _Step, inbound: Inbound, result: TriageResult | None
    ) -> None:
        message = Message(
            conversation_id=step.conv.id,
            channel=inbound.channel,
            direction=Direction.IN,
            sender=Sender.USER,
            kind=inbound.kind.value,
            text_enc=self.crypto.encrypt(inbound.text),
            full_enc=self.crypto.encrypt(inbound.full_text)
            if inbound.full_text and inbound.full_text != inbound.text
            else "",
            attachments=max(0, inbound.attachments),
            flags=",".join(inbound.flags)[:64],
            meta_enc=self.crypto.encrypt(json.dumps([i.shown() for i in inbound.items], ensure_ascii=False))
            if inbound.items
            else "",
            external_id=inbound.external_id,
            risk=result.risk.value if result else "",
            triage_enc=self.crypto.encrypt(json.dumps(result.to_json(), ensure_ascii=False))
            if result
            else "",
            created_at=inbound.at,
        )
        s.add(message)  # flushed with the replies (the unique external id is checked then)
        step.inbound = message
        for item in inbound.items:
            if item.picture is not None:
                p = item.picture
                step.media.append(
                    Media(
                        message_id=0,  # once the message has its id
                        conversation_id=step.conv.id,
                        content_type=p.content_type,
                        width=p.width,
                        height=p.height,
                        size=len(p.data),
                        data_enc=self.crypto.encrypt_bytes(p.data),
                        created_at=inbound.at,
                    )
                )

    # -- doing what the dialogue says ------------------------------------------------------------------

    async def _apply(self, s: AsyncSession, step: _Step, contact: Contact | None, turn: Turn) -> None:
        """The dialogue's turn (bot/dialogue.py) in this transaction: the conversation's new state, the
        queue's handoff row, the supervisors' alert, closing and erasing, and the replies."""
        conv = step.conv
        step.action = turn.action.value if turn.action else ""
        _write_back(conv, turn.conv, step.now)
        if turn.close:
            await self._close(s, step)
        if turn.erase:
            await self._erase(s, step, contact)
        if turn.enqueue and conv.state == State.WAITING:
            step.enqueue = True
            await self._ensure_handoff(s, conv, step.now)
        if turn.alert:
            step.alert = True
            await self._alert_supervisors(s, conv)
        for action, detail in turn.audit:
            self._audit(s, action, conv.id, detail)
        for reply in turn.replies:
            step.say(await self._render(s, reply, conv, step.now), reply.sender)
        if not turn.erase:
            self._remember(contact, conv, step.now)

    async def _render(self, s: AsyncSession, reply: Reply, conv: Conversation, now: datetime) -> Text:
        fields: dict[str, object] = dict(reply.fields)
        wanted = self.content.fields_of(reply.key)
        if wanted & (QUEUE_FIELDS | {PROMISE}):
            position = await self.queue.rank(self._entry(conv, now), now)
            fields.update(position=position, wait=self._wait(position))
        if PROMISE in wanted:
            # Never promise what will not happen: what is said depends on who is there now.
            group = PROMISE_GROUPS.get(reply.key, reply.key)
            staffing = await self._staffing(s, now)
            fields[PROMISE] = self.content.fmt(f"promise_{group}_{staffing}", **fields)
        return self.content.text(reply.key, **fields)

    async def _staffing(self, s: AsyncSession, now: datetime) -> str:
        """Who can answer now: ``free`` (a counsellor on duty under their limit), ``busy`` (on duty, all at
        their limit), ``none`` (nobody on duty), ``closed`` (out of counsellor hours)."""
        if not self.hours.is_open(now):
            return "closed"
        on_duty = (
            await s.execute(
                select(col(Counsellor.id), col(Counsellor.max_conversations)).where(
                    col(Counsellor.on_duty).is_(True), col(Counsellor.active).is_(True)
                )
            )
        ).all()
        if not on_duty:
            return "none"
        held = await handoffs.held_counts(s)
        free = any(held[cid or 0] < (limit or self.counsellor_limit) for cid, limit in on_duty)
        return "free" if free else "busy"

    async def _ensure_handoff(self, s: AsyncSession, conv: Conversation, now: datetime) -> None:
        """The waiting handoff row (the source of truth for the queue), made once."""
        existing = await handoffs.waiting(s, conversation_id=conv.id)
        if existing is None:
            s.add(Handoff(conversation_id=conv.id, risk=conv.risk, queued_at=now))
            self._audit(s, "handoff.enqueue", conv.id, f"risk={conv.risk}")
        else:
            existing.risk = conv.risk

    async def _alert_supervisors(self, s: AsyncSession, conv: Conversation) -> None:
        """A crisis is told to the supervisors on duty; when none is, to the counsellors on duty (someone must
        hear it now); when nobody is on duty, to every supervisor, who sees it on logging in."""
        active = (await s.scalars(select(Counsellor).where(col(Counsellor.active).is_(True)))).all()
        supervisors = [c for c in active if c.role in (Role.SUPERVISOR, Role.ADMIN)]
        on_duty = [c for c in active if c.on_duty]
        recipients = [c for c in supervisors if c.on_duty] or on_duty or supervisors
        for c in recipients:
            assert c.id is not None
            s.add(Alert(counsellor_id=c.id, conversation_id=conv.id, kind="crisis"))

    async def _close(self, s: AsyncSession, step: _Step) -> None:
        """The dialogue closed the conversation: its handoff ends, and it is counted."""
        conv = step.conv
        step.release_from = await handoffs.holder(s, conversation_id=conv.id)
        handed_off = (
            await s.scalar(
                select(func.count()).select_from(Handoff).where(col(Handoff.conversation_id) == conv.id)
            )
            or 0
        )
        await s.execute(
            update(Handoff)
            .where(col(Handoff.conversation_id) == conv.id, col(Handoff.status) != HandoffStatus.CLOSED)
            .values(status=HandoffStatus.CLOSED, closed_at=step.now)
        )
        step.dequeue = True
        conv.closed_at = step.now
        # A counsellor's close is their action ("close", audited once, here); else the bot closed it.
        action = "conversation.close" if step.actor == audit_write.SYSTEM else "close"
        audit_write.record(
            s, actor=step.actor, action=action, conversation_id=conv.id, detail=f"outcome={conv.outcome}"
        )
        await self._count(s, conv, handed_off=handed_off > 0)

    async def _erase(self, s: AsyncSession, step: _Step, contact: Contact | None) -> None:
        """Erase every message of this person, then (once the last reply is out) the contact itself."""
        conv = step.conv
        ids = (
            await s.scalars(
                select(col(Conversation.id)).where(col(Conversation.contact_id) == conv.contact_id)
            )
        ).all()
        await s.execute(delete(Outbox).where(col(Outbox.conversation_id).in_(ids)))
        await s.execute(delete(Media).where(col(Media.conversation_id).in_(ids)))
        await s.execute(delete(Message).where(col(Message.conversation_id).in_(ids)))
        await s.execute(delete(Note).where(col(Note.conversation_id).in_(ids)))
        await s.execute(
            update(Conversation)
            .where(col(Conversation.id).in_(ids))
            .values(erased=True, age_band="", prefecture="", survey_answer="", pending="")
        )
        conv.erased = True
        if contact is not None:
            contact.risk_enc = ""
        step.erase = True
        self._audit(s, "erase", conv.id, f"conversations={len(ids)}")

    async def _count(self, s: AsyncSession, conv: Conversation, *, handed_off: bool) -> None:
        """Add this conversation to the de-identified daily counts (they outlive it): once under the
        category ``*`` (all) for each metric, and once in each of its categories for ``conversations``
        (so category rows add up to more than the conversations when one has several)."""
        day = conv.created_at.astimezone(self.hours.tz).date()
        metrics = ["conversations"]
        if handed_off:
            metrics.append("handed_off")
        if conv.emergency:
            metrics.append("emergencies")
        for metric in metrics:
            await _increment(s, day, conv.channel, conv.risk, ALL_CATEGORIES, conv.age_band, metric)
        for cat in conversations.categories(conv):
            await _increment(s, day, conv.channel, conv.risk, cat, conv.age_band, "conversations")

    async def close_idle(self, idle: timedelta) -> int:
        """Close, quietly, conversations still with the bot after ``idle`` without a word from the person
        (a message out of the blue could be read by someone else). Waiting ones keep their place; one whose
        direct question about danger went unanswered goes to the queue instead (bot/dialogue.py)."""
        now = self.clock()
        async with self.db.session() as s:
            ids = (
                await s.scalars(
                    select(col(Conversation.id)).where(
                        col(Conversation.state).in_(
                            [State.NEW, State.WELCOME, State.LISTENING, State.OFFERED]
                        ),
                        col(Conversation.updated_at) < now - idle,
                    )
                )
            ).all()
        for conversation_id in ids:
            async with self.db.session() as s, s.begin():
                conv = await s.get(Conversation, conversation_id)
                if conv is None or conv.state == State.CLOSED or conv.updated_at >= now - idle:
                    continue
                step = _Step(conv, now)
                await self._apply(s, step, None, self.dialogue.step(_snapshot(conv), Timeout(), now))
                await self._write_replies(s, step)
                contact_id = conv.contact_id or ""
            await self._after_commit(step, contact_id)
        return len(ids)

    # -- counsellors (the console calls these) -----------------------------------------------------

    async def assign(
        self,
        conversation_id: str,
        counsellor_id: int,
        *,
        actor: str = audit_write.SYSTEM,
        action: str = "claim",
        detail: str = "",
    ) -> bool:
        """A counsellor takes a waiting conversation: it leaves the queue, the person is told, and from
        now on the bot is silent. False when it is not waiting (taken by someone else, or closed).
        ``actor`` did it (the counsellor who claimed it, or who transferred it: then ``action`` says so),
        audited once, in this transaction."""
        now = self.clock()
        async with self.db.session() as s, s.begin():
            conv = await s.get(Conversation, conversation_id, with_for_update=not self.db.is_sqlite)
            if conv is None or conv.state != State.WAITING:
                return False
            taken = await s.execute(
                update(Handoff)
                .where(col(Handoff.conversation_id) == conversation_id)
                .where(col(Handoff.status) == HandoffStatus.WAITING)
                .values(status=HandoffStatus.CLAIMED, counsellor_id=counsellor_id, claimed_at=now)
            )
            if taken.rowcount != 1:  # type: ignore[attr-defined]
                return False
            step = _Step(conv, now, dequeue=True)
            await self._apply(s, step, None, self.dialogue.step(_snapshot(conv), Claimed(), now))
            audit_write.record(
                s,
                actor=actor,
                action=action,
                conversation_id=conv.id,
                detail=detail or f"counsellor={counsellor_id}",
            )
            # Someone has it now: its alerts are answered, for everyone they went to.
            await s.execute(
                update(Alert)
                .where(col(Alert.conversation_id) == conv.id, col(Alert.seen_at).is_(None))
                .values(seen_at=now)
            )
            await self._write_replies(s, step)
            contact_id = conv.contact_id or ""
        await self._after_commit(step, contact_id)
        return True

    async def counsellor_reply(
        self, conversation_id: str, counsellor_id: int, text: str, *, actor: str = audit_write.SYSTEM
    ) -> bool:
        """A counsellor's message to the person, through the outbox on the conversation's channel.
        False unless this counsellor holds the conversation. Audited once, as ``actor``'s."""
        now = self.clock()
        async with self.db.session() as s, s.begin():
            conv = await self._held_by(s, conversation_id, counsellor_id)
            if conv is None:
                return False
            step = _Step(conv, now)
            step.say(Text(sanitize(text)[: self.max_chars]), Sender.COUNSELLOR)
            audit_write.record(
                s, actor=actor, action="reply", conversation_id=conv.id, detail=f"counsellor={counsellor_id}"
            )
            await self._write_replies(s, step)
            contact_id = conv.contact_id or ""
        await self._after_commit(step, contact_id)
        return True

    async def close_by_counsellor(
        self,
        conversation_id: str,
        counsellor_id: int,
        *,
        outcome: str,
        referrals: list[str],
        actor: str = audit_write.SYSTEM,
    ) -> bool:
        """The counsellor ends the conversation: the person gets the closing words and the survey.
        Audited once (``actor``'s "close"), where the close is written."""
        now = self.clock()
        async with self.db.session() as s, s.begin():
            conv = await self._held_by(s, conversation_id, counsellor_id)
            if conv is None:
                return False
            step = _Step(conv, now, actor=actor)
            if referrals:
                conv.referrals = conversations.joined(referrals)
            turn = self.dialogue.step(_snapshot(conv), ClosedByCounsellor(outcome), now)
            await self._apply(s, step, None, turn)
            await self._write_replies(s, step)
            contact_id = conv.contact_id or ""
        await self._after_commit(step, contact_id)
        return True

    async def requeue(
        self,
        conversation_id: str,
        counsellor_id: int,
        *,
        actor: str = audit_write.SYSTEM,
        action: str = "handoff.requeue",
        detail: str = "",
        audit: bool = True,
    ) -> QueueEntry | None:
        """Back to the queue, keeping the time it first queued (nobody loses their place). Audited once
        as ``actor``'s ``action``, unless ``audit`` is false (a transfer to a colleague is audited where
        the colleague gets it)."""
        now = self.clock()
        async with self.db.session() as s, s.begin():
            conv = await self._held_by(s, conversation_id, counsellor_id)
            if conv is None:
                return None
            handoff = await handoffs.claimed(s, conversation_id=conversation_id)
            assert handoff is not None
            handoff.status = HandoffStatus.WAITING
            handoff.counsellor_id = None
            handoff.claimed_at = None
            _write_back(conv, self.dialogue.step(_snapshot(conv), Requeued(), now).conv, now)
            conv.updated_at = now
            entry = QueueEntry(conv.id, _risk(conv.risk), handoff.queued_at, conv.channel)
            if audit:
                audit_write.record(
                    s,
                    actor=actor,
                    action=action,
                    conversation_id=conv.id,
                    detail=detail or f"from={counsellor_id}",
                )
            contact_id = conv.contact_id or ""
        await self.queue.release(conversation_id, counsellor_id)
        await self.queue.put(entry)
        self.events.publish(Event("queue"))
        self.events.publish(
            Event("conversation", conversation_id, contact_id, State.WAITING, entry.risk.value)
        )
        return entry

    async def _held_by(
        self, s: AsyncSession, conversation_id: str, counsellor_id: int
    ) -> Conversation | None:
        conv = await s.get(Conversation, conversation_id, with_for_update=not self.db.is_sqlite)
        if conv is None or conv.state != State.WITH_COUNSELLOR:
            return None
        holder = await handoffs.holder(s, conversation_id=conversation_id)
        return conv if holder == counsellor_id else None

    # -- writing replies and telling the rest -------------------------------------------------------

    async def _write_replies(self, s: AsyncSession, step: _Step) -> int:
        conv = step.conv
        conv.updated_at = step.now
        replies = self._joined(conv.channel, step.replies)
        written: list[Message] = []
        for text, sender in replies:
            msg = Message(
                conversation_id=conv.id,
                channel=conv.channel,
                direction=Direction.OUT,
                sender=sender,
                text_enc=self.crypto.encrypt(text.text),
                quick_replies=json.dumps(list(text.quick), ensure_ascii=False) if text.quick else "",
                created_at=step.now,
            )
            s.add(msg)
            written.append(msg)
        if written or step.media:
            await s.flush()  # one insert gives the inbound message and the replies their ids, in order
        for media in step.media:
            assert step.inbound is not None and step.inbound.id is not None
            media.message_id = step.inbound.id
            s.add(media)
        if written:
            # One insert of the outbox rows (a Core insert: they are never read back here, and building
            # mapped objects for them cost more than the statement). A crisis reply goes first: the
            # conversation's risk once this step is done.
            priority = Priority.of(conv.risk)
            await s.execute(
                insert(_OUTBOX),
                [
                    {
                        "message_id": msg.id,
                        "conversation_id": conv.id,
                        "channel": conv.channel,
                        "status": OutboxStatus.PENDING,
                        "attempts": 0,
                        "next_attempt_at": utcnow(),  # due now (``step.now`` is the dialogue's clock)
                        "last_error": "",
                        "progress": 0,
                        "priority": priority,
                        "created_at": step.now,
                    }
                    for msg in written
                ],
            )
        if step.enqueue:
            await s.execute(
                update(Handoff)
                .where(col(Handoff.conversation_id) == conv.id, col(Handoff.status) == HandoffStatus.WAITING)
                .values(risk=conv.risk)
            )
        return len(replies)

    def _joined(self, channel: str, replies: list[tuple[Text, Sender]]) -> list[tuple[Text, Sender]]:
        """On channels where each message is a whole letter (e-mail), what one step says in a row by the
        same sender goes out as one message, its parts a blank line apart, with the last choices."""
        if channel not in self.joined_channels:
            return replies
        out: list[tuple[Text, Sender]] = []
        for text, sender in replies:
            if out and out[-1][1] == sender:
                prev = out[-1][0]
                out[-1] = (Text(f"{prev.text}\n\n{text.text}", text.quick or prev.quick), sender)
            else:
                out.append((text, sender))
        return out

    async def _after_commit(self, step: _Step, contact_id: str) -> None:
        """Once the transaction is in: the queue, the live views and the outbox are told."""
        conv = step.conv
        try:
            if step.release_from is not None:
                await self.queue.release(conv.id, step.release_from)
            if step.dequeue:
                await self.queue.remove(conv.id)
            elif step.enqueue:
                await self.queue.put(self._entry(conv, step.now))
        except Exception as e:
            # The database has it right; the watchdog rebuilds the queue from it.
            log.warning("queue update failed for conversation %s (%s); it will be rebuilt", conv.id, e)
            self.queue_dirty = True
        if step.dequeue or step.enqueue:
            self.events.publish(Event("queue"))
        if step.alert:
            self.events.publish(Event("alert", conv.id, contact_id, conv.state, conv.risk))
        self.events.publish(Event("conversation", conv.id, contact_id, conv.state, conv.risk))
        if step.replies:
            self.wake_outbox(conv.channel)

    # -- helpers ---------------------------------------------------------------------------------------

    def _entry(self, conv: Conversation, now: datetime) -> QueueEntry:
        return QueueEntry(conv.id, _risk(conv.risk), now, conv.channel)

    def _wait(self, position: int) -> str:
        if position <= 1:
            return self.content.fmt("wait_soon")
        return self.content.fmt("wait_minutes", minutes=(position - 1) * self.minutes_per_place)

    @staticmethod
    def _audit(s: AsyncSession, action: str, conversation_id: str, detail: str = "") -> None:
        """What the bot does on its own (the dialogue's steps, erasing, a withdrawn message)."""
        audit_write.record(s, action=action, conversation_id=conversation_id, detail=detail)


_OUTBOX: Any = Outbox.__table__  # type: ignore[attr-defined]

# Built once (it is on every message's path): the person's last texts, for the triage's context.
_HISTORY = (
    select(col(Message.text_enc))
    .where(col(Message.conversation_id) == bindparam("conversation_id"))
    .where(col(Message.direction) == Direction.IN, col(Message.kind) == Kind.TEXT)
    .where(col(Message.withdrawn_at).is_(None))
    .order_by(col(Message.id).desc())
    .limit(HISTORY)
)


async def _increment(
    s: AsyncSession, day: date, channel: str, risk: str, category: str, age_band: str, metric: str
) -> None:
    """Portable upsert of one counter (INSERT ... ON CONFLICT DO UPDATE on SQLite and PostgreSQL)."""
    dialect = s.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    stmt = insert(StatCount).values(
        day=day, channel=channel, risk=risk, category=category, age_band=age_band, metric=metric, count=1
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["day", "channel", "risk", "category", "age_band", "metric"],
        set_={"count": col(StatCount.count) + 1},
    )
    await s.execute(stmt)


class KeyedLocks:
    """An asyncio lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)
