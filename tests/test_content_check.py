"""``tsunagi content check`` and ``TSUNAGI_CONTENT_DIR``: the shipped content passes, a broken copy is
refused with its file and entry named, and the service reads the folder the variable names.

Each case breaks one thing in a copy of the shipped content. The triage engine takes seconds to build,
so the whole command runs on a few copies; the page and console.yaml checks run on their own."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from bot.content_check import check, check_page, pages, script_keys
from handoff.console.content import load_console_content
from triage import Category
from triage.paths import SHIPPED, VARIABLE, configured_root
from triage.ruleset import ContentError

ROOT = Path(__file__).resolve().parent.parent
COMMAND = [sys.executable, "-m", "bot.cli"]


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """A copy of the shipped content, to break."""
    target = tmp_path / "content"
    shutil.copytree(SHIPPED, target, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    return target


def edit(path: Path, change: Callable[[str], str]) -> None:
    before = path.read_text(encoding="utf-8")
    after = change(before)
    assert after != before, f"the edit of {path.name} changed nothing"
    path.write_text(after, encoding="utf-8")


def run(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=120,
        check=False,
    )


def test_the_shipped_content_passes() -> None:
    assert check(SHIPPED) == []


def test_the_command_names_each_file_and_entry_and_exits_1(copy: Path) -> None:
    edit(copy / "messages.yaml", lambda t: t.replace("\nwelcome:", "\nwelcom:", 1))
    edit(copy / "referrals.yaml", lambda t: t.replace("  listed: false", "  listd: false", 1))
    edit(copy / "triage" / "rules.yaml", lambda t: re.sub(r"risk: high", "risk: hihg", t, count=1))
    edit(copy / "console.yaml", lambda t: t.replace("{name}", "{nmae}", 1))
    edit(copy / "webchat" / "page.html", lambda t: t.replace('"reconnecting":', '"reconecting":'))
    (copy / "triage" / "rule.yaml").write_text("rules: []\n", encoding="utf-8")

    proc = run("content", "check", "--dir", str(copy))

    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    expected = [
        f"{copy}/messages.yaml: welcome: missing",
        f"{copy}/triage/rules.yaml: rule ",
        f"{copy}/console.yaml: canned[0] (はじめのあいさつ): unknown placeholders ['nmae']",
        f"{copy}/webchat/page.html: strings.reconnecting: missing (the page's script reads it)",
        f"{copy}/triage/rule.yaml: not read by tsunagi",
    ]
    for start in expected:
        assert any(line.startswith(start) for line in lines), (start, lines)
    assert lines[-1] == f"tsunagi content check: {len(lines) - 1} problem(s) in {copy}"


def test_referrals_are_checked_when_messages_are_whole(copy: Path) -> None:
    edit(copy / "referrals.yaml", lambda t: t.replace("  listed: false", "  listd: false", 1))
    problems = check(copy)
    assert problems == ["referrals.yaml: entry 0 (police): unknown fields ['listd'] (a typo?)"]


def test_the_variable_points_the_command_and_the_triage_at_another_copy(copy: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ok = run("content", "check", env={VARIABLE: str(copy)}, cwd=elsewhere)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == f"content ok: {copy}\n"

    (copy / "triage" / "normalize.yaml").unlink()
    broken = run("content", "check", env={VARIABLE: str(copy)}, cwd=elsewhere)
    assert broken.returncode == 1
    assert f"{copy}/triage/normalize.yaml" in broken.stderr
    triage = subprocess.run(
        [*COMMAND, "triage"],
        input='{"text": "死にたい"}\n',
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env={**os.environ, VARIABLE: str(copy)},
        timeout=120,
        check=False,
    )
    assert triage.returncode == 2
    assert f"{copy}/triage/normalize.yaml" in triage.stderr


def test_the_variable_is_read_from_the_environment_then_a_dot_env_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / ".env"
    monkeypatch.delenv(VARIABLE, raising=False)
    assert configured_root(env_file) == SHIPPED
    env_file.write_text(f"TSUNAGI_DATA_KEY=x\n{VARIABLE}={tmp_path / 'from-file'}\n", encoding="utf-8")
    assert configured_root(env_file) == tmp_path / "from-file"
    monkeypatch.setenv(VARIABLE, str(tmp_path / "from-env"))
    assert configured_root(env_file) == tmp_path / "from-env"
    monkeypatch.setenv(VARIABLE, "")
    assert configured_root(env_file) == SHIPPED


# -- console.yaml ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("outcomes"), "console.yaml: outcomes: a list of entries is needed"),
        (lambda d: d.update(extra=1), "console.yaml: unknown entries ['extra'] (a typo?)"),
        (lambda d: d["canned"][1].pop("text"), "console.yaml: canned[1]: 'text' must be a text"),
        (lambda d: d["canned"][0].update(lable="x"), "console.yaml: canned[0]: unknown fields ['lable']"),
        (lambda d: d["outcomes"].append(dict(d["outcomes"][0])), "console.yaml: outcomes[8] (listened): dup"),
        (lambda d: d["outcomes"][0].update(code="Listened"), "console.yaml: outcomes[0] (Listened): a code"),
        (
            lambda d: d["canned"][0].update(text="{"),
            "console.yaml: canned[0] (はじめのあいさつ): broken braces",
        ),
    ],
)
def test_console_yaml_names_the_entry(
    copy: Path, change: Callable[[dict[str, list[dict[str, str]]]], object], message: str
) -> None:
    data = yaml.safe_load((copy / "console.yaml").read_text(encoding="utf-8"))
    change(data)
    (copy / "console.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ContentError) as e:
        load_console_content(copy)
    assert str(e.value).startswith(message)


def test_console_yaml_loads_as_the_console_uses_it() -> None:
    console = load_console_content()
    assert {"code": "listened", "label": "傾聴・相談対応"} in console["outcomes"]
    assert all(set(c) == {"label", "text"} for c in console["canned"])


# -- the pages ------------------------------------------------------------------------------------------


def page_problems(copy: Path, file: str) -> list[str]:
    (page,) = [p for p in pages({"0-12", "13-15", "16-18", "19-22", "23-29", "30+"}) if p.file == file]
    return check_page(copy, page)


def test_the_pages_strings_are_what_their_scripts_read() -> None:
    for page in pages():
        assert script_keys(page.static), f"no strings read by the scripts of {page.file}"
    webchat = script_keys(pages()[0].static)
    assert {"connecting", "reconnecting", "image_sent", "status_waiting_position"} <= webchat


@pytest.mark.parametrize(
    ("file", "change", "problem"),
    [
        (
            "console/page.html",
            lambda t: t.replace('"risk_high":', '"risk_hihg":'),
            "console/page.html: strings.risk_high: missing (the code gives the script this name)",
        ),
        (
            "console/page.html",
            lambda t: t.replace('"stalking":', '"stalkng":'),
            "console/page.html: strings.categories.stalking: missing (the code gives this value)",
        ),
        (
            "console/page.html",
            lambda t: t.replace('"30+":', '"30-":'),
            "console/page.html: strings.age_bands.30+: missing (the code gives this value)",
        ),
        (
            "console/page.html",
            lambda t: t.replace('"title": "', '"title": 1, "x": "', 1),
            "console/page.html: strings.title: must be a text (or a mapping of texts)",
        ),
        (
            "console/page.html",
            lambda t: t.replace('"title": "', '"title": "{{who}}', 1),
            "console/page.html: {{who}}: unknown placeholder; allowed []",
        ),
        (
            "webchat/page.html",
            lambda t: t.replace("{{quick_exit_url}}", ""),
            "webchat/page.html: {{quick_exit_url}}: missing (the server fills it in)",
        ),
        (
            "webchat/page.html",
            lambda t: t.replace('"status_closed":', '"status_close":'),
            "webchat/page.html: strings.status_closed: missing (the code gives the script this name)",
        ),
        (
            "webchat/page.html",
            lambda t: t.replace("chat.js", "chats.js"),
            f"webchat/page.html: /chat/static/chats.js: no such file in {ROOT}/channels/webchat/static",
        ),
        (
            "webchat/page.html",
            lambda t: t.replace('"you": "あなた",', '"you": "あなた"'),
            "webchat/page.html: strings: not valid JSON",
        ),
        (
            "webchat/page.html",
            lambda t: t.replace('id="strings"', 'id="texts"'),
            'webchat/page.html: strings: no <script type="application/json" id="strings"> element',
        ),
    ],
)
def test_a_page_names_what_is_wrong(
    copy: Path, file: str, change: Callable[[str], str], problem: str
) -> None:
    assert page_problems(copy, file) == []
    edit(copy / file, change)
    problems = page_problems(copy, file)
    assert any(p.startswith(problem) for p in problems), problems


def test_every_category_has_a_name_in_the_console() -> None:
    (console,) = [p for p in pages() if p.file == "console/page.html"]
    assert console.groups["categories"] == {c.value for c in Category}


# -- referral ids live in referrals.yaml only -----------------------------------------------------------


def test_no_referral_id_is_written_in_code() -> None:
    """Code asks referrals.yaml (crisis, listed, categories), never for a service by its id. An id that
    is also a category's name (job_hunting) is a category where the code says it."""
    ids = {str(e["id"]) for e in yaml.safe_load((SHIPPED / "referrals.yaml").read_text(encoding="utf-8"))}
    ids -= {c.value for c in Category}
    code = [
        p
        for folder in ("bot", "channels", "handoff", "triage")
        for p in (ROOT / folder).rglob("*")
        if p.suffix in (".py", ".js", ".html") and "migrations" not in p.parts
    ]
    found = [
        f"{p.relative_to(ROOT)}: {i}"
        for p in code
        for i in ids
        if re.search(rf"[\"']{re.escape(i)}[\"']", p.read_text(encoding="utf-8"))
    ]
    assert found == []


@pytest.mark.parametrize("name", ["triage/lexicon.yaml", "messages.yaml", "console.yaml"])
def test_a_key_written_twice_is_named_with_its_lines(copy: Path, name: str) -> None:
    """A concept, a message or a console entry defined again further down would silently replace the
    first (PyYAML keeps the later one): the service refuses it and the check names the key and both lines."""
    path = copy / name
    lines = path.read_text(encoding="utf-8").splitlines()
    top_level = re.compile(r"^[A-Za-z_]\w*:")
    # The file's first key one level in, written again as the last key of the same mapping.
    first = next(i for i, line in enumerate(lines) if re.match(r"^  [A-Za-z_]\w*:", line))
    end = next((i for i in range(first + 1, len(lines)) if top_level.match(lines[i])), len(lines))
    key = lines[first].strip().split(":", 1)[0]
    lines.insert(end, f"  {key}: {{}}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    problems = check(copy)

    twice = f"the key '{key}' is written twice (first on line {first + 1})"
    assert any(twice in p and f"line {end + 1}" in p for p in problems), problems
