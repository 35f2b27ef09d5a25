"""Fault injection for tests/test_crash.py, kept out of the service: ``python -m tests.crash_hook N
serve ...`` runs the ``tsunagi`` command with its outbox worker made to SIGKILL its own process just
before its Nth send, as the system would kill it, after the message and its reply were stored and
before the reply left (the row stays pending: it was not even leased)."""

from __future__ import annotations

import os
import signal
import sys
from datetime import datetime
from typing import Any

from bot.cli import main
from bot.outbox import OutboxWorker


def kill_before_send(n: int) -> None:
    """Every ``tsunagi`` outbox worker of this process dies before it takes its ``n``-th row."""
    send_group = OutboxWorker._send_group
    seen: set[int] = set()

    async def dying(self: OutboxWorker, group: list[Any], now: datetime) -> int:
        seen.update(row.id or 0 for row in group)
        if len(seen) >= n:
            os.kill(os.getpid(), signal.SIGKILL)
        return await send_group(self, group, now)

    OutboxWorker._send_group = dying  # type: ignore[method-assign]


if __name__ == "__main__":
    kill_before_send(int(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
