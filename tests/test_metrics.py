"""``/metrics`` end to end (bot/service.py, bot/metrics.py): messages driven through the real app (the web
chat's socket, LINE's webhook against the local fake of its API, the loopback channel, the console's API),
then ``/metrics`` parsed with prometheus_client's own parser and every family checked by value.

- the shared gauges (queue by risk with its longest wait, conversations per counsellor, inbox and outbox by
  channel and status with their oldest unfinished row) are read at scrape time from the database and the
  queue, so two instances on one PostgreSQL and Redis show the same values;
- the counters and histograms (triage and reply latency, deliveries failed and retried, failed logins) are
  the scraped process's own;
- nothing in the text is a message's text, a name, a platform id or a conversation id.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from bot.models import UNSENT, Handoff, Inbox, Outbox, utcnow
from bot.types import Delivery
from bot.web import create_app
from channels.loopback import LoopbackChannel
from tests.fake_line import FakeLine
from tests.helpers import (
    CRISIS,
    TSUNAGI,
    add_account,
    db,
    eventually,
    free_port,
    in_app,
    line_text_body,
    login,
    make_settings,
    post_line,
    postgres_database,
    service,
    start_fresh,
)
from tests.redis_helpers import TEST_REDIS_URL, delete_prefix, random_prefix, require_redis

LINE_SECRET = "metrics-line-secret"
LINE_TOKEN = "metrics-line-token"
RISKS = ("crisis", "high", "medium", "low")
SHARED = {  # read from the database and the queue at each scrape
    "tsunagi_conversations",
    "tsunagi_queue_waiting",
    "tsunagi_queue_longest_wait_seconds",
    "tsunagi_counsellor_conversations",
    "tsunagi_outbox_messages",
    "tsunagi_outbox_oldest_waiting_seconds",
    "tsunagi_inbox_events",
    "tsunagi_inbox_oldest_waiting_seconds",
}
OWN = {  # this process's, since it started (the parser names counters without ``_total``)
    "tsunagi_login_failures",
    "tsunagi_webhook_signature_failures",
    "tsunagi_triage_seconds",
    "tsunagi_reply_seconds",
    "tsunagi_deliveries_failed",
    "tsunagi_delivery_retries",
}


class Scrape:
    """One ``GET /metrics``, parsed."""

    def __init__(self, source: TestClient | str) -> None:
        if isinstance(source, str):
            self.text = source
        else:
            response = source.get("/metrics")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            self.text = response.text
        self.families: dict[str, Metric] = {f.name: f for f in text_string_to_metric_families(self.text)}

    def value(self, sample: str, **labels: str) -> float | None:
        """The value of the one sample with this name and exactly these labels, or None."""
        found = [
            s.value
            for f in self.families.values()
            for s in f.samples
            if s.name == sample and s.labels == labels
        ]
        assert len(found) <= 1, found
        return found[0] if found else None

    def get(self, sample: str, **labels: str) -> float:
        value = self.value(sample, **labels)
        assert value is not None, f"no {sample}{labels} in:\n{self.text}"
        return value

    def labels(self, family: str) -> list[dict[str, str]]:
        return [s.labels for s in self.families[family].samples]


def line_text(client: TestClient, user: str, text: str) -> None:
    response = post_line(client, line_text_body(user, text), LINE_SECRET)
    assert response.status_code == 200, response.text


def loopback(client: TestClient) -> LoopbackChannel:
    channel = service(client).channels["loopback"]
    assert isinstance(channel, LoopbackChannel)
    return channel


def say(client: TestClient, user: str, *texts: str) -> str:
    """The loopback person says each text in turn (the app's workers send the replies); their
    conversation's id."""
    channel = loopback(client)
    cid = ""
    for text in texts:

        async def go(text: str = text) -> str:
            return (await channel.say(user, text)).conversation_id

        cid = in_app(client, go) or cid
    return cid


def settled(client: TestClient) -> None:
    """Until every reply written so far is out (delivered or failed)."""

    async def unsent(s: AsyncSession) -> int:
        return len((await s.scalars(select(Outbox.id).where(col(Outbox.status).in_(UNSENT)))).all())

    eventually(lambda: db(client, unsent) == 0, "every reply out")


def age(client: TestClient, model: Any, column: Any, minutes: int) -> None:
    """Every row of ``model`` happened ``minutes`` ago (its ``column``)."""

    async def work(s: AsyncSession) -> None:
        await s.execute(update(model).values({column: utcnow() - timedelta(minutes=minutes)}))

    db(client, work)


@pytest.fixture
def fake_line() -> Iterator[FakeLine]:
    with FakeLine(LINE_TOKEN) as fake:
        yield fake


def app(tmp_path: Path, fake: FakeLine, **overrides: Any) -> TestClient:
    return TestClient(
        create_app(
            make_settings(
                tmp_path,
                line_channel_secret=LINE_SECRET,
                line_channel_access_token=LINE_TOKEN,
                line_api_base=fake.url,
                **overrides,
            )
        )
    )


def test_every_family_is_there_from_the_start(tmp_path: Path, fake_line: FakeLine) -> None:
    with app(tmp_path, fake_line) as client:
        m = Scrape(client)
    assert SHARED | OWN <= set(m.families), sorted(m.families)
    for risk in RISKS:
        assert m.get("tsunagi_queue_waiting", risk=risk) == 0
        assert m.get("tsunagi_queue_longest_wait_seconds", risk=risk) == 0
    assert m.families["tsunagi_reply_seconds"].type == "histogram"
    assert m.families["tsunagi_deliveries_failed"].type == "counter"
    # A channel's failure counters are there at 0 before its first failure (a rate needs the series).
    for channel in ("line", "loopback", "webchat"):
        assert m.get("tsunagi_deliveries_failed_total", channel=channel) == 0
        assert m.get("tsunagi_delivery_retries_total", channel=channel) == 0
    assert m.get("tsunagi_login_failures_total", outcome="failed") == 0


def test_the_families_follow_what_happens(tmp_path: Path, fake_line: FakeLine) -> None:
    secret_text = "ひみつ：毎晩つきまとわれていて、もう死にたい"
    line_user = "U" + uuid.uuid4().hex
    with app(tmp_path, fake_line) as client:
        # The web chat: a welcome written and handed over.
        with client.websocket_connect("/chat/ws") as ws:
            token, _ = start_fresh(ws)
        # LINE: a message triaged at intake and in the conversation, and answered; the first push
        # answered 500 (retried), then delivered.
        fake_line.fail(500)
        line_text(client, line_user, "こんにちは")
        eventually(lambda: len(fake_line.to(line_user)) >= 1, "LINE's welcome")
        # A loopback person at high risk waits for a counsellor; one whose reply is refused gets nothing.
        waiting = say(client, "person-a", "こんにちは", "同意", secret_text)
        settled(client)
        loopback(client).fail_next = [Delivery.failed("refused by the platform")]
        say(client, "person-b", "こんにちは")
        eventually(
            lambda: (Scrape(client).value("tsunagi_deliveries_failed_total", channel="loopback") or 0) >= 1,
            "the refused reply counted",
        )
        # They have waited ten minutes (the queue is made again from the database).
        age(client, Handoff, Handoff.queued_at, 10)
        in_app(client, service(client).rebuild_queue)
        # Two counsellors on duty, one failed login.
        ids = {name: str(add_account(client, name)) for name in ("amy", "bob")}
        amy, bob = login(client, "amy"), login(client, "bob")
        for who in (amy, bob):
            assert who.post("duty", {"on_duty": True}).status_code == 200
        assert client.post("/api/console/login", json={"username": "amy", "password": "x"}).status_code == 401
        client.cookies.clear()
        before = Scrape(client)
        assert amy.claim(waiting).status_code == 200
        after = Scrape(client)

    # The queue by risk (the triage's, before aging), with its longest wait: one high, ten minutes, then
    # nobody once it was claimed.
    assert before.get("tsunagi_queue_waiting", risk="high") == 1
    assert 600 <= before.get("tsunagi_queue_longest_wait_seconds", risk="high") < 3600
    assert before.get("tsunagi_queue_waiting", risk="crisis") == 0
    assert before.get("tsunagi_queue_longest_wait_seconds", risk="crisis") == 0
    assert after.get("tsunagi_queue_waiting", risk="high") == 0
    assert after.get("tsunagi_queue_longest_wait_seconds", risk="high") == 0
    # Conversations per counsellor, by account id: every one on duty, holding none or some.
    assert before.get("tsunagi_counsellor_conversations", counsellor=ids["amy"]) == 0
    assert after.get("tsunagi_counsellor_conversations", counsellor=ids["amy"]) == 1
    assert after.get("tsunagi_counsellor_conversations", counsellor=ids["bob"]) == 0
    assert after.get("tsunagi_conversations", state="with_counsellor") == 1
    # Inbox and outbox by channel and status.
    assert after.get("tsunagi_inbox_events", channel="line", status="done") == 1
    assert after.get("tsunagi_outbox_messages", channel="line", status="delivered") >= 1
    assert after.get("tsunagi_outbox_messages", channel="webchat", status="delivered") >= 1
    assert after.get("tsunagi_outbox_messages", channel="loopback", status="failed") == 1
    assert after.value("tsunagi_inbox_oldest_waiting_seconds", channel="line") is None, "nothing unhandled"
    # Deliveries: LINE's 500 retried once, the loopback's refusal failed once, nothing else.
    assert after.get("tsunagi_delivery_retries_total", channel="line") == 1
    assert after.get("tsunagi_deliveries_failed_total", channel="loopback") == 1
    assert after.get("tsunagi_deliveries_failed_total", channel="line") == 0
    # Triage latency: the LINE text at intake; every text in the conversation (LINE's, and the loopback's
    # four: a consent is triaged too).
    assert after.get("tsunagi_triage_seconds_count", stage="intake") == 1
    assert after.get("tsunagi_triage_seconds_count", stage="conversation") >= 5
    assert 0 < after.get("tsunagi_triage_seconds_sum", stage="conversation") < 60
    # Reply latency by channel and sender; LINE's waited out its retry (backoff: at least 1.6 s).
    assert after.get("tsunagi_reply_seconds_count", channel="webchat", sender="bot") >= 1
    assert after.get("tsunagi_reply_seconds_count", channel="line", sender="bot") == 1
    assert after.get("tsunagi_reply_seconds_sum", channel="line", sender="bot") >= 1.6
    inf = after.get("tsunagi_reply_seconds_bucket", channel="line", sender="bot", le="+Inf")
    assert inf == after.get("tsunagi_reply_seconds_count", channel="line", sender="bot")
    # Login failures (they existed before this: kept).
    assert after.get("tsunagi_login_failures_total", outcome="failed") == 1

    # Counts, channels, states, risks and account ids: nothing that names or quotes anyone.
    for secret in (secret_text, "死にたい", line_user, token, waiting, "person-a", "amy", "bob"):
        assert secret not in after.text
    label_names = {k for f in after.families.values() for s in f.samples for k in s.labels}
    assert label_names <= {
        "state",
        "risk",
        "counsellor",
        "channel",
        "status",
        "outcome",
        "stage",
        "sender",
        "le",
    }


def test_the_backlog_shows_its_oldest_row(tmp_path: Path, fake_line: FakeLine) -> None:
    """Without workers nothing is handled or sent: the inbox and outbox keep their rows, and the age of
    the oldest is what an operator alerts on (a platform or relay down, workers stopped)."""
    with app(tmp_path, fake_line, workers=False) as client:
        line_text(client, "U" + uuid.uuid4().hex, "こんにちは")
        say(client, "person-c", "こんにちは")
        age(client, Inbox, Inbox.received_at, 5)
        age(client, Outbox, Outbox.created_at, 7)
        m = Scrape(client)
    assert m.get("tsunagi_inbox_events", channel="line", status="pending") == 1
    assert 300 <= m.get("tsunagi_inbox_oldest_waiting_seconds", channel="line") < 3600
    assert m.get("tsunagi_outbox_messages", channel="loopback", status="pending") == 1
    assert 420 <= m.get("tsunagi_outbox_oldest_waiting_seconds", channel="loopback") < 3600
    assert m.get("tsunagi_triage_seconds_count", stage="intake") == 1
    assert m.value("tsunagi_reply_seconds_count", channel="loopback", sender="bot") is None


@pytest.fixture
def shared_stores(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A fresh PostgreSQL database, a Redis prefix of its own and one data key, for several processes."""
    asyncio.run(require_redis())
    prefix = random_prefix()
    loop = asyncio.new_event_loop()
    database = postgres_database()
    url = loop.run_until_complete(database.__aenter__())
    try:
        yield {
            "database_url": url,
            "redis_url": TEST_REDIS_URL,
            "redis_prefix": prefix,
            "data_key": make_settings(tmp_path).data_key,
        }
    finally:
        loop.run_until_complete(database.__aexit__(None, None, None))
        loop.run_until_complete(delete_prefix(prefix))
        loop.close()


def test_two_instances_show_the_same_shared_gauges_and_their_own_counters(
    tmp_path: Path, fake_line: FakeLine, shared_stores: dict[str, str]
) -> None:
    """On one PostgreSQL and Redis: the queue and the tables read the same from either instance; the one
    that did the work counted it, the other (no workers) counted nothing."""
    with (
        app(tmp_path / "one", fake_line, **shared_stores) as one,
        app(tmp_path / "two", fake_line, workers=False, **shared_stores) as two,
    ):
        say(one, "person-d", "こんにちは", "同意", CRISIS)
        settled(one)
        first, second = Scrape(one), Scrape(two)
    for m in (first, second):
        assert m.get("tsunagi_queue_waiting", risk="crisis") == 1
        assert m.get("tsunagi_conversations", state="waiting") == 1
    ages = {f for f in SHARED if f.endswith("_seconds")}  # (they grow between the two scrapes)
    for family in SHARED - ages:
        assert first.labels(family) == second.labels(family), family
        assert [s.value for s in first.families[family].samples] == [
            s.value for s in second.families[family].samples
        ], family
    assert first.get("tsunagi_triage_seconds_count", stage="conversation") == 3
    assert second.value("tsunagi_triage_seconds_count", stage="conversation") is None
    assert second.get("tsunagi_deliveries_failed_total", channel="loopback") == 0


def test_a_worker_serves_its_own_metrics(
    tmp_path: Path, fake_line: FakeLine, shared_stores: dict[str, str]
) -> None:
    """``tsunagi worker --metrics-port``: the replies it sends are counted in its own /metrics (the
    instance that took the messages, without workers, counted none), beside the same shared gauges."""
    port = free_port()
    env = {
        **os.environ,
        **{f"TSUNAGI_{k.upper()}": v for k, v in shared_stores.items()},
        "TSUNAGI_VAR_DIR": str(tmp_path / "worker"),
        "TSUNAGI_SMTP_LISTEN": "",
        "TSUNAGI_LOOPBACK_CHANNEL": "true",  # its own loopback channel sends what the engine wrote for one
    }
    base = f"http://127.0.0.1:{port}"

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(base + path, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, ""
        except OSError:
            return 0, ""  # not listening yet

    with app(tmp_path / "web", fake_line, workers=False, **shared_stores) as client:
        worker = subprocess.Popen(
            [str(TSUNAGI), "worker", "--metrics-port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            eventually(lambda: worker.poll() is None and get("/healthz")[0] == 200, "the worker's /healthz")
            say(client, "person-e", "こんにちは", "同意", CRISIS)
            settled(client)
            status, text = get("/metrics")
            assert get("/nothing")[0] == 404
            web = Scrape(client)
        finally:
            worker.terminate()
            _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err.decode()
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert SHARED | OWN <= set(families)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples
    }
    sent = samples[("tsunagi_reply_seconds_count", (("channel", "loopback"), ("sender", "bot")))]
    assert sent >= 3, "the welcome, the consent's answer and the crisis replies went through the worker"
    assert samples[("tsunagi_queue_waiting", (("risk", "crisis"),))] == 1
    assert web.get("tsunagi_queue_waiting", risk="crisis") == 1
    assert web.value("tsunagi_reply_seconds_count", channel="loopback", sender="bot") is None
