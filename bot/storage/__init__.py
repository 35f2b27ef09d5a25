"""The data layer: keyword-only functions over an open session, each query written once.

The engine, the console API and (through their host, ``channels/host.py``) the channels call these
instead of writing SQL of their own; the caller owns the session and its transaction, so that what an
action writes, its audit row included, is committed together or not at all. One module a subject:
``conversations``, ``handoffs``, ``contacts``, and ``audit_write`` (the rows every action adds to the
append-only audit log). See docs/architecture.md for where this layer sits.
"""
