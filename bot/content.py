"""What the bot says and knows, loaded from ``content/`` and checked at load.

- ``messages.yaml``: every user-facing text (Japanese), with its quick-reply choices;
- ``intake.yaml``: the words the bot understands (keywords, answers, age bands, prefectures);
- ``referrals.yaml``: the referral directory.

A broken file stops the start with the file and entry named (``ContentError``), never a half-loaded bot.
"""

from __future__ import annotations

import string
import unicodedata
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from bot.hours import Hours, HoursError
from triage import Category, yamlfile
from triage.normalize import fold
from triage.paths import CONTENT_DIR
from triage.ruleset import ContentError

# The texts the code asks for, with the placeholders each may use.
MESSAGE_KEYS: dict[str, set[str]] = {
    "welcome": {"hours"},
    "consent_needed": set(),
    "declined": {"lines"},
    "listening": set(),
    "listening_after_consent_with_story": set(),
    "intake_intro": {"ack"},
    "offer_counsellor": {"ack"},
    "intake_age": set(),
    "intake_prefecture": set(),
    "intake_safe": set(),
    "unsafe": set(),
    "ask_danger": {"ack"},
    "danger_no": set(),
    "offer": {"ack", "referrals"},
    "offer_again": set(),
    "waiting": {"ack", "position", "promise"},
    "waiting_update": {"position", "promise"},
    "waiting_safety": {"lines"},
    "back_later": {"back"},
    "out_of_hours": {"back_later", "lines"},
    "crisis": {"lines", "promise"},
    "crisis_repeat": set(),
    "ask_age": set(),
    "age_thanks": set(),
    "age_young": {"lines"},
    "with_counsellor": set(),
    "closing": set(),
    "survey_thanks": set(),
    "erase_confirm": set(),
    "erase_done": set(),
    "erase_cancelled": set(),
    "truncated": {"max"},
    "media_unreadable": set(),
    "media_picture_kept": set(),
    "attachments_not_kept": {"count", "kinds"},
    "line_group_only": set(),
}
FORMAT_KEYS: dict[str, set[str]] = {
    "ack_default": set(),
    "ack_harm": set(),
    "ack_suicide": set(),
    "promise_waiting_free": {"position", "wait"},
    "promise_waiting_busy": {"position", "wait"},
    "promise_waiting_none": {"position", "wait"},
    "promise_waiting_closed": {"position", "wait"},
    "promise_crisis_free": {"position", "wait"},
    "promise_crisis_busy": {"position", "wait"},
    "promise_crisis_none": {"position", "wait"},
    "promise_crisis_closed": {"position", "wait"},
    "promise_waiting_update_free": {"position", "wait"},
    "promise_waiting_update_busy": {"position", "wait"},
    "promise_waiting_update_none": {"position", "wait"},
    "promise_waiting_update_closed": {"position", "wait"},
    "line": {"name", "number"},
    "line_hours": {"hours"},
    "line_hours_status": {"hours", "status"},
    "line_note": {"note"},
    "open_now": set(),
    "closed_now": set(),
    "wait_minutes": {"minutes"},
    "wait_soon": set(),
    "back": {"month", "day", "weekday", "time"},
    "hours_always": set(),
    "hours_range": {"days", "start", "end"},
    "day_range": {"first", "last"},
    "hours_joiner": set(),
    "kind_pdf": set(),
    "kind_archive": set(),
    "kind_program": set(),
    "kind_document": set(),
    "kind_video": set(),
    "kind_audio": set(),
    "kind_other": set(),
    "kind_broken_image": set(),
    "kind_joiner": set(),
}
REFUSED_KINDS = ("pdf", "archive", "program", "document", "video", "audio", "other", "broken_image")
KEYWORD_GROUPS = ("counsellor", "end", "erase", "crisis")
ANSWER_GROUPS = (
    "consent",
    "decline",
    "info_only",
    "erase_yes",
    "erase_no",
    "skip",
    "safe_yes",
    "safe_no",
    "safe_unsure",
    "danger_yes",
    "danger_no",
    "danger_unsure",
    "survey",
)
ANY = "any"
REFERRAL_NEEDS = frozenset({"id", "name", "number", "hours", "hours_label", "for", "categories", "checked"})
REFERRAL_MAY_HAVE = frozenset({"crisis", "listed", "url", "note", "ages", "young", "same_as", "tags"})
OFFERED_AT_MOST = 2  # services offered at once
YOUNG_UP_TO = 18  # the children's lines are for this age and under


@dataclass(frozen=True)
class Text:
    text: str
    quick: tuple[str, ...] = ()


