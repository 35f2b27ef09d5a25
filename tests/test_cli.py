"""The ``tsunagi triage`` command, run for real: the JSON Lines contract of TAXONOMY.md.

Every test starts the command as a subprocess (``python -m bot.cli triage``) with the
interpreter running the tests, so it works in any virtual environment.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
COMMAND = [sys.executable, "-m", "bot.cli", "triage"]
TIMEOUT = 120

RISKS = {"low", "medium", "high", "crisis"}
RANK = {"low": 0, "medium": 1, "high": 2, "crisis": 3}
CATEGORIES = {
    "suicide",
    "dv",
    "sexual_violence",
    "child_abuse",
    "sexual_harassment",
    "power_harassment",
    "maternity_harassment",
    "academic_harassment",
    "job_hunting",
    "bullying",
    "stalking",
    "exploitation",
    "runaway",
    "school_refusal",
}


def run_raw(stdin: bytes, *args: str) -> list[dict[str, Any]]:
    """Run the command on raw bytes; it must exit 0 and write valid UTF-8 JSON Lines."""
    proc = subprocess.run(
        [*COMMAND, *args],
        input=stdin,
        capture_output=True,
        cwd=REPO,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")[-2000:]
    text = proc.stdout.decode("utf-8")  # strict: raises on anything that is not UTF-8
    assert text == "" or text.endswith("\n")
    out = []
    for line in text.split("\n")[:-1]:
        obj = json.loads(line)
        assert isinstance(obj, dict), line
        out.append(obj)
    return out


def run(lines: list[Any], *args: str) -> list[dict[str, Any]]:
    """Run the command on JSON Lines: dicts and lists are dumped, strings are sent as they are."""
    rendered = [x if isinstance(x, str) else json.dumps(x, ensure_ascii=False) for x in lines]
    return run_raw(("\n".join(rendered) + "\n").encode("utf-8"), *args)


def check_result(obj: dict[str, Any], text: str | None = None) -> None:
    """A well-formed result (not an error), its spans pointing at the words quoted."""
    assert "error" not in obj, obj
    assert obj["risk"] in RISKS
    assert isinstance(obj["categories"], list)
    assert set(obj["categories"]) <= CATEGORIES, obj["categories"]
    assert len(set(obj["categories"])) == len(obj["categories"])
    assert isinstance(obj["reasons"], list)
    for reason in obj["reasons"]:
        assert isinstance(reason["rule"], str) and reason["rule"]
        assert isinstance(reason["matched"], str)
        span = reason["span"]
        assert isinstance(span, list) and len(span) == 2
        start, end = span
        assert isinstance(start, int) and isinstance(end, int)
        assert 0 <= start <= end
        if text is not None:
            assert end <= len(text)
            assert text[start:end] == reason["matched"], (reason, text)


def is_error(obj: dict[str, Any]) -> bool:
    return isinstance(obj.get("error"), str) and obj["error"] != "" and "risk" not in obj


# --------------------------------------------------------------------------- the basic contract


def test_order_ids_and_fields() -> None:
    rows: list[dict[str, Any]] = [
        {"id": "a-1", "text": "今から飛び降りる"},
        {"id": 2, "text": "こんにちは。相談は無料ですか？"},
        {"id": "c", "text": "上司に毎日怒鳴られてつらい"},
        {"id": 0, "text": "夫に毎日殴られてる。今日も蹴られた"},
        {"id": "日本語のid", "text": "クラスで無視されてる"},
        {"id": 7, "text": "ありがとうございました"},
    ]
    out = run(rows)
    assert len(out) == len(rows)
    for row, obj in zip(rows, out, strict=True):
        assert obj["id"] == row["id"]
        assert type(obj["id"]) is type(row["id"])  # a string id stays a string, an int an int
        check_result(obj, row["text"])
    by_id = {o["id"]: o for o in out}
    assert by_id["a-1"]["risk"] == "crisis"
    assert "suicide" in by_id["a-1"]["categories"]
    assert any(r["matched"] for r in by_id["a-1"]["reasons"])
    assert by_id[2]["risk"] == "low"
    assert by_id[2]["categories"] == []
    assert by_id["c"]["risk"] == "medium"
    assert "power_harassment" in by_id["c"]["categories"]
    assert RANK[by_id[0]["risk"]] >= RANK["high"]
    assert "dv" in by_id[0]["categories"]
    assert "bullying" in by_id["日本語のid"]["categories"]


def test_one_output_per_non_empty_line_in_order() -> None:
    texts = ["こんにちは", "死にたい", "いじめられてる", "今日は雨", "今から死ぬ"] * 60
    lines: list[Any] = []
    for i, t in enumerate(texts):
        lines.append({"id": f"m{i}", "text": t})
        if i % 7 == 0:
            lines.append("")  # blank lines give nothing
    out = run(lines)
    assert [o["id"] for o in out] == [f"m{i}" for i in range(len(texts))]
    for t, o in zip(texts, out, strict=True):
        check_result(o, t)
    assert RANK[out[1]["risk"]] >= RANK["high"]
    assert out[4]["risk"] == "crisis"


def test_missing_id_gets_the_line_number() -> None:
    out = run([{"text": "こんにちは"}, {"id": "x", "text": "こんにちは"}, {"text": "死にたい"}])
    assert [o["id"] for o in out] == [1, "x", 3]
    for o in out:
        check_result(o)


def test_crlf_line_endings() -> None:
    stdin = '{"id": "w1", "text": "今から死ぬ"}\r\n{"id": "w2", "text": "こんにちは"}\r\n'.encode()
    out = run_raw(stdin)
    assert [o["id"] for o in out] == ["w1", "w2"]
    assert out[0]["risk"] == "crisis"
    assert out[1]["risk"] == "low"


def test_no_input_no_output() -> None:
    assert run_raw(b"") == []
    assert run_raw(b"\n\n\n") == []


# --------------------------------------------------------------------------- bad lines


def test_invalid_json_line_gives_error_with_line_number_and_goes_on() -> None:
    out = run(
        [
            {"id": "first", "text": "こんにちは"},
            {"id": "second", "text": "死にたい"},
            '{"id": "broken", "text": "今から死ぬ"',  # line 3: not valid JSON
            "this is not json at all",  # line 4
            {"id": "after", "text": "今から死ぬ"},
        ]
    )
    assert len(out) == 5
    assert out[0]["id"] == "first" and not is_error(out[0])
    assert out[1]["id"] == "second" and not is_error(out[1])
    assert is_error(out[2]) and out[2]["id"] == 3
    assert is_error(out[3]) and out[3]["id"] == 4
    assert out[4]["id"] == "after"
    check_result(out[4], "今から死ぬ")
    assert out[4]["risk"] == "crisis"


def test_missing_or_non_string_text_gives_error_with_its_id() -> None:
    out = run(
        [
            {"id": "no-text"},
            {"id": 42, "message": "死にたい"},
            {"id": "null-text", "text": None},
            {"id": "number-text", "text": 5},
            {"id": "list-text", "text": ["死にたい"]},
            {"id": "ok", "text": "今から死ぬ"},
        ]
    )
    assert [o["id"] for o in out] == ["no-text", 42, "null-text", "number-text", "list-text", "ok"]
    assert all(is_error(o) for o in out[:5]), out[:5]
    assert out[5]["risk"] == "crisis"


@pytest.mark.parametrize("line", ["[1,2]", '"死にたい"', "42", "null", "true", "[]"])
def test_non_object_json_gives_error(line: str) -> None:
    out = run(['{"id": "before", "text": "こんにちは"}', line, '{"id": "after", "text": "今から死ぬ"}'])
    assert len(out) == 3
    assert out[0]["id"] == "before" and not is_error(out[0])
    assert is_error(out[1]), out[1]
    assert out[1]["id"] == 2  # its line number
    assert out[2]["id"] == "after" and out[2]["risk"] == "crisis"


def test_deeply_nested_json_does_not_stop_the_command() -> None:
    out = run(["[" * 100_000 + "]" * 100_000, {"id": "after", "text": "今から死ぬ"}])
    assert len(out) == 2
    assert is_error(out[0]) and out[0]["id"] == 1
    assert out[1]["risk"] == "crisis"


# --------------------------------------------------------------------------- awkward texts


@pytest.mark.parametrize("text", ["", " ", "   \n\t  ", "　　", "\r\n"])
def test_empty_and_whitespace_text(text: str) -> None:
    out = run([{"id": "e", "text": text}])
    assert len(out) == 1
    obj = out[0]
    check_result(obj, text)
    assert obj["id"] == "e"
    assert obj["risk"] == "low"
    assert obj["empty"] is True
    assert obj["categories"] == [] and obj["reasons"] == []


def test_non_empty_text_is_not_marked_empty() -> None:
    out = run([{"id": "n", "text": "こんにちは"}])
    assert "empty" not in out[0] or out[0]["empty"] is False


def test_very_long_text_is_truncated_with_a_note() -> None:
    text = "今から飛び降りる。" + "あ" * 150_000
    assert len(text) > 150_000
    out = run([{"id": "long", "text": text}, {"id": "short", "text": "こんにちは"}])
    assert [o["id"] for o in out] == ["long", "short"]
    obj = out[0]
    check_result(obj, text)
    assert obj["truncated"] is True
    assert isinstance(obj.get("note"), str) and obj["note"]
    assert obj["risk"] == "crisis"  # the start is still read
    assert "truncated" not in out[1] or out[1]["truncated"] is False


def test_control_characters_and_lone_surrogates() -> None:
    # Written as JSON escapes: the line is valid JSON, the text holds controls and lone surrogates.
    lines = [
        '{"id": "ctl", "text": "\\u0000\\u0007\\u001b[31m\\u007f\\u0085今から死ぬ"}',
        '{"id": "sur", "text": "\\ud800死にたい\\udfff"}',
        '{"id": "pair", "text": "\\udfff\\ud800"}',
        '{"id": "\\ud800", "text": "こんにちは"}',
        '{"id": "last", "text": "今から飛び降りる"}',
    ]
    stdin = ("\n".join(lines) + "\n").encode("utf-8")
    out = run_raw(stdin)  # checks exit 0 and strictly valid UTF-8 output
    assert len(out) == 5
    for obj in out:
        assert not is_error(obj), obj
        check_result(obj)
        dumped = json.dumps(obj, ensure_ascii=False)
        dumped.encode("utf-8")  # no surrogate made it to the output
    assert out[0]["id"] == "ctl" and out[0]["risk"] == "crisis"
    assert out[1]["id"] == "sur" and RANK[out[1]["risk"]] >= RANK["high"]
    assert "suicide" in out[1]["categories"]
    assert out[2]["id"] == "pair"
    assert out[4]["id"] == "last" and out[4]["risk"] == "crisis"


def test_raw_control_characters_in_a_line() -> None:
    # Raw control characters inside a JSON string are not valid JSON: a result or an error, never a crash.
    stdin = (
        b'{"id": "raw", "text": "\x00\x07\x1b\x7f"}\n' + '{"id": "after", "text": "今から死ぬ"}\n'.encode()
    )
    out = run_raw(stdin)
    assert len(out) == 2
    assert is_error(out[0]) or out[0]["risk"] in RISKS
    assert out[1]["id"] == "after" and out[1]["risk"] == "crisis"


def test_invalid_utf8_bytes_do_not_stop_the_command() -> None:
    stdin = b"".join(
        [
            # broken bytes and an encoded surrogate inside the text
            b'{"id": "b1", "text": "\xff\xfe\xc3' + "死にたい".encode() + b'\xed\xa0\x80"}\n',
            b'\xff\xfe{"id": "b2", "text": "x"}\n',  # broken bytes outside the JSON
            b"\x80\x81\x82\n",  # nothing but broken bytes
            b'{"id": "b4", "text": "' + "今から死ぬ".encode() + b'"}\n',
        ]
    )
    out = run_raw(stdin)  # exit 0, strictly valid UTF-8 out
    assert len(out) == 4
    assert out[0]["id"] == "b1"
    check_result(out[0])
    assert "suicide" in out[0]["categories"]
    assert is_error(out[1]) and out[1]["id"] == 2
    assert is_error(out[2]) and out[2]["id"] == 3
    assert out[3]["id"] == "b4" and out[3]["risk"] == "crisis"


def test_utf8_bom_and_emoji() -> None:
    stdin = (
        b"\xef\xbb\xbf" + json.dumps({"id": "bom", "text": "死にたい😭"}, ensure_ascii=False).encode() + b"\n"
    )
    stdin += json.dumps({"id": "emoji", "text": "🔪🩸💊 (´;ω;`)"}).encode() + b"\n"
    out = run_raw(stdin)
    assert len(out) == 2
    assert out[1]["id"] == "emoji"
    check_result(out[1], "🔪🩸💊 (´;ω;`)")
    # A BOM on the first line is either read past or reported; it never stops the command.
    assert out[0].get("id") in ("bom", 1)


# --------------------------------------------------------------------------- history


def test_history_raises_a_short_ambiguous_message() -> None:
    history = ["夫に毎日殴られてる。今日も蹴られた"]
    out = run(
        [
            {"id": "alone", "text": "もう無理"},
            {"id": "after", "text": "もう無理", "history": history},
            {"id": "empty-history", "text": "もう無理", "history": []},
        ]
    )
    assert [o["id"] for o in out] == ["alone", "after", "empty-history"]
    for o in out:
        check_result(o, "もう無理")
    assert RANK[out[1]["risk"]] >= RANK["high"]
    assert RANK[out[1]["risk"]] > RANK[out[0]["risk"]]
    assert "dv" in out[1]["categories"]
    assert out[2]["risk"] == out[0]["risk"]


def test_history_floor_keeps_crisis() -> None:
    out = run([{"id": "h", "text": "ありがとう", "history": ["今から飛び降りる", "こんにちは"]}])
    check_result(out[0], "ありがとう")
    assert out[0]["risk"] == "crisis"


@pytest.mark.parametrize(
    "history",
    ["夫に毎日殴られてる", [1, 2], ["ok", None], {"0": "夫に殴られた"}, [["nested"]], 5],
    ids=["string", "ints", "null-item", "object", "nested", "number"],
)
def test_bad_history_gives_error_with_its_id(history: Any) -> None:
    out = run(
        [
            {"id": "bad", "text": "もう無理", "history": history},
            {"id": "next", "text": "今から死ぬ"},
        ]
    )
    assert len(out) == 2
    assert is_error(out[0]) and out[0]["id"] == "bad"
    assert out[1]["id"] == "next" and out[1]["risk"] == "crisis"


# --------------------------------------------------------------------------- pipes


def test_flush_answers_each_line_before_stdin_closes() -> None:
    """With --flush the command answers a line at once (a chat front end keeps the pipe open)."""
    answers: queue.Queue[bytes] = queue.Queue()
    with subprocess.Popen(
        [*COMMAND, "--flush"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        stdout = proc.stdout

        def reader() -> None:
            for line in iter(stdout.readline, b""):
                answers.put(line)

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        try:
            proc.stdin.write(json.dumps({"id": "p1", "text": "今から死ぬ"}).encode() + b"\n")
            proc.stdin.flush()
            try:
                first = answers.get(timeout=60)  # stdin is still open
            except queue.Empty:
                pytest.fail("no answer to the first line while stdin was still open")
            proc.stdin.write(json.dumps({"id": "p2", "text": "こんにちは"}).encode() + b"\n")
            proc.stdin.close()
            second = answers.get(timeout=60)
            proc.wait(timeout=60)
            thread.join(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0
    objs = [json.loads(a.decode("utf-8")) for a in (first, second)]
    assert [o["id"] for o in objs] == ["p1", "p2"]
    assert objs[0]["risk"] == "crisis"
    assert answers.empty()


# --------------------------------------------------------------------------- the dev set, end to end


def test_dev_set_scores(tmp_path: Path) -> None:
    dev = SHARED / "triage" / "dev.jsonl"
    scorer = SHARED / "triage" / "score.py"
    assert dev.exists(), f"missing {dev}"
    assert scorer.exists(), f"missing {scorer}"
    pred = tmp_path / "pred.jsonl"
    with dev.open("rb") as fin, pred.open("wb") as fout:
        proc = subprocess.run(
            COMMAND, stdin=fin, stdout=fout, stderr=subprocess.PIPE, cwd=REPO, timeout=TIMEOUT
        )
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")[-2000:]

    gold_ids = [
        json.loads(line)["id"] for line in dev.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    predicted = [json.loads(line) for line in pred.read_text(encoding="utf-8").splitlines()]
    assert [p["id"] for p in predicted] == gold_ids
    assert not any("error" in p for p in predicted)

    scored = subprocess.run(
        [sys.executable, str(scorer), str(dev), str(pred), "--json"],
        capture_output=True,
        cwd=REPO,
        timeout=TIMEOUT,
        check=False,
    )
    assert scored.returncode == 0, scored.stderr.decode("utf-8", "replace")[-2000:]
    metrics = json.loads(scored.stdout.decode("utf-8"))
    summary = {k: v for k, v in metrics.items() if k != "categories"}
    assert metrics["messages"] == len(gold_ids)
    assert metrics["missing_predictions"] == 0
    assert metrics["crisis_recall"] == 1.0, summary
    assert metrics["crisis_precision"] >= 0.9, summary
    assert metrics["under_triage_rate"] <= 0.03, summary
    assert metrics["category_micro_f1"] >= 0.9, summary
