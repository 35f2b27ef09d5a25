"""The ``tsunagi`` command line."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import IO, TYPE_CHECKING, Any, TypeVar

from triage import MAX_CHARS, get_engine
from triage.engine import Engine
from triage.normalize import sanitize
from triage.ruleset import ContentError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

T = TypeVar("T")


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
    import uvicorn

    from bot import logs
    from bot.config import Settings
    from bot.guard import header_deadline
    from bot.web import create_app
    from channels.webchat import MAX_IMAGE_FRAME

    settings = Settings()
    logs.configure(settings.log_format)
    if args.no_workers:
        settings = settings.model_copy(update={"workers": False})
    app = create_app(settings)
    # Uvicorn's access log is off (a URL can carry a token): the app writes its own, with the route's
    # template instead of the path (bot/logs.py). Uvicorn's other logs go through our handler.
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_config=None,
        log_level="info",
        access_log=False,
        # A web chat frame carries at most a picture (8 MB, in base64): a larger frame closes the socket
        # (1009) before it is read whole.
        ws_max_size=MAX_IMAGE_FRAME,
        # Headers must arrive within the read timeout (uvicorn itself has no such limit).
        http=header_deadline(settings.read_timeout),
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

    from bot import logs
    from bot.config import Settings
    from bot.service import Service
    from bot.web import serve_metrics

    settings = Settings()
    logs.configure(settings.log_format)
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
        listener = None
        if args.metrics_port:
            listener = await serve_metrics(svc, args.metrics_host, args.metrics_port)
            logging.getLogger("tsunagi").info(
                "tsunagi worker: /metrics on %s:%d", args.metrics_host, args.metrics_port
            )
        logging.getLogger("tsunagi").info(
            "tsunagi worker: %d inbox tasks, %d sends per channel",
            settings.inbox_workers,
            settings.outbox_workers,
        )
        try:
            await stop.wait()
        finally:
            if listener is not None:
                listener.close()
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


def _accounts(work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run ``work`` in one transaction on the configured database (migrated first)."""
    import asyncio

    from bot.config import Settings
    from bot.db import Database

    async def run() -> T:
        db = Database(Settings().resolved_database_url)
        try:
            await db.migrate()
            async with db.session() as s, s.begin():
                return await work(s)
        finally:
            await db.dispose()

    return asyncio.run(run())


def cmd_counsellor_add(args: argparse.Namespace) -> int:
    """Add a console account; the password is read from standard input (never from the command line,
    which other users of the machine can see)."""
    from bot.models import Role
    from bot.storage import accounts

    if sys.stdin.isatty():
        import getpass

        password = getpass.getpass("password: ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")

    async def add(s: AsyncSession) -> None:
        await accounts.add(
            s,
            username=args.username,
            role=Role(args.role),
            password=password,
            display_name=args.display_name or "",
            actor="cli",
        )

    try:
        _accounts(add)
    except accounts.AccountError as e:
        print(f"tsunagi counsellor add: {e}", file=sys.stderr)
        return 1 if e.code == "taken" else 2
    print(f"added {args.role} '{args.username}'")
    return 0


def cmd_counsellor_list(args: argparse.Namespace) -> int:
    """The console accounts, a line each: name, role, and whether it is disabled, on duty, or still has a
    one-time password; then the display name people read ("-" when none is set)."""
    from bot.models import Counsellor
    from bot.storage import accounts

    async def read(s: AsyncSession) -> list[Counsellor]:
        return await accounts.listing(s)

    for c in _accounts(read):
        marks = [
            "active" if c.active else "disabled",
            *(["on duty"] if c.on_duty else []),
            *(["one-time password"] if c.must_change_password else []),
        ]
        print(f"{c.username}\t{c.role}\t{', '.join(marks)}\t{sanitize_line(c.display_name) or '-'}")
    return 0


def sanitize_line(text: str) -> str:
    """A display name on one terminal line: no tabs or line breaks (they are refused when set, too)."""
    return re.sub(r"[\t\r\n]", " ", text)


def cmd_counsellor_display_name(args: argparse.Namespace) -> int:
    """Set the name people read for an account (greetings, canned replies)."""
    from bot.storage import accounts

    async def set_name(s: AsyncSession) -> str:
        c = await accounts.set_display_name(s, username=args.username, display_name=args.name, actor="cli")
        return c.display_name

    try:
        name = _accounts(set_name)
    except accounts.AccountError as e:
        print(f"tsunagi counsellor display-name: {e}", file=sys.stderr)
        return 1 if e.code == "missing" else 2
    print(f"'{args.username}' is shown as {name}")
    return 0


def cmd_counsellor_reset_password(args: argparse.Namespace) -> int:
    """A new one-time password for an account, printed once (to be changed at the next login); its
    sessions end. The way back in when the last administrator has forgotten theirs."""
    from bot.storage import accounts

    async def reset(s: AsyncSession) -> str:
        return await accounts.new_password(s, username=args.username, actor="cli")

    try:
        password = _accounts(reset)
    except accounts.AccountError:
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
    w.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve this process's /metrics (and /healthz) on this port (default: none)",
    )
    w.add_argument("--metrics-host", default="127.0.0.1", help="the address for --metrics-port")
    w.set_defaults(func=cmd_worker)
    c = sub.add_parser("counsellor", help="console accounts")
    csub = c.add_subparsers(dest="action", required=True)
    ca = csub.add_parser("add", help="add an account; the password is read from standard input")
    ca.add_argument("username")
    ca.add_argument("--role", choices=["counsellor", "supervisor", "admin"], default="counsellor")
    ca.add_argument("--display-name", help="the name people read (greetings); never the username")
    ca.set_defaults(func=cmd_counsellor_add)
    cl = csub.add_parser("list", help="the accounts, a line each")
    cl.set_defaults(func=cmd_counsellor_list)
    cr = csub.add_parser("reset-password", help="a new one-time password for an account, printed once")
    cr.add_argument("username")
    cr.set_defaults(func=cmd_counsellor_reset_password)
    cd = csub.add_parser("display-name", help="set the name people read for an account")
    cd.add_argument("username")
    cd.add_argument("name")
    cd.set_defaults(func=cmd_counsellor_display_name)
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
