"""The console's own content, ``console.yaml``: the replies counsellors insert (and edit before
sending) and the outcome codes a conversation is closed with. Loaded and checked here, by the console
at start and by ``tsunagi content check``: a broken file names its entry (``ContentError``)."""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any

import yaml

from triage.paths import CONTENT_ROOT
from triage.ruleset import ContentError

FILE = "console.yaml"
CANNED_FIELDS = {"name"}  # {name}: the counsellor's user name, filled in by the page
OUTCOME_CODE = re.compile(r"[a-z][a-z0-9_]{0,31}")  # kept in the statistics and the audit log


def load_console_content(root: Path = CONTENT_ROOT) -> dict[str, Any]:
    """``{"canned": [{"label", "text"}], "outcomes": [{"code", "label"}]}`` from ``root/console.yaml``."""
    path = root / FILE
    try:
        with path.open(encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ContentError(f"{path}: {e.strerror or e}") from e
    except yaml.YAMLError as e:
        raise ContentError(f"{FILE}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ContentError(f"{FILE}: a mapping with 'canned' and 'outcomes' is expected")
    unknown = set(data) - {"canned", "outcomes"}
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
    outcomes = _entries(data, "outcomes", ("code", "label"))
    seen: set[str] = set()
    for i, entry in enumerate(outcomes):
        code = entry["code"]
        if not OUTCOME_CODE.fullmatch(code):
            raise ContentError(f"{FILE}: outcomes[{i}] ({code}): a code is lower-case letters, digits and _")
        if code in seen:
            raise ContentError(f"{FILE}: outcomes[{i}] ({code}): duplicate code")
        seen.add(code)
    return {"canned": canned, "outcomes": outcomes}


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
