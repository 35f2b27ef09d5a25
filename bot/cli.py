"""The ``tsunagi`` command line."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Iterator
from typing import IO, Any

from triage import MAX_CHARS, get_engine
from triage.engine import Engine
from triage.normalize import sanitize
from triage.ruleset import ContentError


def _error(line_no: int, ident: Any, message: str) -> dict[str, Any]:
    out: dict[str, Any] = {"error": message, "line": line_no}
    out["id"] = ident if ident is not None else line_no
    return out


def triage_lines(lines: Iterable[str], engine: Engine) -> Iterator[dict[str, Any]]:
    """One output object for each non-empty input line, in order; bad lines give an error object."""
    for line_no, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            yield _error(line_no, None, f"not valid JSON: {e.__class__.__name__}")
            continue
        if not isinstance(obj, dict):
            yield _error(line_no, None, "each line must be a JSON object with 'text'")
            continue
        ident = obj.get("id", line_no)
        if not isinstance(ident, (str, int, float)) or isinstance(ident, bool):
            ident = line_no
        text = obj.get("text")
        if not isinstance(text, str):
            yield _error(line_no, ident, "missing 'text' (a string)")
            continue
        history = obj.get("history", [])
        if not isinstance(history, list) or not all(isinstance(h, str) for h in history):
            yield _error(line_no, ident, "'history' must be a list of strings")
            continue
        result = engine.triage_conversation(text, history) if history else engine.triage(text)
        out: dict[str, Any] = {"id": ident}
        out.update(result.to_json())
        if result.truncated:
            out["note"] = f"text longer than {MAX_CHARS} characters: only the first {MAX_CHARS} were read"
        if result.empty:
            out["note"] = "empty text"
        yield out


def _write(out: IO[str], obj: dict[str, Any]) -> None:
    text = json.dumps(obj, ensure_ascii=False)
    out.write(sanitize(text) + "\n")


def cmd_triage(args: argparse.Namespace) -> int:
    try:
        engine = get_engine()
    except ContentError as e:
        print(f"tsunagi triage: the triage content is invalid: {e}", file=sys.stderr)
        return 2
    # Decode leniently: a broken byte must not stop the stream (it becomes U+FFFD).
    stdin = open(sys.stdin.fileno(), encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    stdout = sys.stdout
    for obj in triage_lines(stdin, engine):
        _write(stdout, obj)
        if args.flush:
            stdout.flush()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from bot.config import Settings
    from bot.web import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    if args.no_workers:
        settings = settings.model_copy(update={"workers": False})
    app = create_app(settings)
    # Access logs are off: a URL can carry a token; the application logs ids and states only.
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="info",
        access_log=False,
        ws_max_size=256 * 1024,
        timeout_graceful_shutdown=10,  # open connections get this long to finish at a stop
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """The inbox and outbox workers (and the retention sweep and queue watchdog) alone, without the web
    application or the mail listener, beside any number of ``tsunagi serve``: they share the work
    through the database (each row claimed once) and hand a web chat's reply over Redis to the instance
    the person is connected to."""
    import asyncio
    import logging
    import signal

    from bot.config import Settings
    from bot.service import Service

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    if not settings.redis_url:
        print(
            "tsunagi worker: set TSUNAGI_REDIS_URL (and TSUNAGI_DATABASE_URL) as for the `tsunagi serve`\n"
            "processes it works beside: without Redis the queue and live updates are in-process, and only\n"
            "`tsunagi serve` with its own workers can run",
            file=sys.stderr,
        )
        return 2

    async def run() -> None:
        svc = Service(settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await svc.start(serve=False)
        logging.getLogger("tsunagi").info(
            "tsunagi worker: %d inbox tasks, %d sends per channel",
            settings.inbox_workers,
            settings.outbox_workers,
        )
        try:
            await stop.wait()
        finally:
            await svc.stop()

    asyncio.run(run())
    return 0


def cmd_rotate_keys(args: argparse.Namespace) -> int:
    import asyncio

    from bot.config import Settings
    from bot.keys import rotate_keys

    settings = Settings()
    if len(settings.data_keys) < 2:
        print("tsunagi rotate-keys: put the new key first in TSUNAGI_DATA_KEY (new,old)", file=sys.stderr)
        return 2
    done = asyncio.run(rotate_keys(settings))
    tables = ", ".join(f"{name} {n}" for name, n in done.cells.items() if n)
    print(
        f"re-encrypted {sum(done.cells.values())} values ({tables or 'none'}) with the first key, "
        f"and re-hashed {done.contacts} contacts"
    )
    return 0


def cmd_counsellor_add(args: argparse.Namespace) -> int:
    """Add a console account; the password is read from standard input (never from the command line,
    which other users of the machine can see)."""
    import asyncio

    from sqlalchemy import select
    from sqlmodel import col

    from bot.config import Settings
    from bot.db import Database
    from bot.models import Counsellor, Role
    from handoff.console.auth import USERNAME, create_counsellor, password_problem

    if sys.stdin.isatty():
        import getpass

        password = getpass.getpass("password: ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    problem = password_problem(password)
    if not re.match(USERNAME, args.username):
        problem = "a username is 1 to 64 letters, digits, '.', '_' or '-'"
    if problem:
        print(f"tsunagi counsellor add: {problem}", file=sys.stderr)
        return 2

    async def add() -> str | None:
        db = Database(Settings().resolved_database_url)
        try:
            await db.migrate()
            async with db.session() as s, s.begin():
                if await s.scalar(select(Counsellor).where(col(Counsellor.username) == args.username)):
                    return f"an account '{args.username}' already exists"
                await create_counsellor(s, args.username, password, Role(args.role))
        finally:
            await db.dispose()
        return None

    error = asyncio.run(add())
    if error:
        print(f"tsunagi counsellor add: {error}", file=sys.stderr)
        return 1
    print(f"added {args.role} '{args.username}'")
    return 0


def cmd_counsellor_list(args: argparse.Namespace) -> int:
    """The console accounts, a line each: name, role, and whether it is disabled, on duty, or still has a
    one-time password."""
    import asyncio

    from sqlalchemy import select
    from sqlmodel import col

    from bot.config import Settings
    from bot.db import Database
    from bot.models import Counsellor

    async def read() -> list[Counsellor]:
        db = Database(Settings().resolved_database_url)
        try:
            await db.migrate()
            async with db.session() as s:
                return list((await s.scalars(select(Counsellor).order_by(col(Counsellor.username)))).all())
        finally:
            await db.dispose()

    for c in asyncio.run(read()):
        marks = [
            "active" if c.active else "disabled",
            *(["on duty"] if c.on_duty else []),
            *(["one-time password"] if c.must_change_password else []),
        ]
        print(f"{c.username}\t{c.role}\t{', '.join(marks)}")
    return 0


def cmd_counsellor_reset_password(args: argparse.Namespace) -> int:
    """A new one-time password for an account, printed once (to be changed at the next login); its
    sessions end. The way back in when the last administrator has forgotten theirs."""
    import asyncio

    from sqlalchemy import select
    from sqlmodel import col

    from bot.config import Settings
    from bot.db import Database
    from bot.models import AuditLog, Counsellor
    from handoff.console.auth import reset_password

    async def reset() -> str | None:
        db = Database(Settings().resolved_database_url)
        try:
            await db.migrate()
            async with db.session() as s, s.begin():
                c = await s.scalar(select(Counsellor).where(col(Counsellor.username) == args.username))
                if c is None:
                    return None
                password = await reset_password(s, c)
                s.add(AuditLog(actor="cli", action="account.password_reset", detail=args.username))
        finally:
            await db.dispose()
        return password

    password = asyncio.run(reset())
    if password is None:
        print(f"tsunagi counsellor reset-password: no account '{args.username}'", file=sys.stderr)
        return 1
    print(f"one-time password for '{args.username}' (to be changed at the next login): {password}")
    return 0


def cmd_telegram_set_webhook(args: argparse.Namespace) -> int:
    """Tell Telegram where to deliver updates, with the secret token it must send back on each."""
    import asyncio

    from telegram.error import InvalidToken, TelegramError

    from bot.config import Settings
    from channels.telegram import ALLOWED_UPDATES, make_bot

    prog = "tsunagi telegram set-webhook"
    settings = Settings()
    if not (settings.telegram_bot_token and settings.telegram_secret_token):
        print(
            f"{prog}: set TSUNAGI_TELEGRAM_BOT_TOKEN and TSUNAGI_TELEGRAM_SECRET_TOKEN first", file=sys.stderr
        )
        return 2
    if not args.url.startswith("https://"):
        print(f"{prog}: Telegram only delivers to https:// URLs, not {args.url!r}", file=sys.stderr)
        return 2

    async def set_webhook() -> bool:
        async with make_bot(settings) as bot:
            return await bot.set_webhook(
                args.url,
                secret_token=settings.telegram_secret_token,
                allowed_updates=list(ALLOWED_UPDATES),
            )

    try:
        ok = asyncio.run(set_webhook())
    except InvalidToken:  # its message would print the token
        print(f"{prog}: Telegram rejected the bot token (TSUNAGI_TELEGRAM_BOT_TOKEN)", file=sys.stderr)
        return 1
    except TelegramError as e:
        print(f"{prog}: Telegram refused: {e.message}", file=sys.stderr)
        return 1
    if not ok:
        print(f"{prog}: Telegram answered false", file=sys.stderr)
        return 1
    print(f"webhook set: {args.url} (updates: {', '.join(ALLOWED_UPDATES)})")
    return 0


def cmd_safety_table(args: argparse.Namespace) -> int:
    """docs/safety.md: the conversation's safety table, made from bot/dialogue.py and content/."""
    from bot.content import get_content
    from bot.safety_doc import render

    try:
        text = render(get_content())
    except ContentError as e:
        print(f"tsunagi safety-table: the content is invalid: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


def cmd_content_check(args: argparse.Namespace) -> int:
    """Every content file, loaded as the service loads it; exit 1 with each problem named."""
    from pathlib import Path

    from bot.content_check import check
    from triage.paths import CONTENT_ROOT

    root = Path(args.dir).resolve() if args.dir else CONTENT_ROOT
    problems = check(root)
    for problem in problems:
        print(f"{root}/{problem}" if not problem.startswith("/") else problem, file=sys.stderr)
    if problems:
        print(f"tsunagi content check: {len(problems)} problem(s) in {root}", file=sys.stderr)
        return 1
    print(f"content ok: {root}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tsunagi", description="tsunagi consultation chatbot")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("triage", help="triage JSON Lines from standard input (see TAXONOMY.md)")
    p.add_argument("--flush", action="store_true", help="flush after every line (for pipes)")
    p.set_defaults(func=cmd_triage)
    s = sub.add_parser("serve", help="run the web application")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument(
        "--no-workers",
        action="store_true",
        help="take traffic only: the workers run in `tsunagi worker` (as TSUNAGI_WORKERS=false)",
    )
    s.set_defaults(func=cmd_serve)
    w = sub.add_parser("worker", help="the inbox and outbox workers alone, beside `tsunagi serve` processes")
    w.set_defaults(func=cmd_worker)
    c = sub.add_parser("counsellor", help="console accounts")
    csub = c.add_subparsers(dest="action", required=True)
    ca = csub.add_parser("add", help="add an account; the password is read from standard input")
    ca.add_argument("username")
    ca.add_argument("--role", choices=["counsellor", "supervisor", "admin"], default="counsellor")
    ca.set_defaults(func=cmd_counsellor_add)
    cl = csub.add_parser("list", help="the accounts, a line each")
    cl.set_defaults(func=cmd_counsellor_list)
    cr = csub.add_parser("reset-password", help="a new one-time password for an account, printed once")
    cr.add_argument("username")
    cr.set_defaults(func=cmd_counsellor_reset_password)
    st = sub.add_parser("safety-table", help="print docs/safety.md (the dialogue's safety table) again")
    st.set_defaults(func=cmd_safety_table)
    co = sub.add_parser("content", help="the content files (replies, referrals, rules, pages)")
    cosub = co.add_subparsers(dest="action", required=True)
    cc = cosub.add_parser("check", help="validate every content file; exit 1 with each problem named")
    cc.add_argument(
        "--dir", help="the content folder to check (default: TSUNAGI_CONTENT_DIR, or the shipped one)"
    )
    cc.set_defaults(func=cmd_content_check)
    k = sub.add_parser("rotate-keys", help="re-encrypt stored data with the first key of TSUNAGI_DATA_KEY")
    k.set_defaults(func=cmd_rotate_keys)
    t = sub.add_parser("telegram", help="the Telegram bot")
    tsub = t.add_subparsers(dest="action", required=True)
    tw = tsub.add_parser(
        "set-webhook", help="point the bot's webhook at URL (https://<host>/webhooks/telegram)"
    )
    tw.add_argument("url")
    tw.set_defaults(func=cmd_telegram_set_webhook)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
