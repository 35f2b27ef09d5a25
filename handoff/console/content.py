"""The console's own content, ``console.yaml``: the replies counsellors insert (and edit before
sending), the outcome codes a conversation is closed with, and the statistics' headers and names. Loaded
and checked here, by the console at start and by ``tsunagi content check``: a broken file names its entry
(``ContentError``). The statistics name categories, risks, channels and age bands as the console's page
does (its strings in ``console/page.html``), so each label is written once."""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from triage import yamlfile
from triage.paths import CONTENT_ROOT
from triage.ruleset import ContentError

FILE = "console.yaml"
CANNED_FIELDS = {"name"}  # {name}: the counsellor's display name (never the username), filled in by the page
PAGE = "console/page.html"
PAGE_STRINGS = re.compile(r'<script type="application/json" id="strings">(.*?)</script>', re.S)
STATISTICS_TEXTS = ("total_row", "unanswered", "open")
STATISTICS_MAPS = {
    "sections": ("total", "channel", "risk", "category", "age_band", "outcome", "referral"),
    "figures": ("conversations", "handed_off", "emergencies", "still_open"),
    "bot_outcomes": ("left", "ended_by_user", "declined", "information", "erased", "idle"),
}
SENTENCE = re.compile(r"[^。！？!?\n]+[。！？!?]*")
OUTCOME_CODE = re.compile(r"[a-z][a-z0-9_]{0,31}")  # kept in the statistics and the audit log


