"""The conversation engine: one for every channel.

A channel hands it an ``Inbound``; in one database transaction the engine stores the message
(encrypted), triages it with its conversation, moves the conversation along its states and writes
the replies to the outbox. Only after the commit are the queue and live views told, and the outbox
worker woken to send. So a reply is never sent for a message that was not stored, and a stored
message always gets its reply, even across a crash.

States: new -> welcome -> listening -> offered -> waiting -> with_counsellor -> closed.
A crisis skips the flow from any state; 相談したい, 終了, 削除 and たすけて work in every state.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from bot.content import Content, Text, key
from bot.crypto import Crypto
from bot.db import Database
from bot.events import Event, EventBus
from bot.hours import Hours
from bot.models import (
    Alert,
    AuditLog,
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
    Role,
    Sender,
    StatCount,
    State,
    utcnow,
)
from bot.types import EDITED, WITHDRAWN, Inbound, Item, Kind
from handoff.queue import HandoffQueue, QueueEntry
from triage import Category, Risk, TriageResult, get_engine
from triage.normalize import sanitize

log = logging.getLogger("tsunagi.engine")

HISTORY = 10  # earlier messages read with each new one
FULL_TEXT_FACTOR = 20  # the whole of a mail is kept up to this many times the longest message
ALL_CATEGORIES = "*"  # the statistics row that counts each conversation once
STORY_CHARS = 20  # a message this long is taken as telling something, not a greeting


@dataclass
class Handled:
    conversation_id: str
    duplicate: bool = False
    replies: int = 0
    contact_id: str = ""


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

    def say(self, text: Text, sender: Sender = Sender.BOT) -> None:
        self.replies.append((text, sender))


def _risk(value: str) -> Risk:
    return Risk(value) if value in Risk.__members__.values() else Risk.LOW


def _merge_categories(current: str, new: Iterable[Category]) -> str:
    cats = {c for c in current.split(",") if c} | {c.value for c in new}
    order = {c.value: i for i, c in enumerate(Category)}
    return ",".join(sorted(cats, key=lambda c: order.get(c, 99)))


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
    ) -> None:
        self.db = db
        self.crypto = crypto
        self.content = content
        self.queue = queue
        self.events = events
        self.hours = hours
        self.minutes_per_place = minutes_per_place
        self.max_chars = max_chars
        self.triage = get_engine()
        self._locks = KeyedLocks()
        self.outbox_wakeup = asyncio.Event()
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
                    if inbound.external_id is not None and await self._seen(inbound):
                        log.info("duplicate inbound on %s (lost a race)", inbound.channel)
                        return Handled(conversation_id="", duplicate=True)
                    log.info("inbound on %s raced another instance; retrying", inbound.channel)
            raise RuntimeError("could not store an inbound message after three attempts")

    async def _seen(self, inbound: Inbound) -> bool:
        async with self.db.session() as s:
            found = await s.scalar(
                select(col(Message.id)).where(
                    col(Message.channel) == inbound.channel, col(Message.external_id) == inbound.external_id
                )
            )
        return found is not None

    async def _handle_locked(self, inbound: Inbound, lookup: str) -> Handled:
        async with self.db.session() as s, s.begin():
            if inbound.external_id is not None:
                seen = await s.scalar(
                    select(col(Message.conversation_id)).where(
                        col(Message.channel) == inbound.channel,
                        col(Message.external_id) == inbound.external_id,
                    )
                )
                if seen is not None:
                    log.info("duplicate inbound on %s ignored (conversation %s)", inbound.channel, seen)
                    return Handled(conversation_id=seen, duplicate=True)
            contact = await self._contact(s, inbound, lookup)
            step = await self._route(s, contact, inbound)
            if step is None:
                return Handled(conversation_id="")
            replies = await self._write_replies(s, step)
            conv = step.conv
        await self._after_commit(step, contact.id)
        log.info(
            "handled %s on %s: conversation %s state %s risk %s, %d replies",
            inbound.kind.value,
            inbound.channel,
            conv.id,
            conv.state,
            conv.risk,
            replies,
        )
        return Handled(conversation_id=conv.id, replies=replies, contact_id=contact.id)

    async def _contact(self, s: AsyncSession, inbound: Inbound, lookup: str) -> Contact:
        contact = await s.scalar(
            select(Contact).where(col(Contact.channel) == inbound.channel, col(Contact.lookup) == lookup)
        )
        if contact is None:
            contact = Contact(
                channel=inbound.channel,
                lookup=lookup,
                address_enc=self.crypto.encrypt(inbound.user_id),
                created_at=inbound.at,
                last_seen_at=inbound.at,
            )
            s.add(contact)
            await s.flush()
        else:
            contact.last_seen_at = inbound.at
        if inbound.contact_state:  # in this transaction, so the replies it leads to see it
            contact.state_enc = self.crypto.encrypt(inbound.contact_state)
        return contact

    async def _route(self, s: AsyncSession, contact: Contact, inbound: Inbound) -> _Step | None:
        now = self.clock()
        conv = await s.scalar(
            select(Conversation)
            .where(col(Conversation.contact_id) == contact.id)
            .order_by(col(Conversation.created_at).desc())
            .limit(1)
        )
        if inbound.kind is Kind.UNFOLLOW:
            # They left or blocked us: close quietly, say nothing more, and what was still waiting to go
            # to them is cancelled (a push to someone who blocked us is refused, and counted).
            await self._cancel_unsent(s, contact)
            if conv is None or conv.state == State.CLOSED:
                return None
            step = _Step(conv, now)
            await self._store_inbound(s, step, inbound, None)
            await self._close(s, step, outcome="left", survey=False)
            return step
        if conv is not None and conv.state == State.CLOSED:
            if conv.pending == "survey" and self.content.is_answer("survey", inbound.text):
                step = _Step(conv, now)
                await self._store_inbound(s, step, inbound, None)
                conv.pending = ""
                skipped = self.content.is_answer("skip", inbound.text)
                conv.survey_answer = "" if skipped else key(inbound.text)[:32]
                step.say(self.content.text("survey_thanks"))
                return step
            conv = None  # a message after closure starts a new conversation
        if conv is None:
            conv = self._new_conversation(s, contact, now)
            await s.flush()
            self._audit(s, "conversation.start", conv.id, f"channel={conv.channel}")
        step = _Step(conv, now)
        if inbound.kind is Kind.FOLLOW:
            await self._store_inbound(s, step, inbound, None)
            if conv.state == State.NEW:
                await self._welcome(s, step)
            return step
        text = inbound.text
        if len(text) > self.max_chars:
            text = text[: self.max_chars]
            step.say(self.content.text("truncated", max=self.max_chars))
        if inbound.kind is Kind.MEDIA:
            result = None
        else:
            history = await self._history(s, conv)
            result = self.triage.triage_conversation(text, history)
        full = inbound.full_text[: self.max_chars * FULL_TEXT_FACTOR]
        await self._store_inbound(s, step, replace(inbound, text=text, full_text=full), result)
        conv.last_user_at = now
        if EDITED in inbound.flags:
            await self._revised(s, step, result)
            return step
        if inbound.kind is Kind.MEDIA:
            await self._media(s, step, inbound)
        else:
            await self._step(s, step, text, inbound.kind, result)
        if inbound.items and not inbound.quiet and not step.erase and conv.state != State.WITH_COUNSELLOR:
            # Files that were not kept, pictures that were: said first, before the answer and its
            # choices, but never before what a crisis needs said.
            notes = [(t, Sender.BOT) for t in self._items_said(inbound.items)]
            at = len(step.replies) if step.alert else 0
            step.replies[at:at] = notes
        return step

    async def _media(self, s: AsyncSession, step: _Step, inbound: Inbound) -> None:
        """A picture, a sticker, a place or a file, without text: text triage cannot read it. It is stored
        and shown to the counsellor; the person is told what became of it (``_items_said``) without being
        promised a look. Alone it puts nobody in the queue, unless the conversation is already at medium
        risk or above (then a person should look) or they asked for a counsellor (already waiting)."""
        conv = step.conv
        if conv.state == State.NEW:
            await self._welcome(s, step)  # a first contact that is a picture still gets the terms
            return
        if conv.state == State.WITH_COUNSELLOR or inbound.quiet:
            return  # the counsellor sees it; the rest of an album was answered with its first picture
        if not any(i.refused or i.picture for i in inbound.items):
            step.say(self.content.text("media_unreadable"))
        if conv.state == State.WAITING or conv.consent_at is None:
            return
        if _risk(conv.risk).rank >= Risk.MEDIUM.rank:
            await self._enqueue(s, step)

    def _items_said(self, items: tuple[Item, ...]) -> list[Text]:
        """What the person is told about what came with a message: pictures kept (a counsellor who talks
        with them can see them), files refused by kind."""
        out = []
        if any(i.picture is not None for i in items):
            out.append(self.content.text("media_picture_kept"))
        refused = [i.refused for i in items if i.refused]
        if refused:
            kinds = self.content.fmt("kind_joiner").join(
                self.content.fmt(f"kind_{k}") for k in dict.fromkeys(refused)
            )
            out.append(self.content.text("attachments_not_kept", count=len(refused), kinds=kinds))
        return out

    async def _revised(self, s: AsyncSession, step: _Step, result: TriageResult | None) -> None:
        """An edited message: stored beside the first version and triaged; the dialogue does not move for
        it, but a risk it raises counts (a crisis takes the crisis path, a waiting conversation moves up)."""
        conv = step.conv
        before = _risk(conv.risk)
        if result is None:
            return
        if result.risk.rank > before.rank:
            conv.risk = result.risk.value
        conv.categories = _merge_categories(conv.categories, result.categories)
        if result.risk is Risk.CRISIS and result.reasons:
            await self._crisis(s, step)
        elif conv.state == State.WAITING and _risk(conv.risk).rank > before.rank:
            step.enqueue = True

    async def _cancel_unsent(self, s: AsyncSession, contact: Contact) -> None:
        """Messages to a person not yet sent are cancelled (recorded failed, with why)."""
        ids = select(col(Conversation.id)).where(col(Conversation.contact_id) == contact.id)
        done = await s.execute(
            update(Outbox)
            .where(col(Outbox.conversation_id).in_(ids), col(Outbox.status) == OutboxStatus.PENDING)
            .values(status=OutboxStatus.FAILED, last_error="cancelled: the person blocked or left")
        )
        if done.rowcount:  # type: ignore[attr-defined]
            log.info("cancelled %d unsent messages on %s", done.rowcount, contact.channel)  # type: ignore[attr-defined]

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
        msg.flags = ",".join([*[f for f in msg.flags.split(",") if f], WITHDRAWN])[:64]
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
        s.add(conv)
        return conv

    async def _history(self, s: AsyncSession, conv: Conversation) -> list[str]:
        rows = (
            await s.scalars(
                select(col(Message.text_enc))
                .where(col(Message.conversation_id) == conv.id, col(Message.direction) == Direction.IN)
                .where(col(Message.kind) == Kind.TEXT, col(Message.withdrawn_at).is_(None))
                .order_by(col(Message.id).desc())
                .limit(HISTORY)
            )
        ).all()
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
        s.add(message)
        await s.flush()  # the unique external id is checked here, inside the transaction
        assert message.id is not None
        for item in inbound.items:
            if item.picture is not None:
                p = item.picture
                s.add(
                    Media(
                        message_id=message.id,
                        conversation_id=step.conv.id,
                        content_type=p.content_type,
                        width=p.width,
                        height=p.height,
                        size=len(p.data),
                        data_enc=self.crypto.encrypt_bytes(p.data),
                        created_at=inbound.at,
                    )
                )

    # -- the flow ------------------------------------------------------------------------------------

    async def _step(
        self,
        s: AsyncSession,
        step: _Step,
        text: str,
        kind: Kind,
        result: TriageResult | None,
    ) -> None:
        conv, c = step.conv, self.content
        before = _risk(conv.risk)
        if result is not None:
            if result.risk.rank > before.rank:
                conv.risk = result.risk.value
            conv.categories = _merge_categories(conv.categories, result.categories)
        keyword = c.keyword_of(text)

        if conv.pending == "erase_confirm":
            conv.pending = ""
            if c.is_answer("erase_yes", text):
                await self._erase(s, step)
                return
            if c.is_answer("erase_no", text):
                step.say(c.text("erase_cancelled"))
                return

        crisis = keyword == "crisis" or (
            result is not None
            and result.risk is Risk.CRISIS
            and (bool(result.reasons) or before is not Risk.CRISIS)
        )
        if crisis:
            await self._crisis(s, step)
            return
        if keyword == "end" and conv.state not in (State.NEW, State.WELCOME):
            await self._close(s, step, outcome="ended_by_user", survey=True)
            return
        if keyword == "erase":
            conv.pending = "erase_confirm"
            step.say(c.text("erase_confirm"))
            return
        if keyword == "counsellor":
            if conv.state == State.NEW:
                await self._welcome(s, step)
            if conv.state in (State.WAITING, State.WITH_COUNSELLOR):
                if conv.state == State.WAITING:
                    await self._waiting_update(step)
                return
            if conv.consent_at is None:
                conv.consent_at = step.now  # they read the terms in the welcome and asked for a person
            await self._enqueue(s, step)
            return

        state = State(conv.state)
        if state == State.NEW:
            await self._welcome(s, step)
        elif state == State.WELCOME:
            if c.is_answer("consent", text):
                conv.consent_at = step.now
                conv.state = State.LISTENING
                if await self._told_something(s, conv):  # they already told us before agreeing
                    step.say(c.text("listening_after_consent_with_story"))
                    self._ask_intake(step)
                else:
                    step.say(c.text("listening"))
            elif c.is_answer("decline", text):
                step.say(c.text("declined", lines=self._lines(conv, step.now, always_open=True)))
                await self._close(s, step, outcome="declined", survey=False)
            else:
                step.say(c.text("consent_needed"))
        elif state == State.LISTENING:
            await self._listening(s, step, text)
        elif state == State.OFFERED:
            if c.is_answer("info_only", text):
                await self._close(s, step, outcome="information", survey=True)
            else:
                step.say(c.text("offer_again"))
        elif state == State.WAITING:
            if _risk(conv.risk).rank > before.rank:
                step.enqueue = True  # the queue moves it at once
            await self._waiting_update(step)
            if _risk(conv.risk).rank >= Risk.HIGH.rank and before.rank < Risk.HIGH.rank:
                step.say(self._safety(conv, step.now))
        # with_counsellor: the bot stays silent; the counsellor reads it in the console.

    async def _listening(self, s: AsyncSession, step: _Step, text: str) -> None:
        conv, c = step.conv, self.content
        pending = conv.pending
        if not pending:
            if _risk(conv.risk).rank >= Risk.HIGH.rank:
                await self._offer(s, step)  # no questionnaire before help when it is serious
            else:
                step.say(c.text("intake_intro"))
                self._ask_intake(step)
            return
        if pending == "intake_age":
            band = c.age_band(text)
            if band:
                conv.age_band = band
            conv.pending = "intake_prefecture"
            step.say(c.text("intake_prefecture"))
        elif pending == "intake_prefecture":
            pref = c.prefecture(text)
            if pref:
                conv.prefecture = pref
            conv.pending = "intake_safe"
            step.say(c.text("intake_safe"))
        elif pending == "intake_safe":
            conv.pending = ""
            if c.is_answer("safe_no", text):
                conv.safe_now = "no"
                if _risk(conv.risk).rank < Risk.HIGH.rank:
                    conv.risk = Risk.HIGH.value
                step.say(c.text("unsafe"))
            elif c.is_answer("safe_yes", text):
                conv.safe_now = "yes"
            elif c.is_answer("safe_unsure", text):
                conv.safe_now = "unsure"
            await self._offer(s, step)
        else:
            conv.pending = ""
            await self._offer(s, step)

    async def _told_something(self, s: AsyncSession, conv: Conversation) -> bool:
        """Did an earlier message say something of their trouble (not just a greeting)?"""
        rows = (
            await s.execute(
                select(col(Message.risk), col(Message.text_enc), col(Message.triage_enc))
                .where(col(Message.conversation_id) == conv.id, col(Message.direction) == Direction.IN)
                .where(col(Message.kind) == Kind.TEXT)
                .order_by(col(Message.id))
            )
        ).all()
        for risk, text_enc, triage_enc in rows[:-1]:  # the last one is the consent itself
            if risk not in ("", Risk.LOW.value) or len(self.crypto.decrypt(text_enc)) >= STORY_CHARS:
                return True
            if triage_enc and json.loads(self.crypto.decrypt(triage_enc)).get("categories"):
                return True
        return False

    def _ask_intake(self, step: _Step) -> None:
        step.conv.pending = "intake_age"
        step.say(self.content.text("intake_age"))

    async def _welcome(self, s: AsyncSession, step: _Step) -> None:
        step.conv.state = State.WELCOME
        step.say(self.content.text("welcome", hours=self._hours_label()))
        if not self.hours.is_open(step.now):
            step.say(self._out_of_hours(step.conv, step.now))

    async def _offer(self, s: AsyncSession, step: _Step) -> None:
        conv = step.conv
        conv.state = State.OFFERED
        conv.pending = ""
        cats = {x for x in conv.categories.split(",") if x}
        referrals = self.content.referrals_for(cats)
        conv.referrals = ",".join(r.id for r in referrals)[:400]
        step.say(self.content.text("offer", referrals=self.content.lines(referrals, step.now)))

    async def _enqueue(self, s: AsyncSession, step: _Step) -> None:
        conv = step.conv
        conv.state = State.WAITING
        conv.pending = ""
        step.enqueue = True
        await self._ensure_handoff(s, conv, step.now)
        position = await self.queue.rank(self._entry(conv, step.now), step.now)
        step.say(self.content.text("waiting", position=position, wait=self._wait(position)))
        if not self.hours.is_open(step.now):
            conv.out_of_hours = True
            step.say(self._out_of_hours(conv, step.now))
        elif _risk(conv.risk).rank >= Risk.HIGH.rank:
            step.say(self._safety(conv, step.now))

    async def _waiting_update(self, step: _Step) -> None:
        position = await self.queue.rank(self._entry(step.conv, step.now), step.now)
        step.say(self.content.text("waiting_update", position=position, wait=self._wait(position)))

    async def _crisis(self, s: AsyncSession, step: _Step) -> None:
        """Life first: no consent needed (the confidentiality exception), no questions, the head of
        the queue, and the supervisors on duty alerted once."""
        conv, c = step.conv, self.content
        conv.risk = Risk.CRISIS.value
        first = not conv.emergency
        conv.emergency = True
        if first:
            step.alert = True
            self._audit(s, "crisis", conv.id, "crisis path")
            await self._alert_supervisors(s, conv)
        if conv.state == State.WITH_COUNSELLOR:
            return  # the counsellor is there and the console flags it; the bot says nothing
        if not first and conv.state == State.WAITING:
            step.say(c.text("crisis_repeat"))
            step.enqueue = True
            return
        step.say(c.text("crisis", lines=self._lines(conv, step.now, crisis=True)))
        conv.state = State.WAITING
        conv.pending = ""
        step.enqueue = True
        await self._ensure_handoff(s, conv, step.now)
        if not self.hours.is_open(step.now):
            conv.out_of_hours = True
            step.say(c.text("back_later", back=self._back(step.now)))

    async def _ensure_handoff(self, s: AsyncSession, conv: Conversation, now: datetime) -> None:
        """The waiting handoff row (the source of truth for the queue), made once."""
        existing = await s.scalar(
            select(Handoff).where(
                col(Handoff.conversation_id) == conv.id, col(Handoff.status) == HandoffStatus.WAITING
            )
        )
        if existing is None:
            s.add(Handoff(conversation_id=conv.id, risk=conv.risk, queued_at=now))
            self._audit(s, "handoff.enqueue", conv.id, f"risk={conv.risk}")
        else:
            existing.risk = conv.risk

    async def _alert_supervisors(self, s: AsyncSession, conv: Conversation) -> None:
        for sup in await s.scalars(
            select(Counsellor).where(
                col(Counsellor.on_duty).is_(True),
                col(Counsellor.active).is_(True),
                col(Counsellor.role).in_([Role.SUPERVISOR, Role.ADMIN]),
            )
        ):
            assert sup.id is not None
            s.add(Alert(counsellor_id=sup.id, conversation_id=conv.id, kind="crisis"))

    async def _close(self, s: AsyncSession, step: _Step, *, outcome: str, survey: bool) -> None:
        conv = step.conv
        step.release_from = await s.scalar(
            select(col(Handoff.counsellor_id)).where(
                col(Handoff.conversation_id) == conv.id, col(Handoff.status) == HandoffStatus.CLAIMED
            )
        )
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
        conv.state = State.CLOSED
        conv.closed_at = step.now
        conv.outcome = conv.outcome or outcome
        conv.pending = "survey" if survey else ""
        if survey:
            step.say(self.content.text("closing"))
        self._audit(s, "conversation.close", conv.id, f"outcome={conv.outcome}")
        await self._count(s, conv, handed_off=handed_off > 0)

    async def _erase(self, s: AsyncSession, step: _Step) -> None:
        """Erase every message of this person, then (once the last reply is out) the contact itself."""
        conv = step.conv
        if conv.state != State.CLOSED:
            await self._close(s, step, outcome="erased", survey=False)
        conv.outcome = "erased"
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
        step.erase = True
        self._audit(s, "erase", conv.id, f"conversations={len(ids)}")
        step.say(self.content.text("erase_done"))

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
        for cat in [x for x in conv.categories.split(",") if x]:
            await _increment(s, day, conv.channel, conv.risk, cat, conv.age_band, "conversations")

    async def close_idle(self, idle: timedelta) -> int:
        """Close, quietly, conversations still with the bot after ``idle`` without a word from the person
        (a message out of the blue could be read by someone else). Waiting ones keep their place."""
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
                await self._close(s, step, outcome="idle", survey=False)
                contact_id = conv.contact_id or ""
            await self._after_commit(step, contact_id)
        return len(ids)

    # -- counsellors (the console calls these) -----------------------------------------------------

    async def assign(self, conversation_id: str, counsellor_id: int) -> bool:
        """A counsellor takes a waiting conversation: it leaves the queue, the person is told, and from
        now on the bot is silent. False when it is not waiting (taken by someone else, or closed)."""
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
            conv.state = State.WITH_COUNSELLOR
            step.say(self.content.text("with_counsellor"), Sender.SYSTEM)
            self._audit(s, "handoff.claim", conv.id, f"counsellor={counsellor_id}")
            await self._write_replies(s, step)
            contact_id = conv.contact_id or ""
        await self._after_commit(step, contact_id)
        return True

    async def counsellor_reply(self, conversation_id: str, counsellor_id: int, text: str) -> bool:
        """A counsellor's message to the person, through the outbox on the conversation's channel.
        False unless this counsellor holds the conversation."""
        now = self.clock()
        async with self.db.session() as s, s.begin():
            conv = await self._held_by(s, conversation_id, counsellor_id)
            if conv is None:
                return False
            step = _Step(conv, now)
            step.say(Text(sanitize(text)[: self.max_chars]), Sender.COUNSELLOR)
            self._audit(s, "reply", conv.id, f"counsellor={counsellor_id}")
            await self._write_replies(s, step)
            contact_id = conv.contact_id or ""
        await self._after_commit(step, contact_id)
        return True

    async def close_by_counsellor(
        self, conversation_id: str, counsellor_id: int, *, outcome: str, referrals: list[str]
    ) -> bool:
        """The counsellor ends the conversation: the person gets the closing words and the survey."""
        now = self.clock()
        async with self.db.session() as s, s.begin():
            conv = await self._held_by(s, conversation_id, counsellor_id)
            if conv is None:
                return False
            step = _Step(conv, now)
            conv.outcome = outcome
            if referrals:
                conv.referrals = ",".join(referrals)[:400]
            await self._close(s, step, outcome=outcome, survey=True)
            await self._write_replies(s, step)
            contact_id = conv.contact_id or ""
        await self._after_commit(step, contact_id)
        return True

    async def requeue(self, conversation_id: str, counsellor_id: int) -> QueueEntry | None:
        """Back to the queue, keeping the time it first queued (nobody loses their place)."""
        now = self.clock()
        async with self.db.session() as s, s.begin():
            conv = await self._held_by(s, conversation_id, counsellor_id)
            if conv is None:
                return None
            handoff = await s.scalar(
                select(Handoff).where(
                    col(Handoff.conversation_id) == conversation_id,
                    col(Handoff.status) == HandoffStatus.CLAIMED,
                )
            )
            assert handoff is not None
            handoff.status = HandoffStatus.WAITING
            handoff.counsellor_id = None
            handoff.claimed_at = None
            conv.state = State.WAITING
            conv.updated_at = now
            entry = QueueEntry(conv.id, _risk(conv.risk), handoff.queued_at, conv.channel)
            self._audit(s, "handoff.requeue", conv.id, f"from={counsellor_id}")
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
        holder = await s.scalar(
            select(col(Handoff.counsellor_id)).where(
                col(Handoff.conversation_id) == conversation_id, col(Handoff.status) == HandoffStatus.CLAIMED
            )
        )
        return conv if holder == counsellor_id else None

    # -- writing replies and telling the rest -------------------------------------------------------

    async def _write_replies(self, s: AsyncSession, step: _Step) -> int:
        conv = step.conv
        conv.updated_at = step.now
        replies = self._joined(conv.channel, step.replies)
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
            await s.flush()
            assert msg.id is not None
            s.add(
                Outbox(message_id=msg.id, conversation_id=conv.id, channel=conv.channel, created_at=step.now)
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
            self.outbox_wakeup.set()

    # -- helpers ---------------------------------------------------------------------------------------

    def _entry(self, conv: Conversation, now: datetime) -> QueueEntry:
        return QueueEntry(conv.id, _risk(conv.risk), now, conv.channel)

    def _wait(self, position: int) -> str:
        if position <= 1:
            return self.content.fmt("wait_soon")
        return self.content.fmt("wait_minutes", minutes=(position - 1) * self.minutes_per_place)

    def _lines(
        self, conv: Conversation, now: datetime, *, crisis: bool = False, always_open: bool = False
    ) -> str:
        cats = {x for x in conv.categories.split(",") if x}
        # In a crisis and out of hours: the 24-hour lines only, short enough to read at once.
        refs = self.content.referrals_for(cats, crisis_only=crisis or always_open)
        return self.content.lines(refs, now)

    def _safety(self, conv: Conversation, now: datetime) -> Text:
        return self.content.text("waiting_safety", lines=self._lines(conv, now, always_open=True))

    def _out_of_hours(self, conv: Conversation, now: datetime) -> Text:
        back = self.content.text("back_later", back=self._back(now)).text
        return self.content.text(
            "out_of_hours", back_later=back, lines=self._lines(conv, now, always_open=True)
        )

    def _back(self, now: datetime) -> str:
        nxt = self.hours.next_open(now)
        if nxt is None:
            return ""
        local = nxt.astimezone(self.hours.tz)
        return self.content.fmt(
            "back",
            month=local.month,
            day=local.day,
            weekday=self.content.formats["weekdays"][local.weekday()],
            time=local.strftime("%H:%M"),
        )

    def _hours_label(self) -> str:
        if self.hours.always():
            return self.content.fmt("hours_always")
        names = self.content.formats["weekdays"]
        parts = []
        for first, last, start, end in self.hours.parts:
            if first == last:
                days = names[first]
            else:
                days = self.content.fmt("day_range", first=names[first], last=names[last])
            parts.append(self.content.fmt("hours_range", days=days, start=_hhmm(start), end=_hhmm(end)))
        return self.content.fmt("hours_joiner").join(parts)

    @staticmethod
    def _audit(
        s: AsyncSession, action: str, conversation_id: str, detail: str = "", *, actor: str = "system"
    ) -> None:
        s.add(AuditLog(actor=actor, action=action, conversation_id=conversation_id, detail=detail))


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60}:{minutes % 60:02d}"


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