@dataclass(frozen=True)
class Referral:
    id: str
    name: str
    number: str
    hours: Hours | None
    hours_label: str
    purpose: str
    categories: frozenset[str]
    crisis: bool
    checked: date
    url: str = ""
    note: str = ""
    listed: bool = True  # false: never listed with the services that fit (the replies name it themselves)
    ages: frozenset[str] = frozenset()  # the age bands it is for; empty: everyone
    young: bool = False  # for young people whatever the trouble (offered beside the best line)
    same_as: str = ""  # another number of that service: not offered beside it
    tags: tuple[str, ...] = ()  # words a counsellor may search it by (デートDV, 高校生, 彼氏)

    def serves(self, categories: set[str]) -> bool:
        return ANY in self.categories or bool(self.categories & categories)

    def fits_age(self, age_band: str) -> bool:
        """Unknown ages rule nothing out."""
        return not self.ages or not age_band or age_band in self.ages

    def open_now(self, now: datetime) -> bool | None:
        """True or False when the hours are known, None when they vary by place."""
        return None if self.hours is None else self.hours.is_open(now)


@dataclass(frozen=True)
class AgeBand:
    label: str
    band: str
    low: int
    high: int


def key(text: str) -> str:
    """How a short answer is compared: NFKC, kana and case folded, spaces and end punctuation dropped."""
    t = unicodedata.normalize("NFKC", text)
    t = "".join(ch for ch in t if not ch.isspace())
    t = t.rstrip("。.!！?？〜~ー…wｗ笑")
    return fold(t)


