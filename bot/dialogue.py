"""The conversation as a table a clinician can review: what moves it, and what the bot says. Pure, no I/O.

``Dialogue.step(conv, event, now)`` takes a conversation's state (``Conv``), one event (a message with its
triage, a choice, a keyword, a picture, an idle timeout, a counsellor's action) and the clock, and returns
the new state and the replies to write (``Turn``). The engine (bot/engine.py) keeps storage, transactions,
the queue and the outbox, and does what the turn says.

States: new -> welcome -> listening -> offered -> waiting -> with_counsellor -> closed. Within them a question
may await its answer (``pending``): an intake question, the direct question about danger, an erase
confirmation, the survey.

Safety: every message is read against one table, ``SAFETY`` (phase × level -> action), before anything else
of its state is done, so that no form or button stands between a person and help:

- a crisis (the triage's, or たすけて / 緊急) takes the crisis path from any state;
- a conversation at high or above goes to the queue at once, with the 24-hour lines while waiting;
- at medium the offer of a counsellor comes with the first reply, before any question;
- distress (exhaustion, hopelessness, at the limit, wanting everything to stop, crying, fear) below high
  gets the direct question: is the person thinking of dying or of hurting themselves, or in danger now?
  はい and わからない take the crisis path, いいえ continues; asked at most once unless the risk rises.

An answer counts only when it answers the question asked; anything else is a message like any other.
docs/safety.md shows the table and every reply's text; ``tsunagi safety-table`` writes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum

from bot.content import Content, key
from bot.hours import Hours
from bot.models import Sender, State
from triage import Category, Risk, TriageResult

STORY_CHARS = 20  # a message this long is taken as telling something, not a greeting
DISTRESS = "distress"  # the triage's signal (content/triage/distress.yaml)

# What the bot may be waiting for (Conv.pending).
INTAKE_AGE = "intake_age"
INTAKE_PREFECTURE = "intake_prefecture"
INTAKE_SAFE = "intake_safe"
ASK_DANGER = "ask_danger"
ERASE_CONFIRM = "erase_confirm"
SURVEY = "survey"
ASK_AGE = "ask_age"  # the age band, asked once when high risk skipped the intake (children's lines need it)
INTAKE = (INTAKE_AGE, INTAKE_PREFECTURE, INTAKE_SAFE)
BEFORE_QUEUE = (State.NEW, State.WELCOME, State.LISTENING, State.OFFERED)
# Categories in which someone else harmed them: the acknowledgement says it is not their fault.
HARMED = frozenset(
    {
        Category.DV.value,
        Category.SEXUAL_VIOLENCE.value,
        Category.CHILD_ABUSE.value,
        Category.SEXUAL_HARASSMENT.value,
        Category.POWER_HARASSMENT.value,
        Category.MATERNITY_HARASSMENT.value,
        Category.ACADEMIC_HARASSMENT.value,
        Category.JOB_HUNTING.value,
        Category.BULLYING.value,
        Category.STALKING.value,
        Category.EXPLOITATION.value,
    }
)


class Phase(StrEnum):
    """A state as the safety table reads it: the states, with the questions that await an answer."""

    NEW = "new"  # nothing said yet: this is the first message
    WELCOME = "welcome"  # the terms are shown, consent is awaited
    LISTENING = "listening"  # consent given, the bot listens for what is wrong
    INTAKE = "intake"  # an intake question (age band, prefecture, safe now) awaits its answer
    ASKING = "asking"  # the direct question about danger awaits its answer
    OFFERED = "offered"  # services and a counsellor offered
    WAITING = "waiting"  # in the queue
    WITH_COUNSELLOR = "with_counsellor"  # a counsellor is there; the bot is silent
    CLOSED = "closed"  # a message after closing starts a new conversation


class Level(StrEnum):
    """What a message makes of the conversation: its risk after the message, and distress."""

    CRISIS = "crisis"  # crisis in this message (the triage's reasons), or たすけて / 緊急
    HIGH = "high"  # the conversation is at high or above
    MEDIUM_DISTRESS = "medium+distress"
    MEDIUM = "medium"
    DISTRESS = "distress"  # distress without a category, below medium
    LOW = "low"


class Action(StrEnum):
    CRISIS = "crisis"  # 110 / 119 and the 24-hour lines, the head of the queue, supervisors alerted
    QUEUE = "queue"  # to the queue at once (or moved up), with the 24-hour lines while waiting
    OFFER_AND_ASK = "offer_and_ask"  # the offer of a counsellor, then the direct question
    ASK = "ask"  # the direct question
    OFFER = "offer"  # the offer of a counsellor, before any question
    FLOW = "flow"  # what the state does with a message (see ``Dialogue._flow``)
    SILENT = "silent"  # a counsellor is there and reads it in the console


_A = Action
# The safety table: for each phase, the action for each level, in the order of ``Level``.
_ROWS: dict[Phase, tuple[Action, Action, Action, Action, Action, Action]] = {
    #                     crisis     high      medium+distress   medium    distress  low
    Phase.NEW: (_A.CRISIS, _A.QUEUE, _A.OFFER_AND_ASK, _A.OFFER, _A.ASK, _A.FLOW),
    Phase.WELCOME: (_A.CRISIS, _A.QUEUE, _A.OFFER_AND_ASK, _A.OFFER, _A.ASK, _A.FLOW),
    Phase.LISTENING: (_A.CRISIS, _A.QUEUE, _A.OFFER_AND_ASK, _A.OFFER, _A.ASK, _A.FLOW),
    Phase.INTAKE: (_A.CRISIS, _A.QUEUE, _A.OFFER_AND_ASK, _A.OFFER, _A.ASK, _A.FLOW),
    Phase.ASKING: (_A.CRISIS, _A.QUEUE, _A.OFFER, _A.OFFER, _A.FLOW, _A.FLOW),
    Phase.OFFERED: (_A.CRISIS, _A.QUEUE, _A.ASK, _A.FLOW, _A.ASK, _A.FLOW),
    Phase.WAITING: (_A.CRISIS, _A.QUEUE, _A.ASK, _A.FLOW, _A.ASK, _A.FLOW),
    Phase.WITH_COUNSELLOR: (_A.CRISIS, _A.SILENT, _A.SILENT, _A.SILENT, _A.SILENT, _A.SILENT),
    Phase.CLOSED: (_A.CRISIS, _A.QUEUE, _A.OFFER_AND_ASK, _A.OFFER, _A.ASK, _A.FLOW),
}
SAFETY: dict[tuple[Phase, Level], Action] = {
    (phase, level): action for phase, row in _ROWS.items() for level, action in zip(Level, row, strict=True)
}


@dataclass(frozen=True)
class Conv:
    """The part of a conversation the dialogue reads and writes."""

    state: State = State.NEW
    risk: Risk = Risk.LOW
    categories: tuple[str, ...] = ()  # Category values, in the taxonomy's order
    pending: str = ""
    consented: bool = False
    emergency: bool = False  # the crisis path was taken
    out_of_hours: bool = False
    told: bool = False  # before consent, something of their trouble was said (not only a greeting)
    danger_asked: str = ""  # the risk when the direct question was last asked; "" never
    danger_answer: str = ""  # yes, no, unsure, or "message" (something else was written)
    age_band: str = ""
    prefecture: str = ""
    safe_now: str = ""
    survey_answer: str = ""
    outcome: str = ""
    referrals: str = ""  # ids of the services offered, comma-separated
    acked: bool = False  # what they told was acknowledged (said once, not again in the next reply)
    age_asked: bool = False  # the age band was asked (the intake's question, or once after high risk)

    @property
    def phase(self) -> Phase:
        if self.pending == ASK_DANGER:
            return Phase.ASKING
        if self.pending in INTAKE:
            return Phase.INTAKE
        return Phase(self.state.value)


# -- events ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Said:
    """The person wrote, pressed a choice, or sent something the triage cannot read (``media``)."""

    text: str
    triage: TriageResult | None = None  # None: not read (a picture, a file)
    choice: str = ""  # a choice the channel saw picked inside a longer text (a line of a mail)
    media: bool = False  # a picture, a sticker, a place or a file without text
    attachments: int = 0  # files not kept (channels that do not say which)
    pictures: int = 0  # pictures kept: a counsellor who talks with them can see them
    refused: tuple[str, ...] = ()  # what was not kept, by kind (pdf, archive, program, ...)
    quiet: bool = False  # the rest of an album: stored and shown, nothing said
    edited: bool = False  # a new version of a message already answered
    truncated: int = 0  # the text was cut to this many characters


@dataclass(frozen=True)
class Opened:
    """They opened the chat or added the account."""


@dataclass(frozen=True)
class Left:
    """They blocked the account or left."""


@dataclass(frozen=True)
class Timeout:
    """Silence for the idle time, while the conversation is still with the bot."""


@dataclass(frozen=True)
class Claimed:
    """A counsellor took the conversation from the queue."""


@dataclass(frozen=True)
class Requeued:
    """The counsellor put it back in the queue (it keeps its place)."""


@dataclass(frozen=True)
class ClosedByCounsellor:
    outcome: str


Event = Said | Opened | Left | Timeout | Claimed | Requeued | ClosedByCounsellor


# -- what a step returns --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One message to the person: an entry of content/messages.yaml and its fields. ``waiting`` and
    ``waiting_update`` get their place in the queue from the engine (``QUEUE_FIELDS``)."""

    key: str
    fields: tuple[tuple[str, str | int], ...] = ()
    sender: Sender = Sender.BOT