def load_console_content(root: Path = CONTENT_ROOT) -> dict[str, Any]:
    """``{"canned": [{"label", "text"}], "outcomes": [{"code", "label"}], "statistics": {...}}`` from
    ``root/console.yaml``."""
    path = root / FILE
    try:
        with path.open(encoding="utf-8") as f:
            data = yamlfile.load(f)
    except OSError as e:
        raise ContentError(f"{path}: {e.strerror or e}") from e
    except yaml.YAMLError as e:
        raise ContentError(f"{FILE}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ContentError(f"{FILE}: a mapping with 'canned' and 'outcomes' is expected")
    unknown = set(data) - {"canned", "outcomes", "statistics"}
    if unknown:
        raise ContentError(f"{FILE}: unknown entries {sorted(map(str, unknown))} (a typo?)")
    canned = _entries(data, "canned", ("label", "text"))
    for i, entry in enumerate(canned):
        try:
            used = {f for _, f, _, _ in string.Formatter().parse(entry["text"]) if f is not None}
        except ValueError as e:
            raise ContentError(f"{FILE}: canned[{i}] ({entry['label']}): broken braces: {e}") from e
        unknown_fields = used - CANNED_FIELDS
        if unknown_fields:
            raise ContentError(
                f"{FILE}: canned[{i}] ({entry['label']}): unknown placeholders {sorted(unknown_fields)}; "
                f"allowed {sorted(CANNED_FIELDS)}"
            )
    _no_sentence_twice(canned)
    outcomes = _entries(data, "outcomes", ("code", "label"))
    seen: set[str] = set()
    for i, entry in enumerate(outcomes):
        code = entry["code"]
        if not OUTCOME_CODE.fullmatch(code):
            raise ContentError(f"{FILE}: outcomes[{i}] ({code}): a code is lower-case letters, digits and _")
        if code in seen:
            raise ContentError(f"{FILE}: outcomes[{i}] ({code}): duplicate code")
        seen.add(code)
    statistics = _statistics(data.get("statistics"))
    return {"canned": canned, "outcomes": outcomes, "statistics": statistics}


def sentences(text: str) -> list[str]:
    """A text's sentences, as a reader tells them apart (。！？ or a line's end), without spaces."""
    return [m.group(0).strip() for m in SENTENCE.finditer(text) if m.group(0).strip()]


def _no_sentence_twice(canned: list[dict[str, str]]) -> None:
    """Canned replies are put together in one message: no sentence may be in two of them, so that they
    combine without saying anything twice."""
    seen: dict[str, str] = {}
    for entry in canned:
        for sentence in sentences(entry["text"]):
            if sentence in seen and seen[sentence] != entry["label"]:
                raise ContentError(
                    f"{FILE}: canned ({entry['label']}): 「{sentence}」 is also in ({seen[sentence]}): "
                    "canned replies are combined, and a sentence must not come twice"
                )
            seen[sentence] = entry["label"]


def _statistics(data: Any) -> dict[str, Any]:
    where = f"{FILE}: statistics"
    if not isinstance(data, dict):
        raise ContentError(f"{where}: a mapping with the statistics' headers and names is needed")
    out: dict[str, Any] = {}
    for name, size in (("daily", 7), ("totals", 3)):
        headers = data.get(name)
        if not (
            isinstance(headers, list)
            and len(headers) == size
            and all(isinstance(h, str) and h for h in headers)
        ):
            raise ContentError(f"{where}.{name}: a list of {size} column headers is needed")
        out[name] = [str(h) for h in headers]
    for name in STATISTICS_TEXTS:
        if not isinstance(data.get(name), str) or not data[name].strip():
            raise ContentError(f"{where}.{name}: must be a text")
        out[name] = str(data[name])
    for name, keys in STATISTICS_MAPS.items():
        given = data.get(name)
        if not isinstance(given, dict):
            raise ContentError(f"{where}.{name}: a mapping is needed")
        for k in keys:
            if not isinstance(given.get(k), str) or not given[k].strip():
                raise ContentError(f"{where}.{name}.{k}: missing, or not a text")
        out[name] = {str(k): str(v) for k, v in given.items()}
    unknown = set(data) - {"daily", "totals", *STATISTICS_TEXTS, *STATISTICS_MAPS}
    if unknown:
        raise ContentError(f"{where}: unknown entries {sorted(map(str, unknown))} (a typo?)")
    return out


def page_strings(root: Path = CONTENT_ROOT) -> dict[str, Any]:
    """The strings the console's page shows (the JSON in ``console/page.html``)."""
    path = root / PAGE
    try:
        match = PAGE_STRINGS.search(path.read_text(encoding="utf-8"))
        strings = json.loads(match.group(1)) if match else None
    except (OSError, json.JSONDecodeError) as e:
        raise ContentError(f"{PAGE}: strings: {e}") from e
    if not isinstance(strings, dict):
        raise ContentError(f"{PAGE}: strings: a JSON object is expected")
    return strings


@dataclass(frozen=True)
class ConsoleLabels:
    """How the statistics name what they count, in Japanese, from content/ (never from code)."""

    daily_headers: tuple[str, ...]
    totals_headers: tuple[str, ...]
    total_row: str
    sections: dict[str, str]
    figures: dict[str, str]
    channels: dict[str, str]
    risks: dict[str, str]
    categories: dict[str, str]
    age_bands: dict[str, str]
    outcomes: dict[str, str]
    unanswered: str
    open: str

    def section(self, key: str) -> str:
        return self.sections.get(key, key)

    def figure(self, key: str) -> str:
        return self.figures.get(key, key)

    def channel(self, key: str) -> str:
        return self.channels.get(key, key)

    def risk(self, key: str) -> str:
        return self.risks.get(key, key)

    def category(self, key: str) -> str:
        return self.categories.get(key, key)

    def age_band(self, key: str) -> str:
        return self.age_bands.get(key, key) if key else self.unanswered

    def outcome(self, key: str) -> str:
        return self.outcomes.get(key, key) if key else self.open


@cache
def console_labels(root: Path = CONTENT_ROOT) -> ConsoleLabels:
    data = load_console_content(root)
    stats = data["statistics"]
    strings = page_strings(root)

    def mapping(name: str) -> dict[str, str]:
        value = strings.get(name)
        return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}

    risks = {
        k[len("risk_") :]: str(v) for k, v in strings.items() if k.startswith("risk_") and k != "risk_prefix"
    }
    return ConsoleLabels(
        daily_headers=tuple(stats["daily"]),
        totals_headers=tuple(stats["totals"]),
        total_row=stats["total_row"],
        sections=stats["sections"],
        figures=stats["figures"],
        channels=mapping("channels"),
        risks=risks,
        categories=mapping("categories"),
        age_bands=mapping("age_bands"),
        outcomes={**stats["bot_outcomes"], **{o["code"]: o["label"] for o in data["outcomes"]}},
        unanswered=stats["unanswered"],
        open=stats["open"],
    )


def _entries(data: dict[str, Any], section: str, fields: tuple[str, ...]) -> list[dict[str, str]]:
    """A non-empty list of mappings with exactly these fields, each a non-empty text."""
    entries = data.get(section)
    if not isinstance(entries, list) or not entries:
        raise ContentError(f"{FILE}: {section}: a list of entries is needed")
    out: list[dict[str, str]] = []
    for i, entry in enumerate(entries):
        where = f"{FILE}: {section}[{i}]"
        if not isinstance(entry, dict):
            raise ContentError(f"{where}: a mapping with {list(fields)} is expected")
        extra = set(entry) - set(fields)
        if extra:
            raise ContentError(f"{where}: unknown fields {sorted(map(str, extra))}")
        for field in fields:
            value = entry.get(field)
            if not isinstance(value, str) or not value.strip():
                raise ContentError(f"{where}: '{field}' must be a text")
        out.append({field: str(entry[field]) for field in fields})
    return out
