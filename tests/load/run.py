"""The load benchmark's run and report (``make load``, ``python -m tests.load``).

1. The ceiling: the bare endpoint (tests/load/bare.py) at each rate, for its acknowledgement times and its
   CPU per event.
2. One ``tsunagi serve`` (with its in-process workers; ``--worker-processes N`` adds ``tsunagi worker``
   processes where that command exists) on a fresh PostgreSQL database and a Redis database index of its
   own (flushed before and after), LINE pointed at the fake LINE API (tests/load/fake.py).
3. At each rate, signed webhooks open-loop from a new person each, then a wait until every event was
   answered at the fake (or ``--drain`` seconds): accepted rate, acknowledgement and reply times, lost,
   doubled, pushes instead of replies, CPU per event and its ratio to the bare endpoint, the driver's lag.
4. A crisis message sent right behind a burst of ``--backlog`` ordinary events: when it was answered.
5. Web chat sessions, each sending a message every ``--every`` seconds: round trip to the ack and to the
   bot's answer. Last, because replies left for sessions that closed can hold back the outbox.

The machine is shared and the driver, the fake API, PostgreSQL and Redis run on it too: the figures are
a measurement of this machine on that day, not a constant.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from cryptography.fernet import Fernet

from bot.redis_client import connect
from tests.helpers import ROOT, TSUNAGI, free_port, postgres_database, server
from tests.load.driver import CRISIS, ChatSession, Planned, Shot, chat_session, open_loop, plan
from tests.load.profile import Profiler
from tests.redis_helpers import TEST_REDIS_URL

SECRET = "load-channel-secret-0123456789abc"
ACCESS_TOKEN = "load-channel-access-token"
DESTINATION = "U" + "0" * 32
TOKEN_TTL = 60.0  # LINE: a reply token is good for about a minute after the event
TICK = os.sysconf("SC_CLK_TCK")
START = 180.0  # seconds a server gets to start: the first start migrates, and the machine is shared


# -- arguments ---------------------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.load", description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", default="25,50,100,150", help="LINE events per second, comma separated")
    p.add_argument("--seconds", type=float, default=10, help="seconds of load at each rate")
    p.add_argument("--bare-seconds", type=float, default=5, help="seconds at each rate on the bare endpoint")
    p.add_argument("--drain", type=float, default=120, help="seconds to wait for the last replies")
    p.add_argument("--backlog", type=int, default=2000, help="ordinary events in front of the crisis")
    p.add_argument("--backlog-rate", type=float, default=400, help="events per second of that burst")
    p.add_argument("--sessions", type=int, default=300, help="web chat sessions (0: none; the target: 1000)")
    p.add_argument("--every", type=float, default=10, help="seconds between a session's messages")
    p.add_argument("--chat-seconds", type=float, default=30, help="seconds the sessions keep sending")
    p.add_argument("--worker-processes", type=int, default=0, help="`tsunagi worker` processes beside serve")
    p.add_argument(
        "--serve-processes",
        type=int,
        default=1,
        help="`tsunagi serve` instances, each webhook sent to the next in turn (as a load balancer would)",
    )
    p.add_argument(
        "--serve-no-workers",
        action="store_true",
        help="serve takes traffic only (TSUNAGI_WORKERS=false): use with --worker-processes",
    )
    p.add_argument(
        "--redis-db", type=int, default=11, help="the Redis database index, flushed before and after"
    )
    p.add_argument(
        "--profile", type=float, default=0, help="profile `tsunagi serve` with py-spy at this rate"
    )
    p.add_argument("--profile-out", default="var/load-profile.txt", help="where the profile's stacks go")
    p.add_argument("--json", default="", help="also write the report as JSON here")
    p.add_argument("--quick", action="store_true", help="a smoke run: tiny rates and counts, a minute or so")
    args = p.parse_args(argv)
    if args.quick:
        args.rates, args.seconds, args.bare_seconds, args.drain = "4", 3.0, 2.0, 60.0
        args.backlog, args.backlog_rate, args.sessions, args.every, args.chat_seconds = 40, 40.0, 4, 2.0, 5.0
    args.rate_list = [float(r) for r in args.rates.split(",") if r.strip()]
    return args


# -- figures -----------------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank) in milliseconds, of values in seconds; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] * 1000, 1)


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time used so far by these processes."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / TICK


@dataclass
class Arrival:
    via: str
    texts: tuple[str, ...]
    at: float


@dataclass
class Fake:
    """The fake LINE API's control paths, and what it accepted so far, by person."""

    http: aiohttp.ClientSession
    url: str
    by_user: dict[str, list[Arrival]] = field(default_factory=lambda: defaultdict(list))
    seen: int = 0
    loading: int = 0
    unexpected: int = 0

    async def tokens(self, planned: list[Planned], start_in: float = 0.1) -> None:
        items = [[p.token, p.user, p.offset + start_in + TOKEN_TTL] for p in planned]
        async with self.http.post(f"{self.url}/_load/tokens", json={"tokens": items}) as r:
            r.raise_for_status()

    async def poll(self) -> None:
        async with self.http.get(f"{self.url}/_load/sent?since={self.seen}") as r:
            r.raise_for_status()
            got = await r.json()
        for s in got["sent"]:
            self.by_user[s["to"]].append(Arrival(s["via"], tuple(s["texts"]), s["at"]))
        self.seen += len(got["sent"])
        self.loading, self.unexpected = got["loading"], got["unexpected"]

    async def drain(self, users: set[str], within: float) -> None:
        """Until every one of ``users`` has an answer, or ``within`` seconds; then a moment more, for
        anything sent twice."""
        deadline = time.monotonic() + within
        while True:
            await self.poll()
            if all(self.by_user.get(u) for u in users) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)
        await self.poll()


