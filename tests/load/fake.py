"""The tests' fake LINE API (tests/fake_line.py: bearer token, reply tokens single use and expiring, payload
shape) in a process of its own, so that its threads do not take the driver's interpreter lock.

On top of what it checks, it records when each accepted reply or push arrived (``time.monotonic()``, which
on Linux is one clock for every process of the machine) and answers two control paths, outside the API:
- ``POST /_load/tokens`` ``{"tokens": [[token, user, ttl_seconds], ...]}``: reply tokens for the events the
  driver is about to send (each valid from now for its ttl: the event's planned send time plus a minute);
- ``GET /_load/sent?since=N``: the accepted messages from the N-th on, with their arrival times, and the
  count of loading-indicator calls and of unexpected calls.

Run as ``python -m tests.load.fake ACCESS_TOKEN``: it prints its base URL on one line, then serves until
its standard input closes.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fake_line import FakeLine, _Token

CONTROL = "/_load/"


@dataclass
class TimedFakeLine(FakeLine):
    arrivals: list[float] = field(default_factory=list)  # when each entry of ``sent`` arrived

    def _route(
        self, method: str, path: str, headers: dict[str, str], body: Any
    ) -> tuple[int, Any, dict[str, str]]:
        # Called by FakeLine._answer with its lock held.
        if path.startswith(CONTROL):
            return self._control(method, path, body)
        before = len(self.sent)
        answer = super()._route(method, path, headers, body)
        if len(self.sent) > before:
            self.arrivals.append(time.monotonic())
        return answer

    def _control(self, method: str, path: str, body: Any) -> tuple[int, Any, dict[str, str]]:
        url = urlsplit(path)
        if method == "POST" and url.path == CONTROL + "tokens" and isinstance(body, dict):
            now = time.monotonic()
            for token, user, ttl in body["tokens"]:
                self._tokens[token] = _Token(user, now + float(ttl))  # issue_token takes the lock we hold
            return 200, {"tokens": len(body["tokens"])}, {}
        if method == "GET" and url.path == CONTROL + "sent":
            since = int(parse_qs(url.query).get("since", ["0"])[0])
            sent = [
                {"via": s.via, "to": s.to, "texts": list(s.texts), "at": at}
                for s, at in zip(self.sent[since:], self.arrivals[since:], strict=True)
            ]
            return 200, {"sent": sent, "loading": len(self.loading), "unexpected": len(self.unexpected)}, {}
        return 404, {"message": "Not found"}, {}


def main(argv: list[str]) -> int:
    fake = TimedFakeLine(access_token=argv[0])
    with fake:
        print(fake.url, flush=True)
        stop = threading.Event()
        threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