QUEUE_FIELDS = frozenset({"position", "wait"})


@dataclass(frozen=True)
class Turn:
    conv: Conv
    replies: tuple[Reply, ...] = ()
    action: Action | None = None  # the safety table's action, when a message was read against it
    level: Level | None = None
    enqueue: bool = False  # in the queue (or its risk there updated)
    alert: bool = False  # the first crisis of the conversation: the supervisors on duty are alerted
    close: str = ""  # the outcome, when the conversation closes now
    erase: bool = False  # every message of the person goes, then the contact
    restart: bool = False  # the conversation was closed: the message starts a new one
    audit: tuple[tuple[str, str], ...] = ()  # (action, detail): never message text


@dataclass
class _Out:
    conv: Conv
    replies: list[Reply] = field(default_factory=list)
    action: Action | None = None
    level: Level | None = None
    enqueue: bool = False
    alert: bool = False
    close: str = ""
    erase: bool = False
    audit: list[tuple[str, str]] = field(default_factory=list)

    def say(self, message_key: str, sender: Sender = Sender.BOT, **fields: str | int) -> None:
        self.replies.append(Reply(message_key, tuple(fields.items()), sender))

    def set(self, **changes: object) -> None:
        self.conv = replace(self.conv, **changes)  # type: ignore[arg-type]

    def turn(self, restart: bool = False) -> Turn:
        return Turn(
            self.conv,
            tuple(self.replies),
            self.action,
            self.level,
            self.enqueue,
            self.alert,
            self.close,
            self.erase,
            restart,
            tuple(self.audit),
        )


