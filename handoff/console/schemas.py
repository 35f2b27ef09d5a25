"""What the console API takes and answers, as pydantic models: the OpenAPI then says what each route
returns. The answers keep the shapes the page reads (docs/contract.md); a field that only some items have
(a message's ``full_text``, ``pictures``, ``delivery``…) is left out where it is not set, as before, on
the routes declared with ``response_model_exclude_unset``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bot.models import DISPLAY_NAME_MAX, Role
from bot.storage.credentials import USERNAME

MAX_TEXT = 5000
MAX_LIMIT = 20  # conversations one counsellor may be given at once, at most

# -- what the page sends ------------------------------------------------------------------------------


class LoginIn(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class PasswordIn(BaseModel):
    old: str = Field(max_length=1024)
    new: str = Field(max_length=1024)


class TextIn(BaseModel):
    text: str = Field(min_length=1, max_length=MAX_TEXT)


class TransferIn(BaseModel):
    to: str | None = Field(default=None, max_length=64)  # a username, or null for the queue


class CloseIn(BaseModel):
    outcome: str = Field(min_length=1, max_length=32)
    referrals: list[str] = Field(default_factory=list, max_length=30)


class DutyIn(BaseModel):
    on_duty: bool


class DisplayNameIn(BaseModel):
    display_name: str = Field(min_length=1, max_length=DISPLAY_NAME_MAX)


class AccountIn(BaseModel):
    username: str = Field(pattern=USERNAME)
    role: Role = Role.COUNSELLOR
    limit: int | None = Field(default=None, ge=1, le=MAX_LIMIT)  # None: TSUNAGI_COUNSELLOR_LIMIT
    display_name: str = Field(default="", max_length=DISPLAY_NAME_MAX)


class AccountChange(BaseModel):
    role: Role | None = None
    limit: int | None = Field(default=None, ge=1, le=MAX_LIMIT)  # given as null: back to the default
    active: bool | None = None


# A 422 is FastAPI's list of validation errors, or the console's own reason as a sentence (the page tells
# the reasons apart by it); JSON on every route, the CSV export's too.
REFUSALS: dict[int | str, dict[str, Any]] = {
    422: {
        "description": "refused as it is",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["detail"],
                    "properties": {"detail": {"anyOf": [{"type": "string"}, {"type": "array"}]}},
                }
            }
        },
    }
}

# -- the session and the accounts ------------------------------------------------------------------------


class LoginOut(BaseModel):
    csrf_token: str
    username: str
    display_name: str
    role: Role
    must_change_password: bool


class MeOut(BaseModel):
    username: str
    display_name: str
    role: Role
    csrf_token: str
    must_change_password: bool
    on_duty: bool
    limit: int
    held: list[str]  # the conversations I hold


class DutyOut(BaseModel):
    on_duty: bool


class NameOut(BaseModel):
    username: str
    display_name: str


class ColleagueOut(BaseModel):
    username: str
    display_name: str
    role: Role
    on_duty: bool
    held: int
    limit: int


class AccountOut(ColleagueOut):
    active: bool
    custom_limit: int | None  # None: the service's default limit
    must_change_password: bool
    created_at: str


class AccountChangedOut(AccountOut):
    requeued: int  # conversations of a disabled account that went back to the queue


class NewAccountOut(BaseModel):
    username: str
    display_name: str
    password: str  # one-time: to be changed at the first login


class PasswordOut(BaseModel):
    username: str
    password: str


# -- the queue and the conversations ----------------------------------------------------------------------


class Presence(BaseModel):
    state: str
    at: str | None


class Reason(BaseModel):
    """Why a conversation or a message stands where it does: a triage rule and the words it matched, or
    what the conversation itself found (``dialogue.*``: the danger question's ``answer``, the
    ``previous`` conversation of a person who came back); ``message`` and ``span`` place it."""

    rule: str
    matched: str
    answer: str | None = None
    previous: str | None = None
    message: int | None = None
    span: list[int] | None = None


class QueueEntry(BaseModel):
    conversation_id: str
    risk: str
    categories: list[str]
    channel: str
    waiting_seconds: int
    preview: str
    preview_reason: Reason | None
    reasons: list[Reason]
    presence: Presence | None


class StateOut(BaseModel):
    conversation_id: str
    state: str


class TransferOut(StateOut):
    counsellor: str | None


class StatusOut(BaseModel):
    status: str


class Picture(BaseModel):
    id: int
    type: str
    width: int
    height: int


class Delivery(BaseModel):
    status: str
    attempts: int
    error: str


class Highlight(BaseModel):
    rule: str
    span: list[int]


class MessageOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: str = Field(alias="from")  # "user", "bot" or "counsellor"
    text: str
    kind: str
    at: str
    full_text: str | None = None
    attachments: int | None = None
    flags: list[str] | None = None
    items: Any = None
    pictures: list[Picture] | None = None
    delivery: Delivery | None = None
    risk: str | None = None
    highlights: list[Highlight] | None = None


class Triage(BaseModel):
    risk: str
    categories: list[str]
    reasons: list[Reason]


class Intake(BaseModel):
    age_band: str
    prefecture: str
    safe_now: str
    danger_asked: str
    danger_answer: str


class Previous(BaseModel):
    conversation_id: str
    risk: str
    categories: list[str]
    created_at: str
    outcome: str


class NoteOut(BaseModel):
    by: str
    text: str
    at: str
    kind: str


class ConversationOut(BaseModel):
    conversation_id: str
    # Grows with every message, note, claim, transfer and close (and each delivery attempt): the page
    # shows a read only when its version is not older than the one it shows.
    version: int
    state: str
    channel: str
    counsellor: str | None
    counsellor_name: str | None
    messages: list[MessageOut]
    triage: Triage
    intake: Intake
    previous: Previous | None
    presence: Presence | None
    notes: list[NoteOut]
    can_note: bool
    read_only: bool


# -- what counsellors insert ----------------------------------------------------------------------------


class Canned(BaseModel):
    label: str
    text: str


class Outcome(BaseModel):
    code: str
    label: str


class CannedOut(BaseModel):
    canned: list[Canned]
    outcomes: list[Outcome]


class ReferralOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    id: str
    name: str
    number: str
    hours: str
    open_now: bool | None
    for_: str = Field(alias="for")
    checked: str
    line: str


# -- supervisors -------------------------------------------------------------------------------------------


class ActiveOut(BaseModel):
    conversation_id: str
    counsellor: str
    counsellor_name: str
    risk: str
    categories: list[str]
    channel: str
    since: str | None


class LoadOut(BaseModel):
    username: str
    display_name: str
    role: Role
    on_duty: bool
    load: int
    limit: int


class AlertOut(BaseModel):
    conversation_id: str
    kind: str
    at: str


class MyAlertOut(AlertOut):
    state: str  # the conversation's: whether it still waits


class OverviewOut(BaseModel):
    waiting: int
    longest_wait_seconds: int
    active: list[ActiveOut]
    counsellors: list[LoadOut]
    alerts: list[AlertOut]


class StatsOut(BaseModel):
    days: int
    start: str
    end: str
    conversations: int
    by_day: dict[str, int]
    by_category: dict[str, int]
    by_risk: dict[str, int]
    by_channel: dict[str, int]
    by_age_band: dict[str, int]
    by_outcome: dict[str, int]
    by_referral: dict[str, int]
    emergencies: int
    handed_off: int
    still_open: int


class SeenOut(BaseModel):
    seen: int


class AuditOut(BaseModel):
    at: str
    actor: str
    actor_name: str
    action: str
    conversation_id: str
    detail: str
