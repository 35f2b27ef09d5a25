"""The age band is asked once per person: what they answered (or that they chose not to) is kept with
their contact, and a conversation they start later begins with it, so the bot does not ask again.

Done as mapper events on ``Conversation``, in the flush of whatever transaction starts or changes a
conversation: a new one reads its contact's age band before it is inserted (from the contact in the
session when it is there; the engine copies it itself before the dialogue reads it), and a change of the
age band is written to the contact in the same transaction. An erased conversation forgets it (the contact
goes soon after)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, inspect, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import object_session
from sqlalchemy.orm.util import identity_key
from sqlmodel import col

from bot.models import Contact, Conversation


@event.listens_for(Conversation, "before_insert")
def _start_with_the_age_band(_mapper: Any, connection: Connection, conv: Conversation) -> None:
    if not conv.contact_id or conv.age_band or conv.age_asked:
        return
    session = object_session(conv)
    if session is not None:
        in_hand = session.identity_map.get(identity_key(Contact, conv.contact_id))
        if in_hand is None:  # made in this transaction (inserted in this same flush, just before)
            in_hand = next(
                (c for c in session.new if isinstance(c, Contact) and c.id == conv.contact_id), None
            )
        if in_hand is not None:  # the contact this transaction read or made: nothing to read again
            conv.age_band, conv.age_asked = in_hand.age_band, bool(in_hand.age_asked)
            return
    known = connection.execute(
        select(col(Contact.age_band), col(Contact.age_asked)).where(col(Contact.id) == conv.contact_id)
    ).first()
    if known is not None and (known[0] or known[1]):
        conv.age_band, conv.age_asked = known[0], bool(known[1])


@event.listens_for(Conversation, "after_insert")
def _remember_the_age_band_at_once(_mapper: Any, connection: Connection, conv: Conversation) -> None:
    """A conversation inserted with its age band already asked (the first message of a crisis asks it in
    the same transaction that starts the conversation): the contact keeps it too, as an update would."""
    if not conv.contact_id or not (conv.age_band or conv.age_asked):
        return
    session = object_session(conv)
    key = identity_key(Contact, conv.contact_id)
    in_hand = session.identity_map.get(key) if session is not None else None
    if in_hand is not None and (in_hand.age_band, bool(in_hand.age_asked)) == (conv.age_band, conv.age_asked):
        return  # copied from the contact (a person coming back): nothing new to keep
    connection.execute(
        update(Contact)
        .where(col(Contact.id) == conv.contact_id)
        .values(age_band=conv.age_band, age_asked=conv.age_asked)
    )


@event.listens_for(Conversation, "before_update")
def _remember_the_age_band(_mapper: Any, connection: Connection, conv: Conversation) -> None:
    if not conv.contact_id:
        return
    state = inspect(conv)
    changed = any(state.attrs[name].history.has_changes() for name in ("age_band", "age_asked", "erased"))
    if not changed:
        return
    if conv.erased:
        values: dict[str, Any] = {"age_band": "", "age_asked": False}
    elif conv.age_band or conv.age_asked:
        values = {"age_band": conv.age_band, "age_asked": conv.age_asked}
    else:
        return
    connection.execute(update(Contact).where(col(Contact.id) == conv.contact_id).values(**values))
