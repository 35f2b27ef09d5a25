"""Faults during a burst, with real processes, PostgreSQL and Redis: a ``tsunagi serve`` or ``tsunagi
worker`` killed with SIGKILL, PostgreSQL's connections terminated, Redis restarted empty or flushed.

People are driven as the platforms drive them: a LINE person's webhooks are posted in order, each sent
again (the same event) until it is answered 200, as LINE redelivers; a web chat person resends what was
not acknowledged (the same id) after reconnecting with their token, as the page does. So every message
is acknowledged in the end, and the checks are what was promised for acknowledged messages: each person's
messages stored exactly once and in order, each answered exactly once (every person of a channel, who all
say the same things, gets the same answers, as without a fault), every reply delivered, and on LINE the
texts that reached LINE are the stored replies, once each, in order. Nothing waits a fixed time: every
step waits for a condition, with a generous deadline."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from cryptography.fernet import Fernet
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import connect

from bot.crypto import Crypto
from tests.engine_helpers import reply_keys
from tests.fake_line import FakeLine
from tests.helpers import TSUNAGI, Console, add_accounts, eventually, free_port, server
from tests.load.driver import signature
from tests.redis_helpers import TEST_REDIS_URL, PrivateRedis, delete_prefix, random_prefix, require_redis

pytestmark = pytest.mark.slow

SECRET = "fault-test-line-secret"
ACCESS_TOKEN = "fault-test-line-access-token"
DESTINATION = "U" + "f" * 32
# Each message is answered once (the welcome, an offer, then the offer again): a doubled message or a
# doubled answer shows as a sequence of answers unlike everyone else's.
SCRIPT = (
    "同意",
    "最近眠れなくて",
    "学校のことで悩んでいます",
    "友だちとけんかしました",
    "家族ともうまくいかない",
    "毎日疲れています",
    "話を聞いてほしい",
    "どうしたらいいかわからない",
    "ありがとう",
    "また話します",
)
SENDS = 4  # sends in flight at once on a channel (TSUNAGI_OUTBOX_WORKERS), all of which a kill may cut
DEADLINE = 150.0  # seconds a whole burst gets, faults and restarts included
RETRY = 0.2  # seconds between a person's attempts while the service is away


# -- people -------------------------------------------------------------------------------------------------


class LinePerson:
    """Sends its texts as LINE webhooks, one at a time, each until LINE would count it delivered (200)."""

    channel = "line"

    def __init__(self, fake: FakeLine) -> None:
        self.fake = fake
        self.user = "U" + uuid.uuid4().hex
        self.acked = 0
        self.refusals: Counter[int] = Counter()  # statuses other than 200 (-1: no answer at all)

    def run(self, base: Callable[[], str], texts: tuple[str, ...], deadline: float) -> None:
        for text in texts:
            body = self._event(text)
            headers = {"Content-Type": "application/json", "X-Line-Signature": signature(body, SECRET)}
            while True:
                status = _post(base() + "/webhooks/line", body, headers)
                if status == 200:
                    break
                self.refusals[status] += 1
                if time.monotonic() > deadline:
                    raise AssertionError(f"a webhook was never accepted: {dict(self.refusals)}")
                time.sleep(RETRY)
            self.acked += 1

    def _event(self, text: str) -> bytes:
        event = {
            "type": "message",
            "mode": "active",
            "timestamp": int(time.time() * 1000),
            "source": {"type": "user", "userId": self.user},
            "webhookEventId": "01F" + uuid.uuid4().hex[:23].upper(),
            "deliveryContext": {"isRedelivery": False},
            "replyToken": self.fake.issue_token(self.user),
            "message": {"type": "text", "id": str(uuid.uuid4().int)[:18], "quoteToken": "q", "text": text},
        }
        return json.dumps({"destination": DESTINATION, "events": [event]}, ensure_ascii=False).encode()


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (OSError, http.client.HTTPException):
        return -1  # no answer, or cut off in the middle: not delivered, as LINE sees it


class ChatPerson:
    """The web chat page: hello with its token, each message until acknowledged, resent with the same id
    over a new connection when the old one is lost; then the page stays open (replies are read) until
    ``release`` is set, as a person waiting for their answers keeps it."""

    channel = "webchat"

    def __init__(self, release: threading.Event) -> None:
        self.release = release
        self.user = ""  # the session token: the person's id on the web chat
        self.acked = 0
        self.reconnects = 0

    def run(self, base: Callable[[], str], texts: tuple[str, ...], deadline: float) -> None:
        while not (self.acked == len(texts) and self.release.is_set()):
            try:
                with connect(base().replace("http", "ws", 1) + "/chat/ws", open_timeout=10) as ws:
                    self._hello(ws)
                    while self.acked < len(texts):
                        mid = f"m{self.acked}"
                        ws.send(json.dumps({"type": "message", "text": texts[self.acked], "id": mid}))
                        _until(ws, lambda f, mid=mid: f["type"] == "ack" and f["id"] == mid)
                        self.acked += 1
                    while not self.release.is_set():
                        try:
                            ws.recv(timeout=0.5)
                        except TimeoutError:
                            pass
            except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                self.reconnects += 1
                time.sleep(RETRY)

    def _hello(self, ws: Any) -> None:
        ws.send(json.dumps({"type": "hello", "resume": self.user or None}))
        session = _until(ws, lambda f: f["type"] == "session")
        assert not self.user or session["token"] == self.user, "a known token must be resumed"
        self.user = session["token"]


def _until(ws: Any, pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Frames until one satisfies ``pred``; TimeoutError when none comes for a long while."""
    for _ in range(200):
        frame: dict[str, Any] = json.loads(ws.recv(timeout=30))
        if pred(frame):
            return frame
    raise AssertionError("too many frames without the one awaited")


