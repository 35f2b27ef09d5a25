"""``tsunagi content check``: every file of the content folder, loaded as the service loads it.

The service refuses to start on a broken file, but only on the first it meets, and the pages are not
checked at all. This reads everything and names, by file and entry, the first problem of each loader
below and every problem of the pages, so that counselling staff can check an edited copy (``--dir``)
before the service reads it:

- ``messages.yaml``, ``intake.yaml``, ``referrals.yaml``: ``bot.content.Content``, as the service;
- ``triage/*.yaml``: the triage engine, built as ``tsunagi triage`` and the service build it;
- ``console.yaml``: ``handoff.console.content``, as the console;
- ``webchat/page.html`` and ``console/page.html``: their strings (the JSON the page's script reads) hold
  every key the script asks for, and every value the code can give it (each state, risk, category,
  channel ...); the files the page links under its static folder exist; its placeholders are known;
- no other YAML or HTML file lies there unread (a misspelt name would be ignored silently).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from triage.ruleset import ContentError

READ = (
    "messages.yaml",
    "intake.yaml",
    "referrals.yaml",
    "console.yaml",
    "triage/normalize.yaml",
    "triage/lexicon.yaml",
    "triage/rules.yaml",
    "triage/distress.yaml",
    "webchat/page.html",
    "console/page.html",
)
STRINGS = re.compile(r'<script type="application/json" id="strings">(.*?)</script>', re.S)
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}")


@dataclass(frozen=True)
class Page:
    """What the code asks of one page: its script's strings, its static files and its placeholders."""

    file: str  # under the content folder
    static: Path  # the folder its script and styles are served from
    url: str  # the URL of that folder
    placeholders: frozenset[str]  # {{name}} the server fills in: each must be there, no other
    keys: frozenset[str]  # strings the script reads by a name the code makes (status_ + state)
    groups: dict[str, frozenset[str]] = field(default_factory=dict)  # a mapping, and the keys it needs


def check(root: Path) -> list[str]:
    """Every problem found under ``root``, each naming its file and entry; empty when all is well."""
    problems: list[str] = []
    content = _attempt(problems, "", lambda: _content(root))
    _attempt(problems, "triage/", lambda: _triage(root))
    _attempt(problems, "", lambda: _console(root))
    age_bands = frozenset(b.band for b in content.age_bands) if content is not None else None
    for page in pages(age_bands):
        problems += check_page(root, page)
    problems += _unread(root)
    return problems


def pages(age_bands: Collection[str] | None = None) -> list[Page]:
    """The two pages, with what the code of today gives their scripts."""
    from bot.content import REFUSED_KINDS
    from bot.models import Role, Sender, State
    from channels.registry import CHANNELS
    from channels.webchat import STATIC as WEBCHAT_STATIC
    from channels.webchat import STATUS
    from handoff.console import STATIC as CONSOLE_STATIC
    from triage import Category, Risk

    def values(enum: type[StrEnum]) -> frozenset[str]:
        return frozenset(str(e.value) for e in enum)

    def prefixed(prefix: str, names: Iterable[str]) -> frozenset[str]:
        return frozenset(prefix + n for n in names)

    console_groups = {
        "categories": values(Category),
        "channels": frozenset(CHANNELS),
        "states": values(State),
        "refused_kinds": frozenset(REFUSED_KINDS),
    }
    if age_bands is not None:
        console_groups["age_bands"] = frozenset(age_bands)
    return [
        Page(
            file="webchat/page.html",
            static=WEBCHAT_STATIC,
            url="/chat/static/",
            placeholders=frozenset({"quick_exit_url", "title"}),
            keys=prefixed("status_", STATUS.values()) | {"you", "bot", "counsellor"},
        ),
        Page(
            file="console/page.html",
            static=CONSOLE_STATIC,
            url="/console/static/",
            placeholders=frozenset(),
            keys=prefixed("risk_", values(Risk))
            | prefixed("role_", values(Role))
            | prefixed("from_", values(Sender)),
            groups=console_groups,
        ),
    ]