def line_figures(shots: list[Shot], seconds: float, fake: Fake | None) -> dict[str, Any]:
    acked = [s for s in shots if s.acked is not None]
    out: dict[str, Any] = {
        "sent": len(shots),
        "accepted_per_s": round(len(acked) / seconds, 1),
        "refused": len(shots) - len(acked),
        "ack_p50_ms": pct([s.acked - s.at for s in acked if s.acked], 50),
        "ack_p99_ms": pct([s.acked - s.at for s in acked if s.acked], 99),
        "driver_lag_p99_ms": pct([s.lag for s in shots], 99),
        "driver_lag_max_ms": pct([s.lag for s in shots], 100),
    }
    if fake is None:
        return out
    replies, lost, doubled, pushes, last = [], 0, 0, 0, 0.0
    for s in shots:
        arrivals = fake.by_user.get(s.planned.user, [])
        if not arrivals:
            lost += 1
            continue
        replies.append(arrivals[0].at - s.at)
        last = max(last, arrivals[0].at)
        pushes += arrivals[0].via == "push"
        doubled += sum(n - 1 for n in Counter(a.texts for a in arrivals).values())
    first = min(s.at for s in shots)
    out.update(
        reply_p50_ms=pct(replies, 50),
        reply_p99_ms=pct(replies, 99),
        processed_per_s=round(len(replies) / max(last - first, seconds), 1) if replies else 0.0,
        lost=lost,
        doubled=doubled,
        pushes=pushes,
    )
    return out


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a server that may still hold many sockets and a backlog: a minute to finish, then killed
    (helpers.server alone gives it ten seconds, and fails the run when that is not enough)."""
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def progress(line: str) -> None:
    print(f"[load {time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


# -- processes -------------------------------------------------------------------------------------------


@contextmanager
def fake_line_process() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.load.fake", ACCESS_TOKEN],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # connections the server's client dropped, told as tracebacks
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        yield proc.stdout.readline().decode().strip()
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)


def clean_env(work: Path) -> dict[str, str]:
    """The environment without any TSUNAGI_ setting of the caller's (the run chooses its own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TSUNAGI_")}
    env["TSUNAGI_VAR_DIR"] = str(work / "var")
    env["PYTHONPATH"] = str(ROOT)
    return env