Person = LinePerson | ChatPerson


class Burst:
    """People sending the script at once, in threads, against whichever server ``base`` names now."""

    def __init__(self, people: list[Person], base: Callable[[], str], release: threading.Event) -> None:
        self.people = people
        self.release = release
        self.total = len(people) * len(SCRIPT)
        self.deadline = time.monotonic() + DEADLINE
        self._pool = ThreadPoolExecutor(max_workers=len(people))
        self._futures: list[Future[None]] = [
            self._pool.submit(p.run, base, SCRIPT, self.deadline) for p in people
        ]

    def acked(self) -> int:
        return sum(p.acked for p in self.people)

    def reach(self, share: float) -> None:
        """Until ``share`` of every message is acknowledged (a person who gave up fails the test)."""
        print(f"{time.strftime('%X')} waiting for {share:.0%} of {self.total} acknowledged")

        def reached() -> bool:
            for f in self._futures:
                if f.done() and f.exception() is not None:
                    f.result()
            return self.acked() >= self.total * share

        eventually(reached, f"{share:.0%} acknowledged", DEADLINE)

    def finish(self, database: str) -> None:
        """Every message acknowledged, handled and answered (web chat pages open meanwhile); then the
        pages close."""
        try:
            self.reach(1.0)
            eventually(
                lambda: drained(database, self.total), "every event handled, every reply out", DEADLINE
            )
        finally:
            print("at the end:", progress(database))
            self.release.set()
            for f in self._futures:
                f.result(timeout=DEADLINE)
            self._pool.shutdown()


# -- processes, databases ---------------------------------------------------------------------------------


def service_env(tmp_path: Path, database: str, redis_url: str, prefix: str, fake: FakeLine) -> dict[str, str]:
    return {
        **os.environ,
        "TSUNAGI_VAR_DIR": str(tmp_path / "var"),
        "TSUNAGI_DATABASE_URL": database,
        "TSUNAGI_REDIS_URL": redis_url,
        "TSUNAGI_REDIS_PREFIX": prefix,
        "TSUNAGI_DATA_KEY": Fernet.generate_key().decode(),
        "TSUNAGI_SECRET_KEY": "fault-test-secret",
        "TSUNAGI_SMTP_LISTEN": "",
        "TSUNAGI_LINE_CHANNEL_SECRET": SECRET,
        "TSUNAGI_LINE_CHANNEL_ACCESS_TOKEN": ACCESS_TOKEN,
        "TSUNAGI_LINE_API_BASE": fake.url,
        "TSUNAGI_OUTBOX_WORKERS": str(SENDS),
    }


