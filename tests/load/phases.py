"""CPU per message on the hot path, by phase (``python -m tests.load.phases [N]``): one ordinary LINE text
message from a new person, as tests/test_hot_path.py sends it (the signed webhook through the ASGI app,
the inbox worker with the engine, one outbox pass to the fake LINE API), on a fresh PostgreSQL database,
``N`` times (300 by default) after 20 to warm up. Reports the process's CPU time (all its threads: the
fake LINE API and the test client run in it too, the same in every run) per message in each phase, in ms.

It complements ``make load``: no sockets, no other processes, so that two versions of the code can be
compared in alternation on a busy machine (``ROOT=/path/to/other/checkout``)."""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.helpers import postgres_database
from tests.hot_path_support import measure, one_message

TEXT = "学校のことで相談があります"
WARM = 20


class Phases:
    """What one_message's ``counting`` is asked for: here, the CPU time spent in each phase."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {"intake": 0.0, "inbox": 0.0, "outbox": 0.0}

    @contextmanager
    def during(self, phase: str) -> Iterator[None]:
        started = time.process_time()
        try:
            yield
        finally:
            self.cpu[phase] += time.process_time() - started


async def run(n: int) -> dict[str, float]:
    phases = Phases()

    async def work(svc: Any, web: Any, fake: Any, _counting: Any) -> None:
        for _ in range(WARM):
            await one_message(svc, web, fake, Phases(), "U" + uuid.uuid4().hex, TEXT)
        for _ in range(n):
            await one_message(svc, web, fake, phases, "U" + uuid.uuid4().hex, TEXT)

    with tempfile.TemporaryDirectory() as tmp:
        async with postgres_database() as url:
            await measure(Path(tmp), url, work)
    figures = {phase: round(seconds * 1000 / n, 2) for phase, seconds in phases.cpu.items()}
    figures["total"] = round(sum(phases.cpu.values()) * 1000 / n, 2)
    return figures


def main(argv: list[str]) -> None:
    n = int(argv[1]) if len(argv) > 1 else 300
    print(json.dumps({"messages": n, "cpu_ms_per_message": asyncio.run(run(n))}))


if __name__ == "__main__":
    main(sys.argv)