class Content:
    def __init__(self, root: Path = CONTENT_DIR.parent) -> None:
        self.root = root
        self.messages = self._load_messages(root / "messages.yaml")
        self.formats: dict[str, Any] = {}
        self._load_formats(root / "messages.yaml")
        intake = _load(root / "intake.yaml")
        self.keywords = {g: self._words(intake, "keywords", g) for g in KEYWORD_GROUPS}
        self.answers = {g: self._words(intake, "answers", g) for g in ANSWER_GROUPS}
        self.age_bands = self._age_bands(intake)
        self.age_words: dict[str, str] = {
            key(str(k)): str(v) for k, v in (intake.get("age_words") or {}).items()
        }
        self.age_units = frozenset(key(str(w)) for w in intake.get("age_units") or ())
        self.school_year_suffixes = frozenset(key(str(w)) for w in intake.get("school_year_suffixes") or ())
        self.answer_endings = tuple(
            sorted((key(str(w)) for w in intake.get("answer_endings") or ()), key=len, reverse=True)
        )
        self.answer_separators: tuple[str, ...] = tuple(str(w) for w in intake.get("answer_separators") or ())
        self.prefectures: tuple[str, ...] = tuple(str(p) for p in intake.get("prefectures") or ())
        if len(self.prefectures) != 47:
            raise ContentError(f"intake.yaml: prefectures: expected 47, found {len(self.prefectures)}")
        self.prefecture_names: dict[str, str] = {}  # key() of a way of writing it -> the prefecture
        for pref in self.prefectures:
            short = pref if pref == "北海道" else pref[:-1]
            self.prefecture_names[key(pref)] = self.prefecture_names[key(short)] = pref
        for pref, names in (intake.get("prefecture_aliases") or {}).items():
            if pref not in self.prefectures or not isinstance(names, list):
                raise ContentError(f"intake.yaml: prefecture_aliases: {pref}: a prefecture, a list of names")
            for name in names:
                self.prefecture_names.setdefault(key(str(name)), pref)
        self.referrals = self._referrals(root / "referrals.yaml")

    # -- loading ---------------------------------------------------------------------------------

    def _load_messages(self, path: Path) -> dict[str, Text]:
        data = _load(path)
        out: dict[str, Text] = {}
        for name, allowed in MESSAGE_KEYS.items():
            entry = data.get(name)
            where = f"{path.name}: {name}"
            if not isinstance(entry, dict) or not isinstance(entry.get("text"), str):
                raise ContentError(f"{where}: missing, or without a 'text'")
            _check_fields(entry["text"], allowed, where)
            quick = entry.get("quick") or []
            if not isinstance(quick, list) or not all(isinstance(q, str) for q in quick):
                raise ContentError(f"{where}: 'quick' must be a list of texts")
            out[name] = Text(entry["text"].strip(), tuple(quick))
        unknown = set(data) - set(MESSAGE_KEYS) - {"formats"}
        if unknown:
            raise ContentError(f"{path.name}: unknown entries {sorted(unknown)} (a typo?)")
        return out

    def _load_formats(self, path: Path) -> None:
        formats = _load(path).get("formats")
        if not isinstance(formats, dict):
            raise ContentError(f"{path.name}: missing 'formats'")
        for name, allowed in FORMAT_KEYS.items():
            value = formats.get(name)
            if not isinstance(value, str):
                raise ContentError(f"{path.name}: formats.{name}: missing")
            _check_fields(value, allowed, f"{path.name}: formats.{name}")
            self.formats[name] = value
        weekdays = formats.get("weekdays")
        if not isinstance(weekdays, list) or len(weekdays) != 7:
            raise ContentError(f"{path.name}: formats.weekdays: seven names, Monday first")
        self.formats["weekdays"] = [str(w) for w in weekdays]

    @staticmethod
    def _words(data: dict[str, Any], section: str, group: str) -> frozenset[str]:
        words = (data.get(section) or {}).get(group)
        if not isinstance(words, list) or not words:
            raise ContentError(f"intake.yaml: {section}.{group}: a list of words is needed")
        return frozenset(key(str(w)) for w in words)

    @staticmethod
    def _age_bands(data: dict[str, Any]) -> tuple[AgeBand, ...]:
        out = []
        for i, e in enumerate(data.get("age_bands") or []):
            try:
                out.append(AgeBand(str(e["label"]), str(e["band"]), int(e["min"]), int(e["max"])))
            except (KeyError, TypeError, ValueError) as err:
                raise ContentError(f"intake.yaml: age_bands[{i}]: needs label, band, min, max") from err
        if not out:
            raise ContentError("intake.yaml: age_bands: none given")
        return tuple(out)

    @staticmethod
    def _referrals(path: Path) -> tuple[Referral, ...]:
        data = _load(path)
        if not isinstance(data, list):
            raise ContentError(f"{path.name}: a list of services is expected")
        known = {c.value for c in Category} | {ANY}
        out: list[Referral] = []
        seen: set[str] = set()
        for i, e in enumerate(data):
            where = f"{path.name}: entry {i} ({e.get('id', '?') if isinstance(e, dict) else '?'})"
            if not isinstance(e, dict):
                raise ContentError(f"{where}: not a mapping")
            missing = REFERRAL_NEEDS - set(e)
            if missing:
                raise ContentError(f"{where}: missing {sorted(missing)}")
            unknown = set(e) - REFERRAL_NEEDS - REFERRAL_MAY_HAVE
            if unknown:
                raise ContentError(f"{where}: unknown fields {sorted(map(str, unknown))} (a typo?)")
            if e["id"] in seen:
                raise ContentError(f"{where}: duplicate id")
            seen.add(str(e["id"]))
            cats = set(e["categories"] or [])
            if not cats or cats - known:
                raise ContentError(f"{where}: unknown categories {sorted(cats - known)}")
            if not isinstance(e["checked"], date):
                raise ContentError(f"{where}: 'checked' must be a date (YYYY-MM-DD)")
            if not isinstance(e.get("listed", True), bool):
                raise ContentError(f"{where}: 'listed' must be true or false")
            try:
                hours = Hours.parse(str(e["hours"])) if e["hours"] else None
            except HoursError as err:
                raise ContentError(f"{where}: hours: {err}") from err
            out.append(
                Referral(
                    id=str(e["id"]),
                    name=str(e["name"]),
                    number=str(e["number"]),
                    hours=hours,
                    hours_label=str(e["hours_label"]),
                    purpose=str(e["for"]),
                    categories=frozenset(cats),
                    crisis=bool(e.get("crisis", False)),
                    checked=e["checked"],
                    url=str(e.get("url", "")),
                    note=str(e.get("note", "")),
                    listed=e.get("listed", True),
                    ages=frozenset(str(a) for a in e.get("ages") or ()),
                    young=bool(e.get("young", False)),
                    same_as=str(e.get("same_as", "")),
                    tags=tuple(str(t) for t in e.get("tags") or ()),
                )
            )
        return tuple(out)

    # -- use ---------------------------------------------------------------------------------------

    def fields_of(self, message_name: str) -> frozenset[str]:
        """The placeholders a message uses."""
        template = self.messages[message_name].text
        return frozenset(f for _, f, _, _ in string.Formatter().parse(template) if f)

    def text(self, message_name: str, /, **fields: object) -> Text:
        """A message with its placeholders filled; a line a placeholder left empty is dropped."""
        t = self.messages[message_name]
        if not fields:
            return t
        lines = t.text.format(**fields).split("\n")
        return Text("\n".join(line for line in lines if line.strip()), t.quick)

    def fmt(self, format_name: str, /, **fields: object) -> str:
        return str(self.formats[format_name]).format(**fields)

    def is_keyword(self, group: str, text: str) -> bool:
        return key(text) in self.keywords[group]

    def is_answer(self, group: str, text: str) -> bool:
        words = self.answers[group]
        return key(text) in words or self._bare(text) in words

    def keyword_of(self, text: str) -> str | None:
        k = key(text)
        for group in KEYWORD_GROUPS:
            if k in self.keywords[group]:
                return group
        return None

    def _bare(self, text: str) -> str:
        """An answer's key without a polite ending (大阪です -> 大阪)."""
        k = key(text)
        for ending in self.answer_endings:
            if k.endswith(ending) and len(k) > len(ending):
                return k[: -len(ending)]
        return k

    def age_band(self, text: str) -> str | None:
        """The band of a text that plainly is an age ("16〜18歳", "17", "17歳です", "高2", "大学3年");
        "" for one that tells no band (社会人); None for anything else (a message, not an answer)."""
        k = self._bare(text)
        for b in self.age_bands:
            if k == key(b.label):
                return b.band
        digits = "".join(ch for ch in k if ch.isdigit())
        unit = k[len(digits) :]
        if digits and len(digits) <= 3 and k.startswith(digits) and (unit == "" or unit in self.age_units):
            age = int(digits)
            for b in self.age_bands:
                if b.low <= age <= b.high:
                    return b.band
        for word, band in self.age_words.items():
            rest = k[len(word) :].lstrip("0123456789") if k.startswith(word) else None
            if rest is not None and (rest == "" or rest in self.school_year_suffixes):
                return band
        return None

    def prefecture(self, text: str) -> str | None:
        """The prefecture a text plainly names, as people write it (東京都, 東京, 大阪です, さいたま,
        横浜在住); None for anything else."""
        for k in (key(text), self._bare(text)):
            if k in self.prefecture_names:
                return self.prefecture_names[k]
        return None

    def young(self, age_band: str) -> bool:
        """Is this band 18 or under (the children's lines are theirs)?"""
        return any(b.band == age_band and b.high <= YOUNG_UP_TO for b in self.age_bands)

    def referrals_for(
        self,
        categories: set[str],
        *,
        age_band: str = "",
        crisis_only: bool = False,
        now: datetime | None = None,
        limit: int = OFFERED_AT_MOST,
    ) -> list[Referral]:
        """The services that fit best, at most ``limit`` (SNS相談 practice: one or two that fit the person,
        not a list): the lines for these categories in the directory's order (its best fitting line of a
        category first), for their age; for someone 18 or under, a young people's line beside the first;
        and, when ``now`` is given and neither is open then, a line that is. ``crisis_only``: the 24-hour
        lines only. Never a line with ``listed: false`` (110 and 119: the texts that need them say them)."""
        usable = [
            r for r in self.referrals if r.listed and r.fits_age(age_band) and (r.crisis or not crisis_only)
        ]
        specific = [r for r in usable if ANY not in r.categories and r.categories & categories]
        general = [r for r in usable if ANY in r.categories]
        order = specific + general
        if self.young(age_band):
            young = [r for r in usable if r.young]
            order = specific[:1] + young + specific[1:] + general
        ranked: list[Referral] = []
        for r in order:
            if r not in ranked and not any(r.same_as == x.id or x.same_as == r.id for x in ranked):
                ranked.append(r)
        order = ranked
        chosen = order[:limit]
        if now is not None and chosen and not any(r.open_now(now) for r in chosen):
            open_now = [r for r in order if r.open_now(now) and r not in chosen]
            if open_now:
                chosen = [*chosen[: limit - 1], open_now[0]]
        return chosen

    def lines(self, referrals: list[Referral], now: datetime) -> str:
        """Each service on two short lines: its name and number, then its hours and whether it is open now
        (no brackets inside brackets)."""
        out = []
        for r in referrals:
            is_open = r.open_now(now)
            out.append(self.fmt("line", name=r.name, number=r.number))
            if is_open is None:
                out.append(self.fmt("line_hours", hours=r.hours_label))
            else:
                status = self.fmt("open_now" if is_open else "closed_now")
                out.append(self.fmt("line_hours_status", hours=r.hours_label, status=status))
            if r.note:
                out.append(self.fmt("line_note", note=r.note))
        return "\n".join(line.rstrip() for line in out)


def _check_fields(template: str, allowed: set[str], where: str) -> None:
    try:
        used = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise ContentError(f"{where}: broken braces: {e}") from e
    unknown = used - allowed
    if unknown:
        raise ContentError(f"{where}: unknown placeholders {sorted(unknown)}; allowed {sorted(allowed)}")


def _load(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as f:
            return yamlfile.load(f) or {}
    except FileNotFoundError as e:
        raise ContentError(f"{path}: missing") from e
    except yaml.YAMLError as e:
        raise ContentError(f"{path.name}: not valid YAML: {e}") from e


@lru_cache(maxsize=1)
def get_content() -> Content:
    return Content()
