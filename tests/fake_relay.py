"""A local SMTP relay for the e-mail channel's replies: an aiosmtpd server on loopback (``running_relay``)
that keeps every mail it accepts, as a provider's relay would take it.

It can fail the way a relay fails, so that tests see what the outbox does then:
- ``refuse``: the next N mails are answered 451 at DATA, not kept;
- ``outage(mode, seconds)``: for that long, every mail is answered ``421`` at RCPT (the relay is closing
  down), ``451`` at DATA (try again later), or not answered at all (``hang``: DATA waits past the sender's
  timeout and the mail is not kept). After the window the relay takes mail again.
Every try is recorded in ``tries`` (when, the recipient, the code; 0 for no answer).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import parseaddr
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.helpers import WAIT, eventually, free_port

MODES = ("421", "451", "hang")


class FakeRelay:
    """An SMTP relay that keeps every mail it accepts; ``refuse`` mails are first answered 451."""

    def __init__(self) -> None:
        self.received: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.tries: list[tuple[float, str, int]] = []  # (monotonic time, recipient, code; 0: no answer)
        self.attempts = 0
        self.refuse = 0
        self.lock = threading.Lock()
        self._mode = ""
        self._until = 0.0

    def outage(self, mode: str, seconds: float) -> None:
        """Fail every mail for ``seconds`` from now: ``421`` at RCPT, ``451`` at DATA, or ``hang``."""
        assert mode in MODES, mode
        with self.lock:
            self._mode, self._until = mode, time.monotonic() + seconds

    def _failing(self, mode: str) -> float:
        """The seconds left of an outage in ``mode`` (0 when there is none)."""
        with self.lock:
            left = self._until - time.monotonic()
            return left if self._mode == mode and left > 0 else 0.0

    def _tried(self, envelope: Envelope, code: int) -> None:
        with self.lock:
            self.tries.append((time.monotonic(), ",".join(envelope.rcpt_tos), code))

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if self._failing("421"):
            with self.lock:
                self.attempts += 1
                self.tries.append((time.monotonic(), address, 421))
            return "421 4.3.2 Service not available, closing transmission channel"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        hang = self._failing("hang")
        if hang:
            self._tried(envelope, 0)
            await asyncio.sleep(hang + 1.0)  # past the sender's timeout: it gave up; nothing is kept
            return "451 4.3.0 Try again later"
        if self._failing("451"):
            self._tried(envelope, 451)
            with self.lock:
                self.attempts += 1
            return "451 4.3.0 Try again later"
        with self.lock:
            self.attempts += 1
            if self.refuse > 0:
                self.refuse -= 1
                self.tries.append((time.monotonic(), ",".join(envelope.rcpt_tos), 451))
                return "451 4.3.0 Try again later"
            raw = envelope.content
            assert isinstance(raw, bytes)
            msg = message_from_bytes(raw, policy=policy.default)
            assert isinstance(msg, EmailMessage)
            self.received.append(msg)
            self.envelopes.append((str(envelope.mail_from), list(envelope.rcpt_tos)))
            self.tries.append((time.monotonic(), ",".join(envelope.rcpt_tos), 250))
        return "250 OK"

    def to(self, address: str) -> list[EmailMessage]:
        with self.lock:
            return [m for m in self.received if parseaddr(str(m["To"]))[1] == address]

    def wait(self, address: str, count: int, timeout: float = WAIT) -> list[EmailMessage]:
        eventually(lambda: len(self.to(address)) >= count, f"{count} mails to {address}", timeout)
        return self.to(address)


@contextmanager
def running_relay(fake: FakeRelay | None = None, **options: Any) -> Iterator[tuple[FakeRelay, int]]:
    """The relay on a free loopback port (``options`` go to aiosmtpd's Controller: TLS, a login)."""
    fake = fake or FakeRelay()
    port = free_port()
    controller = Controller(fake, hostname="127.0.0.1", port=port, server_hostname="relay.test", **options)
    controller.start()
    try:
        yield fake, port
    finally:
        controller.stop()