def check_page(root: Path, page: Page) -> list[str]:
    """One page: read as the server reads it (UTF-8, whole), then its strings against its script."""
    where = page.file
    try:
        html = (root / page.file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        return [f"{where}: cannot be read: {e}"]
    problems: list[str] = []
    found = set(PLACEHOLDER.findall(html))
    for name in sorted(found - page.placeholders):
        problems.append(f"{where}: {{{{{name}}}}}: unknown placeholder; allowed {sorted(page.placeholders)}")
    for name in sorted(page.placeholders - found):
        problems.append(f"{where}: {{{{{name}}}}}: missing (the server fills it in)")
    for linked in sorted(set(re.findall(rf'(?:src|href)="{re.escape(page.url)}([^"]+)"', html))):
        if not (page.static / linked).is_file():
            problems.append(f"{where}: {page.url}{linked}: no such file in {page.static}")
    match = STRINGS.search(html)
    if match is None:
        return [*problems, f'{where}: strings: no <script type="application/json" id="strings"> element']
    try:
        strings = json.loads(match.group(1))
    except json.JSONDecodeError as e:
        return [*problems, f"{where}: strings: not valid JSON: {e}"]
    if not isinstance(strings, dict):
        return [*problems, f"{where}: strings: a JSON object is expected"]
    for key, value in strings.items():
        if isinstance(value, dict):
            bad = [k for k, v in value.items() if not isinstance(v, str)]
            if bad:
                problems.append(f"{where}: strings.{key}: {bad}: each value must be a text")
        elif not isinstance(value, str):
            problems.append(f"{where}: strings.{key}: must be a text (or a mapping of texts)")
    used = script_keys(page.static)
    for key in sorted((used | page.keys) - set(strings)):
        what = "the page's script reads it" if key in used else "the code gives the script this name"
        problems.append(f"{where}: strings.{key}: missing ({what})")
    for group, needed in sorted(page.groups.items()):
        given = strings.get(group)
        if not isinstance(given, dict):
            problems.append(f"{where}: strings.{group}: missing, or not a mapping")
            continue
        for name in sorted(needed - set(given)):
            problems.append(f"{where}: strings.{group}.{name}: missing (the code gives this value)")
    return problems


def script_keys(static: Path) -> set[str]:
    """The strings the page's scripts read by a fixed name: ``S.title`` or ``S["title"]``, where ``S``
    is whatever each script calls the parsed strings element."""
    sources = [p.read_text(encoding="utf-8") for p in sorted(static.glob("*.js"))]
    names = {
        m
        for source in sources
        for m in re.findall(
            r"(?:const|let|var)\s+(\w+)\s*=\s*JSON\.parse\(\s*document\.getElementById\(\s*[\"']strings[\"']",
            source,
        )
    }
    keys: set[str] = set()
    for name in names:
        for source in sources:
            keys.update(re.findall(rf"(?<![\w.$]){name}\.([A-Za-z_]\w*)", source))
            keys.update(re.findall(rf"(?<![\w.$]){name}\[\s*[\"']([^\"']+)[\"']\s*\]", source))
    return keys


# -- the loaders the service uses ---------------------------------------------------------------------


def _content(root: Path) -> Any:
    from bot.content import Content

    return Content(root)


def _triage(root: Path) -> None:
    from triage.engine import Engine

    Engine(root / "triage")


def _console(root: Path) -> None:
    from handoff.console.content import load_console_content

    load_console_content(root)


def _attempt(problems: list[str], folder: str, load: Callable[[], Any]) -> Any:
    """Run a loader; a problem it raises is kept (with its folder where it names a bare file)."""
    try:
        return load()
    except ContentError as e:
        problems.append(_in_folder(str(e), folder))
    except Exception as e:  # a shape no check foresaw still names where it was
        problems.append(
            _in_folder(f"{e.__class__.__name__}: {e}", folder) + f" (while loading {folder or '.'})"
        )
    return None


def _in_folder(message: str, folder: str) -> str:
    """``rules.yaml: ...`` from the triage's loader is ``triage/rules.yaml: ...`` here."""
    if folder and re.match(r"[\w.-]+\.(?:yaml|html):", message):
        return folder + message
    return message


def _unread(root: Path) -> list[str]:
    """A YAML or HTML file nothing reads: most likely a misspelt or misplaced name."""
    if not root.is_dir():
        return [f"{root}: no such folder (TSUNAGI_CONTENT_DIR?)"]
    out = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.suffix in (".yaml", ".yml", ".html") and relative not in READ:
            out.append(f"{relative}: not read by tsunagi (a misspelt or misplaced name?)")
    return out
