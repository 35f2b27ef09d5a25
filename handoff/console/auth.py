"""The console's side of a session: the cookie that carries its token, and the CSRF check.

Every unsafe request carries the session's token in ``X-CSRF-Token``, compared in constant time. The
accounts, passwords and sessions themselves are data functions in ``bot/storage/credentials.py``.
"""

from __future__ import annotations

import hmac

from bot.storage.credentials import Me

COOKIE = "tsunagi_console"
CSRF_HEADER = "X-CSRF-Token"


def csrf_ok(me: Me, header: str | None) -> bool:
    return bool(header) and hmac.compare_digest(me.csrf_token.encode(), (header or "").encode())