def redis_url(db: int) -> str:
    """The tests' Redis server, at a database index of the run's own."""
    return urlsplit(TEST_REDIS_URL)._replace(path=f"/{db}").geturl()


async def flush_redis(url: str) -> None:
    client = connect(url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


# -- the phases ------------------------------------------------------------------------------------------


async def line_rate(
    http: aiohttp.ClientSession,
    base: str | list[str],
    fake: Fake | None,
    rate: float,
    seconds: float,
    pids: list[int],
    drain: float,
    profiler: Profiler | None = None,
) -> dict[str, Any]:
    planned = plan(max(1, round(rate * seconds)), rate, SECRET, DESTINATION)
    if fake is not None:
        await fake.tokens(planned)
    cpu = cpu_seconds(pids)
    if profiler is not None:
        profiler.start()
    shots = await open_loop(http, _webhooks(base), planned)
    if fake is not None:
        await fake.drain({p.user for p in planned}, drain)
    if profiler is not None:
        profiler.stop()
    figures = {"rate": rate, **line_figures(shots, seconds, fake)}
    figures["cpu_ms_per_event"] = round((cpu_seconds(pids) - cpu) * 1000 / len(planned), 2)
    progress(f"{'tsunagi' if fake else 'bare'} at {rate:g}/s: {figures}")
    return figures


def _webhooks(base: str | list[str]) -> list[str]:
    """The LINE webhook of each instance (a webhook goes to each in turn)."""
    return [b + "/webhooks/line" for b in ([base] if isinstance(base, str) else base)]


async def crisis_in_backlog(
    http: aiohttp.ClientSession, base: str | list[str], fake: Fake, count: int, rate: float, drain: float
) -> dict[str, Any]:
    planned = plan(count, rate, SECRET, DESTINATION)
    crisis = plan(1, rate, SECRET, DESTINATION, texts=(CRISIS,), start=count / rate)[0]
    planned.append(crisis)
    await fake.tokens(planned)
    shots = await open_loop(http, _webhooks(base), planned)
    await fake.drain({p.user for p in planned}, drain)
    figures = line_figures(shots[:-1], count / rate, fake)
    answer = fake.by_user.get(crisis.user, [])
    sent_at = shots[-1].at
    figures["crisis_answered_s"] = round(answer[0].at - sent_at, 2) if answer else None
    figures["crisis_via"] = answer[0].via if answer else None
    figures["ordinary_answered_before_crisis"] = (
        sum(1 for s in shots[:-1] if (a := fake.by_user.get(s.planned.user)) and a[0].at < answer[0].at)
        if answer
        else None
    )
    return figures


async def web_chat(
    http: aiohttp.ClientSession, ws_url: str, n: int, every: float, seconds: float
) -> dict[str, Any]:
    start = time.monotonic() + 0.5
    until = start + every + seconds
    sessions: list[ChatSession] = await asyncio.gather(
        *(chat_session(http, ws_url, start + i * every / n, until, every) for i in range(n))
    )
    sent = [(s, m) for s in sessions for m in s.sent]
    acks = [s.acked[m] - s.sent[m] for s, m in sent if m in s.acked]
    answers = [s.answered[m] - s.sent[m] for s, m in sent if m in s.answered]
    return {
        "sessions": n,
        "failed_sessions": sum(1 for s in sessions if s.error),
        "messages": len(sent),
        "per_s": round(len(sent) / seconds, 1),
        "ack_p50_ms": pct(acks, 50),
        "ack_p99_ms": pct(acks, 99),
        "reply_p50_ms": pct(answers, 50),
        "reply_p99_ms": pct(answers, 99),
        "lost": len(sent) - len(acks),
        "unanswered": len(sent) - len(answers),
        "driver_lag_p99_ms": pct([x for s in sessions for x in s.lag], 99),
        "errors": sorted({s.error for s in sessions if s.error})[:3],
    }


# -- the run ---------------------------------------------------------------------------------------------


def start_workers(n: int, env: dict[str, str], work: Path, stack: ExitStack) -> list[int]:
    """``n`` `tsunagi worker` processes, stopped with the stack; their ids."""
    if n and subprocess.run([str(TSUNAGI), "worker", "--help"], capture_output=True).returncode:
        raise SystemExit("--worker-processes: this tsunagi has no `worker` command yet")
    pids = []
    for _ in range(n):
        w = subprocess.Popen([str(TSUNAGI), "worker"], env=env, cwd=work)
        stack.callback(w.wait, 10)
        stack.callback(w.terminate)
        pids.append(w.pid)
    return pids


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    report: dict[str, Any] = {"rates": [], "bare": [], "crisis": None, "web_chat": None}
    report["load_before"] = os.getloadavg()[0]
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        # 1. the ceiling
        port = free_port()
        with server(
            clean_env(work),
            port,
            command=[sys.executable, "-m", "tests.load.bare"],
            cwd=work,
            start_timeout=START,
        ) as bare:
            for rate in args.rate_list:
                report["bare"].append(
                    await line_rate(
                        http, f"http://127.0.0.1:{port}", None, rate, args.bare_seconds, [bare.pid], 0
                    )
                )
        await _tsunagi(args, work, http, report)
    report["load_after"] = os.getloadavg()[0]
    return report


async def _tsunagi(
    args: argparse.Namespace, work: Path, http: aiohttp.ClientSession, report: dict[str, Any]
) -> None:
    with fake_line_process() as fake_url:
        fake = Fake(http, fake_url)
        rurl = redis_url(args.redis_db)
        await flush_redis(rurl)
        try:
            async with postgres_database() as database:
                env = {
                    **clean_env(work),
                    "TSUNAGI_DATABASE_URL": database,
                    "TSUNAGI_REDIS_URL": rurl,
                    "TSUNAGI_REDIS_PREFIX": "tsunagi-load",
                    "TSUNAGI_DATA_KEY": Fernet.generate_key().decode(),
                    "TSUNAGI_SECRET_KEY": "load-secret-key",
                    "TSUNAGI_SMTP_LISTEN": "",
                    "TSUNAGI_LINE_CHANNEL_SECRET": SECRET,
                    "TSUNAGI_LINE_CHANNEL_ACCESS_TOKEN": ACCESS_TOKEN,
                    "TSUNAGI_LINE_API_BASE": fake_url,
                }
                with ExitStack() as stack:
                    serve_env = {**env, "TSUNAGI_WORKERS": "false"} if args.serve_no_workers else env
                    ports = [free_port() for _ in range(max(1, args.serve_processes))]
                    serves = [
                        stack.enter_context(server(serve_env, port, cwd=work, start_timeout=START))
                        for port in ports
                    ]
                    serve = serves[0]
                    pids = [s.pid for s in serves]
                    pids += start_workers(args.worker_processes, env, work, stack)
                    bases = [f"http://127.0.0.1:{port}" for port in ports]
                    base = bases[0]
                    for rate in args.rate_list:
                        profiler = None
                        if args.profile and rate == args.profile:
                            profiler = Profiler(serve.pid, Path(args.profile_out))
                        figures = await line_rate(
                            http, bases, fake, rate, args.seconds, pids, args.drain, profiler
                        )
                        bare_cpu = next(b for b in report["bare"] if b["rate"] == rate)["cpu_ms_per_event"]
                        figures["x_bare_cpu"] = (
                            round(figures["cpu_ms_per_event"] / bare_cpu, 1) if bare_cpu else None
                        )
                        if profiler is not None:
                            figures["profile"] = profiler.summary()
                        report["rates"].append(figures)
                    if args.backlog:
                        report["crisis"] = {
                            "backlog": args.backlog,
                            **await crisis_in_backlog(
                                http, bases, fake, args.backlog, args.backlog_rate, max(args.drain, 300)
                            ),
                        }
                        progress(f"crisis: {report['crisis']}")
                    if args.sessions:
                        report["web_chat"] = await web_chat(
                            http,
                            base.replace("http", "ws", 1) + "/chat/ws",
                            args.sessions,
                            args.every,
                            args.chat_seconds,
                        )
                    report["loading_calls"] = fake.loading
                    report["unexpected_calls"] = fake.unexpected
                    for each in serves:
                        stop(each)
        finally:
            await flush_redis(rurl)


# -- the report --------------------------------------------------------------------------------------------

COLUMNS = [
    ("rate", "events/s"),
    ("accepted_per_s", "accepted/s"),
    ("processed_per_s", "answered/s"),
    ("ack_p50_ms", "ack p50"),
    ("ack_p99_ms", "ack p99"),
    ("reply_p50_ms", "reply p50"),
    ("reply_p99_ms", "reply p99"),
    ("lost", "lost"),
    ("doubled", "doubled"),
    ("pushes", "pushes"),
    ("cpu_ms_per_event", "CPU ms/event"),
    ("x_bare_cpu", "x bare"),
    ("bare_ack_p99_ms", "bare ack p99"),
    ("driver_lag_p99_ms", "driver lag p99"),
]


def render(report: dict[str, Any], args: argparse.Namespace) -> str:
    serving = "taking traffic only" if args.serve_no_workers else "each with its workers"
    lines = [
        f"Instances: {max(1, args.serve_processes)} `tsunagi serve` ({serving}), "
        f"{args.worker_processes} `tsunagi worker`; PostgreSQL and Redis on the same machine\n",
        f"LINE webhooks, open-loop, {args.seconds:g} s at each rate, one new person per event "
        "(times in ms; reply = at the fake LINE API, from the planned send time)",
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in report["rates"]:
        bare = next(b for b in report["bare"] if b["rate"] == row["rate"])
        row = {**row, "bare_ack_p99_ms": bare["ack_p99_ms"]}
        lines.append("| " + " | ".join(_cell(row.get(key)) for key, _ in COLUMNS) + " |")
    c = report.get("crisis")
    if c:
        lines.append(
            f"\nCrisis behind {c['backlog']} ordinary events (sent at {args.backlog_rate:g}/s): "
            "answered after "
            f"{_cell(c['crisis_answered_s'])} s by {c['crisis_via']}, "
            f"{_cell(c['ordinary_answered_before_crisis'])} ordinary answered before it; the burst: accepted "
            f"{c['sent'] - c['refused']}/{c['sent']}, ack p99 {_cell(c['ack_p99_ms'])} ms, reply p50/p99 "
            f"{_cell(c['reply_p50_ms'])}/{_cell(c['reply_p99_ms'])} ms, lost {c['lost']}, doubled "
            f"{c['doubled']}, pushes {c['pushes']}"
        )
    w = report.get("web_chat")
    if w:
        lines.append(
            f"\nWeb chat: {w['sessions']} sessions, a message every {args.every:g} s "
            f"for {args.chat_seconds:g} s "
            f"({w['messages']} messages, {w['failed_sessions']} sessions failed): ack p50/p99 "
            f"{_cell(w['ack_p50_ms'])}/{_cell(w['ack_p99_ms'])} ms, answer p50/p99 "
            f"{_cell(w['reply_p50_ms'])}/{_cell(w['reply_p99_ms'])} ms, lost {w['lost']}, unanswered "
            f"{w['unanswered']}, driver lag p99 {_cell(w['driver_lag_p99_ms'])} ms"
        )
    lines.append(
        f"\nLoading-indicator calls: {report.get('loading_calls')}; unexpected calls at the fake: "
        f"{report.get('unexpected_calls')}; the machine's load average (1 min) before and after: "
        f"{report['load_before']:.1f}, {report['load_after']:.1f} on {os.cpu_count()} cores"
    )
    for row in report["rates"]:
        if "profile" in row:
            lines.append(f"\nProfile at {row['rate']:g} events/s (share of samples in `tsunagi serve`):")
            lines += [f"  {share:5.1f}%  {name}" for name, share in row["profile"]]
    return "\n".join(lines)


def _cell(value: object) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    work = Path(tempfile.mkdtemp(prefix="tsunagi-load-"))
    try:
        report = asyncio.run(run(args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = render(report, args)
    print("\n" + text)
    if args.json:
        Path(args.json).write_text(json.dumps(report, ensure_ascii=False, indent=1))
    return 0
