"""The data layer: keyword-only functions over an open session, each query written once.

The engine, the console API, the CLI and (through their host, ``channels/host.py``) the channels call
these instead of writing SQL of their own; the caller owns the session and its transaction, so that what
an action writes, its audit row included, is committed together or not at all. One module a subject:
``conversations``, ``handoffs``, ``contacts`` (and ``age_band``, the age band kept with the contact),
``accounts`` (shared by the console and the CLI), ``statistics``, ``audit`` (reading and filtering the
audit log) and ``audit_write`` (the rows every action adds to it). See docs/architecture.md for where
this layer sits.
"""

# The age band's mapper events apply wherever conversations are written: registered with the package.
from bot.storage import age_band as age_band  # noqa: E402
