"""Real Redis for tests (docs/contract.md): ``TSUNAGI_TEST_REDIS_URL``, a random key prefix per
test, and the prefix's keys deleted afterwards (never FLUSHALL: the server may be shared)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from redis.exceptions import RedisError

from bot.redis_client import connect
from tests.helpers import free_port, unavailable

TEST_REDIS_URL = os.environ.get("TSUNAGI_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def random_prefix() -> str:
    return f"tsunagi-test-{uuid.uuid4().hex[:12]}"


async def require_redis(url: str = TEST_REDIS_URL) -> None:
    """Fails under CI, skips elsewhere, when Redis does not answer."""
    client = connect(url)
    try:
        await client.ping()
    except (RedisError, OSError) as e:
        unavailable(f"Redis at {url}", e)
    finally:
        await client.aclose()


async def prefix_keys(prefix: str, url: str = TEST_REDIS_URL) -> list[str]:
    client = connect(url)
    try:
        return [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
    finally:
        await client.aclose()


async def delete_prefix(prefix: str, url: str = TEST_REDIS_URL) -> int:
    """Delete every key under the prefix: the test's own "Redis lost its data"."""
    keys = await prefix_keys(prefix, url)
    if not keys:
        return 0
    client = connect(url)
    try:
        return int(await client.delete(*keys))
    finally:
        await client.aclose()


REDIS_SERVER = Path("/usr/bin/redis-server")


class PrivateRedis:
    """A ``redis-server`` of the test's own on a free loopback port, without persistence, so that it can be
    killed, restarted empty or flushed (the shared server at TSUNAGI_TEST_REDIS_URL never is). Missing,
    the test fails: ``make test`` installs it (apt-get install redis-server)."""

    def __init__(self, workdir: Path) -> None:
        if not REDIS_SERVER.exists():
            pytest.fail(f"redis-server is not installed at {REDIS_SERVER} (apt-get install redis-server)")
        self.port = free_port()
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> PrivateRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def start(self) -> None:
        self.starts += 1
        log = (self.dir / f"redis-{self.starts}.log").open("wb")
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(
            [str(REDIS_SERVER), *args, "--dir", str(self.dir)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + 30
        while self.command("PING") != "+PONG":
            if self.proc.poll() is not None or time.monotonic() > deadline:
                text = (self.dir / f"redis-{self.starts}.log").read_text(errors="replace")
                pytest.fail(f"redis-server did not start on port {self.port}: {text[-1000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is saved (there is no persistence anyway)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        """Killed and started again on the same port, empty."""
        self.kill()
        self.start()

    def flush(self) -> None:
        assert self.command("FLUSHALL") == "+OK"

    def command(self, name: str) -> str:
        """One inline command's first reply line, or "" when the server does not answer."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                s.sendall(name.encode() + b"\r\n")
                return s.recv(64).split(b"\r\n")[0].decode()
        except OSError:
            return ""
