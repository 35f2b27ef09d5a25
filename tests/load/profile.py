"""py-spy over `tsunagi serve` during one rate (``--profile RATE``), from the ``profile`` extra
(``pip install -e '.[profile]'``): the raw stacks are kept, and the share of samples that pass through each
library (a sample counts once per library on its stack) is reported, with the busiest leaf functions."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

# Libraries by the path of their files: the first that matches a frame names it.
LIBRARIES = [
    ("SQLAlchemy (ORM and Core)", re.compile(r"(?:^|/)(?:sqlalchemy|sqlmodel)/")),
    ("asyncpg", re.compile(r"(?:^|/)asyncpg/")),
    ("encryption (cryptography, bot/crypto)", re.compile(r"(?:^|/)cryptography/|(?:^|/)bot/crypto\.py")),
    ("LINE SDK and aiohttp", re.compile(r"(?:^|/)(?:linebot|aiohttp)/")),
    ("triage", re.compile(r"(?:^|/)triage/")),
    ("redis", re.compile(r"(?:^|/)redis/")),
    ("uvicorn, Starlette, FastAPI", re.compile(r"(?:^|/)(?:uvicorn|starlette|fastapi)/")),
    ("pydantic", re.compile(r"(?:^|/)pydantic(?:_core)?/")),
    ("the LINE channel (webhook, events, sending)", re.compile(r"(?:^|/)channels/line/")),
]
# Leaves that are the event loop or a thread pool waiting, not work.
IDLE = ("Runner.run (asyncio/runners.py", "_worker (concurrent/futures/thread.py", "select (selectors.py")
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:()]*)(?::\d+)?\)$")


class Profiler:
    """``py-spy record`` attached to ``pid`` between ``start`` and ``stop``."""

    def __init__(self, pid: int, out: Path) -> None:
        self.pid, self.out = pid, out
        self.proc: subprocess.Popen[bytes] | None = None
        exe = Path(sys.executable).parent / "py-spy"
        self.exe = str(exe) if exe.exists() else shutil.which("py-spy")
        if self.exe is None:
            raise SystemExit("--profile needs py-spy: pip install -e '.[profile]'")

    def start(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [self.exe, "record", "--pid", str(self.pid), "--format", "raw", "--rate", "100"]
        self.proc = subprocess.Popen([*cmd, "--output", str(self.out)], stdout=subprocess.DEVNULL)

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)  # py-spy writes its output at an interrupt
        self.proc.wait(timeout=60)

    def summary(self, top: int = 8) -> list[tuple[str, float]]:
        return summarize(self.out.read_text(errors="replace").splitlines(), top)


def summarize(lines: list[str], top: int) -> list[tuple[str, float]]:
    """Share of the busy samples by library, then the leaf functions with the largest shares (raw format:
    ``frame;frame;... count`` per line, the root first). Samples idle in the event loop's selector do
    not count as busy (with uvloop, the loop's own C code shows as ``Runner.run``: it counts as idle)."""
    libraries: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if frames[-1].startswith(IDLE):
            continue
        n = int(count)
        total += n
        # What runs the loop (the command line, uvicorn's start) is on every stack: only what the loop runs
        # is named.
        loop = next((i for i, f in enumerate(frames) if f.startswith("Runner.run (")), -1)
        files = [m.group("file") for f in frames[loop + 1 :] if (m := FRAME.match(f))]
        for name, pattern in LIBRARIES:
            if any(pattern.search(f) for f in files):
                libraries[name] += n
        leaves[frames[-1]] += n
    if not total:
        return []
    out = [(f"{name}", round(100 * n / total, 1)) for name, n in libraries.most_common()]
    out += [(f"leaf: {leaf}", round(100 * n / total, 1)) for leaf, n in leaves.most_common(top)]
    return out