# -- the dialogue ---------------------------------------------------------------------------------------


class Dialogue:
    def __init__(self, content: Content, hours: Hours) -> None:
        self.content = content
        self.hours = hours

    def continues(self, conv: Conv, text: str) -> bool:
        """Does a message to a closed conversation belong to it (an answer to its survey)? Otherwise it
        starts a new conversation."""
        return conv.state != State.CLOSED or (conv.pending == SURVEY and self.content.is_answer(SURVEY, text))

    def step(self, conv: Conv, event: Event, now: datetime) -> Turn:
        out = _Out(conv)
        if isinstance(event, Said):
            if conv.state == State.CLOSED and not self.continues(conv, event.text):
                return Turn(conv, restart=True)
            self._said(out, event, now)
        elif isinstance(event, Opened):
            if conv.state == State.NEW:
                self._welcome(out, now)
        elif isinstance(event, Left):
            if conv.state != State.CLOSED:
                self._close(out, "left", survey=False)
        elif isinstance(event, Timeout):
            self._timeout(out)
        elif isinstance(event, Claimed):
            out.set(state=State.WITH_COUNSELLOR, pending="")
            out.say("with_counsellor", Sender.SYSTEM)
        elif isinstance(event, Requeued):
            out.set(state=State.WAITING)
        elif isinstance(event, ClosedByCounsellor):
            out.set(outcome=event.outcome)
            self._close(out, event.outcome, survey=True)
        return out.turn()

    # -- a message -------------------------------------------------------------------------------------

    def _said(self, out: _Out, event: Said, now: datetime) -> None:
        if event.edited:
            self._edited(out, event, now)
            return
        if event.truncated:
            out.say("truncated", max=event.truncated)
        if event.media:
            self._media(out, event, now)
        else:
            self._message(out, event, now)
        if out.erase or event.quiet or out.conv.state == State.WITH_COUNSELLOR:
            return
        # What became of what came with it: pictures kept (a counsellor who talks with them can see
        # them), files refused by kind. Said first, before the answer and its choices, but never
        # before what a crisis needs said.
        notes: list[Reply] = []
        if event.pictures:
            notes.append(Reply("media_picture_kept"))
        refused = len(event.refused) or event.attachments
        if refused:
            kinds = self.content.fmt("kind_joiner").join(
                self.content.fmt(f"kind_{k}") for k in dict.fromkeys(event.refused or ("other",))
            )
            notes.append(Reply("attachments_not_kept", (("count", refused), ("kinds", kinds))))
        at = len(out.replies) if out.alert else 0
        out.replies[at:at] = notes

    def _edited(self, out: _Out, event: Said, now: datetime) -> None:
        """A new version of a message: the dialogue does not move for it (it answers no question twice),
        but a risk it raises counts: a crisis takes the crisis path, a waiting conversation moves up."""
        result = event.triage
        if result is None:
            return
        if result.risk is Risk.CRISIS and result.reasons:
            self._message(out, replace(event, edited=False, choice=""), now)
            return
        before = out.conv
        risk = result.risk if result.risk.rank > before.risk.rank else before.risk
        out.set(risk=risk, categories=_merge(before.categories, result.categories))
        if before.state == State.WAITING and risk.rank > before.risk.rank:
            out.enqueue = True

    def _media(self, out: _Out, event: Said, now: datetime) -> None:
        """A picture, a sticker, a place or a file without text: text triage cannot read it. The person
        is told what became of it (``_said``), never promised a look nobody can give. Alone it puts
        nobody in the queue, unless the conversation is already at medium risk or above (then a
        person should look)."""
        conv = out.conv
        if conv.state == State.NEW:
            self._welcome(out, now)  # a first contact that is a picture still gets the terms
            return
        if conv.state == State.WITH_COUNSELLOR or event.quiet:
            return  # the counsellor sees it; the rest of an album was answered with its first picture
        if not (event.pictures or event.refused or event.attachments):
            out.say("media_unreadable")
        if conv.state == State.WAITING or not conv.consented:
            return
        if conv.risk.rank >= Risk.MEDIUM.rank:
            self._enqueue(out, now)

    def _message(self, out: _Out, event: Said, now: datetime) -> None:
        c = self.content
        before = out.conv
        result = event.triage
        if result is not None:
            risk = result.risk if result.risk.rank > before.risk.rank else before.risk
            out.set(risk=risk, categories=_merge(before.categories, result.categories))
        answer = event.choice or event.text
        keyword = c.keyword_of(answer)

        if out.conv.pending == ERASE_CONFIRM:
            out.set(pending="")
            if c.is_answer("erase_yes", answer):
                self._erase(out)
                return
            if c.is_answer("erase_no", answer):
                out.say("erase_cancelled")
                return

        level = self.level(before, out.conv, result, keyword)
        out.level = level
        phase = before.phase
        action = SAFETY[(phase, level)]
        self._act(out, event, before, phase, action, answer, keyword, now)
        if before.state == out.conv.state == State.WAITING and out.conv.risk.rank > before.risk.rank:
            out.enqueue = True  # a message that raises the risk of a waiting conversation moves it at once

    def _act(
        self,
        out: _Out,
        event: Said,
        before: Conv,
        phase: Phase,
        action: Action,
        answer: str,
        keyword: str | None,
        now: datetime,
    ) -> None:
        c = self.content
        if action is Action.CRISIS:
            self._record_answer(out, answer)
            out.action = action
            self._crisis(out, now)
            return
        if keyword == "end" and out.conv.state not in (State.NEW, State.WELCOME):
            self._close(out, "ended_by_user", survey=True)
            return
        if keyword == "erase":
            out.set(pending=ERASE_CONFIRM)
            out.say("erase_confirm")
            return
        if keyword == "counsellor":
            self._counsellor_asked(out, now)
            return
        if phase is Phase.CLOSED:  # the survey's answer (any other message started a new conversation)
            skipped = c.is_answer("skip", answer)
            out.set(pending="", survey_answer="" if skipped else key(answer)[:32])
            out.say("survey_thanks")
            return

        if before.pending == ASK_AGE:
            out.set(pending="")
            band = c.age_band(answer)
            if band is not None or c.is_answer("skip", answer):
                out.set(age_band=band or "")
                out.action = Action.FLOW
                self._age_answered(out, now)
                return
            # Anything else is a message like any other (the question is not asked again).

        out.action = action
        # An answer to the question asked is taken as such, unless the conversation is at high.
        if phase is Phase.ASKING and action is not Action.QUEUE:
            danger = self.danger_answer(answer)
            if danger:
                self._danger_answered(out, danger, now)
                return
        if phase is Phase.INTAKE and action is not Action.QUEUE:
            if self._intake_answered(out, answer, now):
                out.action = Action.FLOW
                return
        if phase is Phase.ASKING:
            self._record_answer(out, answer)

        if action is Action.QUEUE:
            if out.conv.state == State.WAITING:
                self._waiting_update(out, now, rose=before.risk.rank < Risk.HIGH.rank)
            else:
                if before.state == State.NEW:
                    self._welcome(out, now)
                self._enqueue(out, now, ack=True)
        elif action is Action.OFFER and phase is Phase.LISTENING:
            # Their first words after consent: a counsellor offered at once, then the questions (still
            # optional: they find the services that fit, and feed the de-identified statistics).
            out.say("offer_counsellor", ack=self._ack(out))
            self._first_question(out)
        elif action is Action.OFFER_AND_ASK or action is Action.OFFER:
            if before.state == State.NEW:
                self._welcome(out, now)
            if out.conv.state in (State.OFFERED, State.WAITING):
                self._flow(out, event, answer, now)  # offered already: what the state does
            else:
                self._offer(out, now)
                if action is Action.OFFER_AND_ASK:
                    self._ask(out)
        elif action is Action.ASK:
            if before.state == State.NEW:
                self._welcome(out, now)
            if before.state in (State.NEW, State.WELCOME):
                out.set(told=True)
            self._ask(out)
        elif action is Action.FLOW:
            self._flow(out, event, answer, now)
        # SILENT: the counsellor reads it in the console.

    def level(self, before: Conv, after: Conv, result: TriageResult | None, keyword: str | None) -> Level:
        """The row of the safety table a message falls in."""
        if keyword == "crisis":
            return Level.CRISIS
        if (
            result is not None
            and result.risk is Risk.CRISIS
            and (bool(result.reasons) or before.risk is not Risk.CRISIS)
        ):
            return Level.CRISIS
        if after.risk.rank >= Risk.HIGH.rank:
            return Level.HIGH
        asked = Risk(after.danger_asked) if after.danger_asked else None
        distress = (
            result is not None
            and DISTRESS in result.signals
            and (asked is None or after.risk.rank > asked.rank)  # asked once, unless the risk rose
        )
        if after.risk is Risk.MEDIUM:
            return Level.MEDIUM_DISTRESS if distress else Level.MEDIUM
        return Level.DISTRESS if distress else Level.LOW

    # -- what each state does with a message ------------------------------------------------------------

    def _flow(self, out: _Out, event: Said, answer: str, now: datetime) -> None:
        c, conv = self.content, out.conv
        state = conv.state
        if state == State.NEW:
            out.set(told=self._story(event))
            self._welcome(out, now)
        elif state == State.WELCOME:
            if c.is_answer("consent", answer):
                out.set(consented=True, state=State.LISTENING)
                if conv.told:  # they already told us before agreeing
                    out.say("listening_after_consent_with_story")
                    self._first_story(out, now)
                else:
                    out.say("listening")
            elif c.is_answer("decline", answer):
                out.say("declined", lines=self._lines(conv, now, always_open=True))
                self._close(out, "declined", survey=False)
            else:
                if self._story(event):
                    out.set(told=True)
                out.say("consent_needed")
        elif state == State.LISTENING:
            if conv.pending in INTAKE:
                self._offer(out, now)  # not an answer: the questions stop, the message is heard
            else:
                if conv.pending:
                    out.set(pending="")
                self._first_story(out, now, intro=True)
        elif state == State.OFFERED:
            if c.is_answer("info_only", answer):
                self._close(out, "information", survey=True)
            else:
                out.say("offer_again")
        elif state == State.WAITING:
            self._waiting_update(out, now)

    def _first_story(self, out: _Out, now: datetime, *, intro: bool = False) -> None:
        """What they told first gets the offer when it was serious or distressed; otherwise the questions."""
        conv = out.conv
        if conv.risk.rank >= Risk.MEDIUM.rank or conv.danger_asked:
            self._offer(out, now)
            return
        if intro:
            out.say("intake_intro", ack=self._ack(out))
        self._first_question(out)

    def _first_question(self, out: _Out) -> None:
        """The intake's first question: the age band, unless this person gave it (or chose not to) before,
        in this conversation or an earlier one (bot/storage/contacts.py): it is asked once."""
        if out.conv.age_band or out.conv.age_asked:
            out.set(pending=INTAKE_PREFECTURE)
            out.say("intake_prefecture")
            return
        out.set(pending=INTAKE_AGE, age_asked=True)
        out.say("intake_age")

    def _intake_answered(self, out: _Out, answer: str, now: datetime) -> bool:
        """An intake question answered (one of its choices, or text that plainly is one); False otherwise."""
        c, pending = self.content, out.conv.pending
        skipped = c.is_answer("skip", answer)
        if pending == INTAKE_AGE:
            band = c.age_band(answer)
            if band is None and not skipped:
                return False
            out.set(age_band=band or "", pending=INTAKE_PREFECTURE)
            out.say("intake_prefecture")
        elif pending == INTAKE_PREFECTURE:
            prefecture = c.prefecture(answer)
            if prefecture is None and not skipped:
                return False
            out.set(prefecture=prefecture or "", pending=INTAKE_SAFE)
            out.say("intake_safe")
        else:
            if c.is_answer("safe_no", answer):
                out.set(safe_now="no", pending="")
                if out.conv.risk.rank < Risk.HIGH.rank:
                    out.set(risk=Risk.HIGH)
                out.say("unsafe")
                self._enqueue(out, now)  # at high: no offer to accept first
                return True
            if c.is_answer("safe_yes", answer):
                out.set(safe_now="yes")
            elif c.is_answer("safe_unsure", answer):
                out.set(safe_now="unsure")
            elif not skipped:
                return False
            out.set(pending="")
            self._offer(out, now)
        return True

    # -- the direct question -----------------------------------------------------------------------------

    def danger_answer(self, text: str) -> str:
        """yes, no or unsure when the text answers the direct question (a choice, or a reply that starts
        with one: はい、… ), "" otherwise."""
        c = self.content
        head = text.strip()
        for mark in self.content.answer_separators:
            head = head.split(mark, 1)[0]
        for candidate in (text, head):
            for group, value in (("danger_yes", "yes"), ("danger_unsure", "unsure"), ("danger_no", "no")):
                if c.is_answer(group, candidate):
                    return value
        return ""

    def _ask(self, out: _Out) -> None:
        out.set(pending=ASK_DANGER, danger_asked=out.conv.risk.value, danger_answer="")
        out.say("ask_danger", ack=self._ack(out))
        out.audit.append(("dialogue.ask_danger", f"risk={out.conv.risk.value}"))

    def _record_answer(self, out: _Out, answer: str) -> None:
        """The direct question, when it awaited an answer, gets what was written in its place."""
        if out.conv.pending != ASK_DANGER:
            return
        danger = self.danger_answer(answer) or "message"
        out.set(pending="", danger_answer=danger, danger_asked=out.conv.risk.value)
        out.audit.append(("dialogue.danger_answer", f"answer={danger}"))

    def _danger_answered(self, out: _Out, danger: str, now: datetime) -> None:
        out.set(pending="", danger_answer=danger)
        out.audit.append(("dialogue.danger_answer", f"answer={danger}"))
        if danger in ("yes", "unsure"):
            out.action = Action.CRISIS
            self._crisis(out, now)
            return
        out.say("danger_no")
        state = out.conv.state
        if state == State.WELCOME:
            out.say("consent_needed")
        elif state == State.LISTENING:
            self._offer(out, now)
        elif state == State.OFFERED:
            out.say("offer_again")
        elif state == State.WAITING:
            self._waiting_update(out, now)

    # -- keywords -----------------------------------------------------------------------------------------

    def _counsellor_asked(self, out: _Out, now: datetime) -> None:
        conv = out.conv
        if conv.state == State.NEW:
            self._welcome(out, now)
        if conv.state == State.WAITING:
            if conv.pending:
                out.set(pending="")
            self._waiting_update(out, now)
            return
        if conv.state == State.WITH_COUNSELLOR:
            return
        if conv.pending == ASK_DANGER:
            out.set(danger_answer="message")
        # They read the terms in the welcome and asked for a person.
        out.set(consented=True)
        self._enqueue(out, now)

    # -- the paths ----------------------------------------------------------------------------------------

    def _welcome(self, out: _Out, now: datetime) -> None:
        out.set(state=State.WELCOME)
        out.say("welcome", hours=self._hours_label())
        if not self.hours.is_open(now):
            self._out_of_hours(out, now)

    def _offer(self, out: _Out, now: datetime) -> None:
        conv = out.conv
        referrals = self.content.referrals_for(set(conv.categories), age_band=conv.age_band, now=now)
        out.set(state=State.OFFERED, pending="", referrals=",".join(r.id for r in referrals)[:400])
        out.say("offer", ack=self._ack(out), referrals=self.content.lines(referrals, now))

    def _enqueue(self, out: _Out, now: datetime, *, ack: bool = False) -> None:
        out.set(state=State.WAITING, pending="")
        out.enqueue = True
        out.say("waiting", ack=self._ack(out) if ack else "")
        if not self.hours.is_open(now):
            out.set(out_of_hours=True)
            self._out_of_hours(out, now)
        elif out.conv.risk.rank >= Risk.HIGH.rank:
            out.say("waiting_safety", lines=self._lines(out.conv, now, always_open=True))
        if out.conv.risk.rank >= Risk.HIGH.rank:
            self._ask_age(out)

    def _ack(self, out: _Out) -> str:
        """The first reply to what they told receives it first (SNS相談 practice: what was heard, that it is
        not their fault, that writing was right), once: the next replies do not say it again."""
        if out.conv.acked:
            return ""
        out.set(acked=True)
        cats = set(out.conv.categories)
        name = "ack_harm" if cats & HARMED else "ack_default"
        if Category.SUICIDE.value in cats:
            name = "ack_suicide"
        return self.content.fmt(name) + "\n"

    def _ask_age(self, out: _Out) -> None:
        """High risk skipped the intake: the age band is asked once, gently (the children's lines need it)."""
        if out.conv.age_band or out.conv.age_asked:
            return
        out.set(pending=ASK_AGE, age_asked=True)
        out.say("ask_age")

    def _age_answered(self, out: _Out, now: datetime) -> None:
        conv = out.conv
        if self.content.young(conv.age_band):
            refs = self.content.referrals_for(set(conv.categories), age_band=conv.age_band, now=now)
            out.say("age_young", lines=self.content.lines(refs, now))
        else:
            out.say("age_thanks")

    def _waiting_update(self, out: _Out, now: datetime, *, rose: bool = False) -> None:
        if rose:
            out.enqueue = True  # the queue moves it at once
        out.say("waiting_update")
        if rose and out.conv.risk.rank >= Risk.HIGH.rank:
            out.say("waiting_safety", lines=self._lines(out.conv, now, always_open=True))
            self._ask_age(out)

    def _crisis(self, out: _Out, now: datetime) -> None:
        """Life first: no consent needed (the confidentiality exception), no questions, the head of the
        queue, and the supervisors on duty alerted once."""
        first = not out.conv.emergency
        out.set(risk=Risk.CRISIS, emergency=True)
        if first:
            out.alert = True
            out.audit.append(("crisis", "crisis path"))
        state = out.conv.state
        if state == State.WITH_COUNSELLOR:
            return  # the counsellor is there and the console flags it; the bot says nothing
        if not first and state == State.WAITING:
            out.say("crisis_repeat")
            out.enqueue = True
            return
        out.say("crisis", lines=self._lines(out.conv, now, crisis=True))
        out.set(state=State.WAITING, pending="", acked=True)
        out.enqueue = True
        if not self.hours.is_open(now):
            out.set(out_of_hours=True)
            out.say("back_later", back=self._back(now))
        self._ask_age(out)

    def _close(self, out: _Out, outcome: str, *, survey: bool) -> None:
        out.set(state=State.CLOSED, outcome=out.conv.outcome or outcome, pending=SURVEY if survey else "")
        out.close = out.conv.outcome
        if survey:
            out.say("closing")

    def _erase(self, out: _Out) -> None:
        if out.conv.state != State.CLOSED:
            self._close(out, "erased", survey=False)
        out.set(outcome="erased", age_band="", prefecture="", survey_answer="", pending="")
        out.erase = True
        out.say("erase_done")

    def _timeout(self, out: _Out) -> None:
        conv = out.conv
        if conv.state not in BEFORE_QUEUE:
            return  # waiting ones keep their place
        if conv.pending == ASK_DANGER:
            # Asked whether they are thinking of dying, and no answer: a counsellor looks (nothing is
            # sent: a message out of the blue could be read by someone else).
            out.set(state=State.WAITING, pending="", danger_answer="none")
            out.enqueue = True
            out.audit.append(("dialogue.danger_answer", "answer=none"))
            return
        self._close(out, "idle", survey=False)

    # -- what the texts are filled with -------------------------------------------------------------------

    def _story(self, event: Said) -> bool:
        """Did this message say something of their trouble (not just a greeting)?"""
        result = event.triage
        if result is not None and (result.risk is not Risk.LOW or result.categories):
            return True
        return len(event.text) >= STORY_CHARS

    def _lines(self, conv: Conv, now: datetime, *, crisis: bool = False, always_open: bool = False) -> str:
        # In a crisis and out of hours: the 24-hour lines only, short enough to read at once.
        refs = self.content.referrals_for(
            set(conv.categories), age_band=conv.age_band, crisis_only=crisis or always_open
        )
        return self.content.lines(refs, now)

    def _out_of_hours(self, out: _Out, now: datetime) -> None:
        back = self.content.text("back_later", back=self._back(now)).text
        out.say("out_of_hours", back_later=back, lines=self._lines(out.conv, now, always_open=True))

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


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60}:{minutes % 60:02d}"


def _merge(current: tuple[str, ...], new: tuple[Category, ...]) -> tuple[str, ...]:
    cats = set(current) | {c.value for c in new}
    order = {c.value: i for i, c in enumerate(Category)}
    return tuple(sorted(cats, key=lambda c: order.get(c, 99)))
