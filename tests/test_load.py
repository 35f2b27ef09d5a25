"""`make load`'s harness (tests/load/) in its smoke mode: a tiny rate, a short backlog and a few web chat
sessions on the real server, PostgreSQL and Redis. Not timed: it checks that the report has every figure
and that nothing was lost or sent twice."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, postgres_database
from tests.load.run import COLUMNS
from tests.redis_helpers import require_redis


async def _services() -> None:
    await require_redis()
    async with postgres_database():
        pass


@pytest.mark.slow
@pytest.mark.parametrize(
    "layout",
    [
        [],  # one `tsunagi serve` with its own workers
        # two instances taking traffic only (webhooks to each in turn) and a `tsunagi worker` doing the work
        ["--serve-processes", "2", "--serve-no-workers", "--worker-processes", "1"],
    ],
    ids=["one-serve", "two-serves-and-a-worker"],
)
def test_quick_load_run_reports_every_figure_and_loses_nothing(tmp_path: Path, layout: list[str]) -> None:
    asyncio.run(_services())
    out = tmp_path / "load.json"
    done = subprocess.run(
        [sys.executable, "-m", "tests.load", "--quick", "--json", str(out), *layout],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())

    for _, title in COLUMNS:
        assert title in done.stdout
    for bare in report["bare"]:
        assert bare["sent"] == bare["rate"] * 2 and bare["refused"] == 0, bare
    (line,) = report["rates"]
    for key, _ in COLUMNS:
        if key != "bare_ack_p99_ms":
            assert key in line, key
    assert line["sent"] == 12 and line["refused"] == 0, line
    assert (line["lost"], line["doubled"], line["pushes"]) == (0, 0, 0), line
    assert line["reply_p99_ms"] is not None and line["ack_p99_ms"] is not None

    crisis = report["crisis"]
    assert crisis["crisis_answered_s"] is not None and crisis["crisis_via"] in ("reply", "push"), crisis
    assert (crisis["refused"], crisis["lost"], crisis["doubled"]) == (0, 0, 0), crisis

    chat = report["web_chat"]
    assert chat["failed_sessions"] == 0 and chat["messages"] >= chat["sessions"], chat
    assert (chat["lost"], chat["unanswered"]) == (0, 0), chat
    assert chat["reply_p99_ms"] is not None
    assert report["unexpected_calls"] == 0
