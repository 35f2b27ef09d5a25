"""Configuration: the environment (or a ``.env`` file), as docs/contract.md lists it.

Secrets that are not given are generated once and kept under ``var/`` (mode 0600), so that a
fresh ``make run`` works and a restart keeps the same keys."""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TSUNAGI_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    var_dir: Path = Path("var")
    database_url: str = ""
    redis_url: str = ""
    # Every Redis key and channel starts with this (services sharing one Redis need different ones).
    redis_prefix: str = "tsunagi"
    secret_key: str = ""
    # One or more Fernet keys separated by commas: the first encrypts, all decrypt (rotation).
    data_key: str = ""

    line_channel_secret: str = ""
    line_channel_access_token: str = ""
    line_api_base: str = "https://api.line.me"
    telegram_bot_token: str = ""
    telegram_secret_token: str = ""
    telegram_api_base: str = "https://api.telegram.org"
    # Seconds one call to the LINE or Telegram API may take; a call that takes longer counts as failed
    # and the outbox tries it again later (README "When LINE, Telegram or the relay fail").
    api_timeout: float = Field(default=15.0, gt=0, le=300)

    smtp_listen: str = "127.0.0.1:2525"
    mail_address: str = "soudan@localhost"
    smtp_relay: str = ""
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_starttls: bool = False
    # A CA bundle (PEM) the relay's certificate is checked against, for a relay with a private CA;
    # unset: the system's trusted CAs.
    smtp_ca_file: str = ""
    # Seconds the relay gets for each step of taking one reply (connecting, each command, the mail).
    smtp_timeout: float = Field(default=30.0, gt=0, le=300)
    # Largest inbound mail in bytes (SIZE is announced; larger mail is refused with 552).
    mail_max_bytes: int = Field(default=10 * 1024 * 1024, ge=64 * 1024)

    hours: str = "mon-sun 00:00-24:00"
    timezone: str = "Asia/Tokyo"
    retention_days: int = Field(default=90, ge=1)
    # A conversation still with the bot closes, without a message, after this many hours of silence.
    idle_hours: int = Field(default=24, ge=1)
    # Minutes a waiting conversation needs to move up one risk level in the queue (see handoff/).
    aging_minutes: int = Field(default=20, ge=1)
    # Estimated minutes of waiting per place in the queue, for the number the user is told.
    minutes_per_place: int = Field(default=10, ge=1)
    # Where the web chat's quick-exit button goes: a neutral page that replaces the chat.
    quick_exit_url: str = "https://www.yahoo.co.jp/"
    # The web chat's title (the browser tab and the page's heading): neutral, because someone may look over
    # the person's shoulder or see the tab.
    chat_title: str = Field(default="チャット", min_length=1, max_length=40)
    # Largest message accepted from any channel (characters); longer text is cut and the cut noted.
    max_message_chars: int = Field(default=5000, ge=100)
    # Conversations a counsellor may hold at once (a counsellor's own limit can be set per account).
    counsellor_limit: int = Field(default=2, ge=1)
    # Console sessions expire after this many hours without use.
    session_hours: int = Field(default=12, ge=1)
    # Failed console logins are limited per username and per address (bot/guard.py, handoff/console/auth.py);
    # an office whose counsellors all come through one address turns the per-address limit off.
    login_limit_per_address: bool = True
    # Seconds a client gets to send a request's headers, and then its body (bot/guard.py): a slow client
    # is cut off instead of keeping its connection.
    read_timeout: float = Field(default=20.0, gt=0, le=300)
    # The service is reached over HTTPS only, through a proxy that ends TLS (deploy/Caddyfile): every
    # response then carries Strict-Transport-Security, and every cookie is marked Secure (bot/web.py).
    behind_tls: bool = False
    # The background workers (docs/contract.md): run by ``tsunagi serve`` unless false (then run them with
    # ``tsunagi worker``, beside any number of ``tsunagi serve``).
    workers: bool = True
    # Inbox events processed at once (each holds a database connection while the engine handles it).
    inbox_workers: int = Field(default=4, ge=1, le=64)
    # Sends in flight at once on each channel (each mostly waits on the platform, not the database).
    outbox_workers: int = Field(default=4, ge=1, le=64)
    # Database connections of one process (PostgreSQL; the pool may grow by as many again when busy).
    database_pool: int = Field(default=10, ge=1)
    # How the logs are written to standard error (bot/logs.py): one JSON object a line (for a log
    # collector), or plain text for a person at a terminal (``make run``).
    log_format: Literal["json", "text"] = "json"
    # The in-process loopback channel (channels/loopback), for tests and demonstrations only.
    loopback_channel: bool = False

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        self.var_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return f"sqlite+aiosqlite:///{(self.var_dir / 'tsunagi.db').resolve()}"

    @cached_property
    def resolved_secret_key(self) -> str:
        return self.secret_key or _kept_secret(self.var_dir / "secret.key", lambda: secrets.token_urlsafe(48))

    @cached_property
    def data_keys(self) -> list[bytes]:
        raw = self.data_key or _kept_secret(
            self.var_dir / "data.key", lambda: base64.urlsafe_b64encode(os.urandom(32)).decode()
        )
        return [k.strip().encode() for k in raw.split(",") if k.strip()]


def _kept_secret(path: Path, make: Callable[[], str]) -> str:
    """Read a generated secret, or generate it once (created exclusively, readable by the owner only)."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    value = make()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value