@contextmanager
def worker(env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """A ``tsunagi worker`` (the inbox and outbox workers alone); stopped afterwards."""
    log_path = Path(env["TSUNAGI_VAR_DIR"]).parent / f"worker-{time.monotonic_ns()}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(TSUNAGI), "worker"], env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=15)
        print(f"--- worker log ({log_path.name}) ---\n" + log_path.read_text(errors="replace")[-3000:])


def _dsn(database: str) -> str:
    return database.replace("postgresql+asyncpg://", "postgresql://", 1)


def query(database: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Rows of one statement, on a connection of the test's own."""

    async def go() -> list[asyncpg.Record]:
        con = await asyncpg.connect(_dsn(database), timeout=10)
        try:
            return list(await con.fetch(sql, *args))
        finally:
            await con.close()

    return asyncio.run(go())


def progress(database: str) -> str:
    """Where the database stands: messages stored, events by status, replies by status."""
    stored = query(database, "SELECT count(*) FROM message WHERE direction = 'in' AND kind = 'text'")[0][0]
    inbox = query(database, "SELECT status, count(*) FROM inbox GROUP BY status ORDER BY 1")
    outbox = query(
        database,
        "SELECT channel, status, left(last_error, 60), count(*) FROM outbox GROUP BY 1, 2, 3 ORDER BY 1, 2",
    )
    return f"stored {stored}, inbox {[tuple(r) for r in inbox]}, outbox {[tuple(r) for r in outbox]}"


def drained(database: str, total: int) -> bool:
    """Every message stored, every event handled and every reply out (nothing pending or parked)."""
    rows = query(
        database,
        "SELECT (SELECT count(*) FROM message WHERE direction = 'in' AND kind = 'text'),"
        " (SELECT count(*) FROM inbox WHERE status <> 'done'),"
        " (SELECT count(*) FROM outbox WHERE status <> 'delivered')",
    )
    stored, unhandled, unsent = rows[0]
    return bool(stored >= total and unhandled == 0 and unsent == 0)


def check(
    database: str, env: dict[str, str], people: list[Person], fake: FakeLine, *, in_flight: int = 0
) -> None:
    """Each person's messages stored once, in order; each answered once (as everyone on that channel is);
    every reply delivered; on LINE, what LINE got is exactly what was stored, in order, except that a
    reply sent with a reply token in the moment its process was killed (before it could record the send)
    goes again: LINE has no retry key for replies. ``in_flight``: how many sends a kill may have cut."""
    repeated: list[int] = []
    crypto = Crypto([env["TSUNAGI_DATA_KEY"].encode()])
    answers: dict[str, Counter[tuple[str, ...]]] = {}
    for p in people:
        rows = query(
            database,
            "SELECT m.direction, m.text_enc FROM message m JOIN conversation c ON c.id = m.conversation_id"
            " JOIN contact k ON k.id = c.contact_id WHERE k.channel = $1 AND k.lookup = $2"
            " AND m.kind = 'text' ORDER BY m.id",
            p.channel,
            crypto.lookup(p.channel, p.user),
        )
        said = [crypto.decrypt(r["text_enc"]) for r in rows if r["direction"] == "in"]
        assert said == list(SCRIPT), f"{p.channel}: stored {said}"
        replies = [crypto.decrypt(r["text_enc"]) for r in rows if r["direction"] == "out"]
        answers.setdefault(p.channel, Counter())[tuple(reply_keys(replies))] += 1
        if isinstance(p, LinePerson):
            got = [text for sent in fake.to(p.user) for text in sent.texts]
            assert _within(replies, got), "LINE got every stored reply, in order, and nothing else"
            if got != replies:
                repeated.append(len(got) - len(replies))
    for channel, seen in answers.items():
        assert len(seen) == 1, f"{channel}: people who said the same got different answers: {seen}"
        keys = next(iter(seen))
        assert len(keys) >= len(SCRIPT), f"{channel}: not every message was answered: {keys}"
    statuses = query(database, "SELECT status, count(*) FROM outbox GROUP BY status")
    assert [r["status"] for r in statuses] == ["delivered"]
    print(f"LINE people who got a reply again after a kill: {len(repeated)} (messages {repeated})")
    assert len(repeated) <= in_flight, f"more replies sent twice than sends a kill can cut: {repeated}"


def _within(stored: list[str], got: list[str]) -> bool:
    """``stored`` in order within ``got``, and ``got`` holds nothing that was not stored."""
    rest = iter(got)
    return all(text in rest for text in stored) and set(got) <= set(stored)


@pytest.fixture
def fake() -> Iterator[FakeLine]:
    with FakeLine(ACCESS_TOKEN) as f:
        yield f


@pytest.fixture
def shared_redis() -> Iterator[tuple[str, str]]:
    """The shared test Redis under a prefix of the test's own, deleted afterwards."""
    asyncio.run(require_redis())
    prefix = random_prefix()
    try:
        yield TEST_REDIS_URL, prefix
    finally:
        asyncio.run(delete_prefix(prefix))


def people_for(fake: FakeLine, line: int, chat: int, release: threading.Event) -> list[Person]:
    return [*(LinePerson(fake) for _ in range(line)), *(ChatPerson(release) for _ in range(chat))]


# -- kill -9 -----------------------------------------------------------------------------------------------


def test_serve_killed_during_a_burst_loses_and_doubles_nothing(
    tmp_path: Path, pg_database: str, shared_redis: tuple[str, str], fake: FakeLine
) -> None:
    """1,000 messages over LINE and the web chat; ``tsunagi serve`` (with its workers) is killed with
    SIGKILL when a third are acknowledged, and started again on the same port."""
    env = service_env(tmp_path, pg_database, *shared_redis, fake)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    release = threading.Event()
    people = people_for(fake, 50, 50, release)
    with server(env, port) as first:
        burst = Burst(people, lambda: base, release)
        burst.reach(1 / 3)
        first.kill()
        first.wait(timeout=10)
    with server(env, port):
        burst.finish(pg_database)
    check(pg_database, env, people, fake, in_flight=SENDS)


def test_worker_and_serve_killed_during_a_burst_lose_and_double_nothing(
    tmp_path: Path, pg_database: str, shared_redis: tuple[str, str], fake: FakeLine
) -> None:
    """``tsunagi serve --no-workers`` beside a ``tsunagi worker``: the worker is killed with SIGKILL in
    the middle of a burst and started again, then the server the same way."""
    env = service_env(tmp_path, pg_database, *shared_redis, fake)
    env["TSUNAGI_WORKERS"] = "false"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    release = threading.Event()
    people = people_for(fake, 30, 30, release)
    with ExitStack() as stack:
        serving = stack.enter_context(server(env, port))
        with worker(env) as first:
            burst = Burst(people, lambda: base, release)
            eventually(lambda: _answered(pg_database) >= burst.total // 4, "a quarter answered", DEADLINE)
            first.kill()
            first.wait(timeout=10)
        stack.enter_context(worker(env))
        burst.reach(2 / 3)
        serving.kill()
        serving.wait(timeout=10)
        stack.close()  # the second worker stopped, the killed server's log reported
        with server(env, port), worker(env):
            burst.finish(pg_database)
    check(pg_database, env, people, fake, in_flight=SENDS)


def _answered(database: str) -> int:
    return int(query(database, "SELECT count(*) FROM outbox WHERE status = 'delivered'")[0][0])


# -- PostgreSQL's connections terminated ---------------------------------------------------------------------


class Terminator:
    """Terminates every other connection to the test's database, again and again, in a thread."""

    def __init__(self, database: str) -> None:
        self.name = database.rsplit("/", 1)[1]
        self.dsn = _dsn(database).rsplit("/", 1)[0] + "/postgres"
        self.killed = 0
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Terminator:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    async def _run(self) -> None:
        con = await asyncpg.connect(self.dsn, timeout=10)
        try:
            while not self._stop.is_set():
                killed = await con.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = $1 AND pid <> pg_backend_pid()",
                    self.name,
                )
                self.killed += int(killed or 0)
                self.rounds += 1
                await asyncio.sleep(0.3)
        finally:
            await con.close()


def test_postgres_connections_terminated_during_a_burst(
    tmp_path: Path, pg_database: str, shared_redis: tuple[str, str], fake: FakeLine
) -> None:
    """Every connection of the service to its database is terminated every few tenths of a second while
    a third of a burst arrives: the service recovers by itself, a webhook it could not store is answered
    with a status LINE retries (5xx, never 200 or a 4xx), and nothing acknowledged is lost or doubled."""
    env = service_env(tmp_path, pg_database, *shared_redis, fake)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    release = threading.Event()
    people = people_for(fake, 10, 10, release)
    with server(env, port):
        burst = Burst(people, lambda: base, release)
        burst.reach(0.1)
        with Terminator(pg_database) as terminator:
            burst.reach(0.45)
        burst.finish(pg_database)
        refusals: Counter[int] = Counter()
        for p in people:
            if isinstance(p, LinePerson):
                refusals.update(p.refusals)
        print(
            f"terminated {terminator.killed} connections in {terminator.rounds} rounds; refusals {refusals}"
        )
        assert terminator.killed > 0, "the fault never happened"
        assert all(status >= 500 for status in refusals), f"a refusal LINE would not retry: {refusals}"
    check(pg_database, env, people, fake)


# -- Redis restarted empty, and flushed --------------------------------------------------------------------

HANDOFF = ("同意", "相談したい")
LIMIT = 4  # conversations a counsellor may hold


def test_redis_restarted_and_flushed_during_handoffs(
    tmp_path: Path, pg_database: str, fake: FakeLine
) -> None:
    """People ask for a counsellor while three counsellors claim; the service's Redis (a private one) is
    killed and started again empty, and later flushed. No handoff is lost (the queue is made again from
    the database), no conversation is claimed twice, a counsellor never holds more than the limit, and
    every claim stays with its counsellor."""
    with PrivateRedis(tmp_path / "redis") as redis:
        env = service_env(tmp_path, pg_database, redis.url, random_prefix(), fake)
        env["TSUNAGI_COUNSELLOR_LIMIT"] = str(LIMIT)
        names = ("sato", "suzuki", "tanaka")
        add_accounts(tmp_path, {name: ("counsellor", f"{name}-password-123") for name in names}, env=env)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        gone = threading.Event()
        gone.set()  # (they leave once their messages are acknowledged)
        people: list[ChatPerson] = [ChatPerson(gone) for _ in range(24)]
        with server(env, port):
            consoles = {name: Console(base, name, f"{name}-password-123") for name in names}
            pool = ThreadPoolExecutor(max_workers=len(people) + len(names))
            deadline = time.monotonic() + DEADLINE
            asked = [pool.submit(p.run, lambda: base, HANDOFF, deadline) for p in people]
            stop = threading.Event()
            claims = {name: pool.submit(_claim_until_told, c, stop, deadline) for name, c in consoles.items()}
            epoch = f"EXISTS {env['TSUNAGI_REDIS_PREFIX']}:queue:epoch"
            eventually(
                lambda: _handoffs(pg_database) >= 6 and sum(map(len, _held(pg_database).values())) >= 2,
                "six handoffs, two of them claimed",
                DEADLINE,
            )
            before = _held(pg_database)
            redis.restart()
            eventually(lambda: redis.command(epoch) == ":1", "the queue rebuilt after the restart", DEADLINE)
            eventually(lambda: _handoffs(pg_database) >= 14, "fourteen handoffs", DEADLINE)
            redis.flush()
            eventually(lambda: redis.command(epoch) == ":1", "the queue rebuilt after the flush", DEADLINE)
            for f in asked:
                f.result(timeout=DEADLINE)
            full = LIMIT * len(names)
            eventually(lambda: sum(map(len, _held(pg_database).values())) >= full, "everyone full", DEADLINE)
            stop.set()
            got = {name: f.result(timeout=DEADLINE) for name, f in claims.items()}
            pool.shutdown()

            held = _held(pg_database)
            ids = {name: _counsellor_id(pg_database, name) for name in names}
            waiting = {
                r[0]
                for r in query(pg_database, "SELECT conversation_id FROM handoff WHERE status = 'waiting'")
            }
            assert len(waiting) + sum(map(len, held.values())) == len(people), (
                "every person is waiting or held"
            )
            for name in names:
                mine = held.get(ids[name], set())
                assert got[name] == mine, f"{name}: the claims answered 200 are the ones the database has"
                assert len(mine) <= LIMIT
                assert before.get(ids[name], set()) <= mine, f"{name} lost a claim held before the restart"
            everyone = [c for cs in got.values() for c in cs]
            assert len(everyone) == len(set(everyone)), "a conversation claimed twice"

            def agrees() -> bool:
                status, queue = consoles["sato"].call("GET", "/api/console/queue")
                if status != 200 or {q["conversation_id"] for q in queue} != waiting:
                    return False
                return all(
                    set(consoles[name].call("GET", "/api/console/me")[1]["held"])
                    == held.get(ids[name], set())
                    for name in names
                )

            eventually(agrees, "the queue and every holding as the database has them", DEADLINE)


def _handoffs(database: str) -> int:
    return int(query(database, "SELECT count(*) FROM handoff")[0][0])


def _held(database: str) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for r in query(database, "SELECT counsellor_id, conversation_id FROM handoff WHERE status = 'claimed'"):
        out.setdefault(r[0], set()).add(r[1])
    return out


def _counsellor_id(database: str, username: str) -> int:
    return int(query(database, "SELECT id FROM counsellor WHERE username = $1", username)[0][0])


def _claim_until_told(console: Console, stop: threading.Event, deadline: float) -> set[str]:
    """Claim from the queue as it is listed, whatever fails meanwhile, the limit notwithstanding (the
    service must refuse beyond it), until ``stop``; the conversations whose claim was answered 200."""
    mine: set[str] = set()
    while not stop.is_set():
        if time.monotonic() > deadline:
            raise AssertionError(f"still claiming at the deadline ({len(mine)} claimed)")
        try:
            status, queue = console.call("GET", "/api/console/queue")
            for entry in queue if status == 200 else []:
                cid = entry["conversation_id"]
                status, _ = console.call("POST", f"/api/console/conversations/{cid}/claim")
                if status == 200:
                    mine.add(cid)
                    break
        except (OSError, ValueError):
            pass  # the server answered something that is not JSON, or not at all: try again
        time.sleep(0.05)
    return mine
