"""The dialogue (bot/dialogue.py) as a table, with no I/O: every state against a crisis, high, medium, low,
distress without a category, its choices, free text and each keyword; what state it leads to and what the
bot says (entries of content/messages.yaml). And docs/safety.md is what the code makes of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.content import get_content
from bot.dialogue import (
    ASK_AGE,
    ASK_DANGER,
    INTAKE_PREFECTURE,
    INTAKE_SAFE,
    SAFETY,
    Action,
    Claimed,
    ClosedByCounsellor,
    Conv,
    Dialogue,
    Level,
    Phase,
    Requeued,
    Said,
    Timeout,
    Turn,
)
from bot.hours import Hours
from bot.models import Sender, State
from bot.safety_doc import EXAMPLES, LEVEL_EXAMPLES, NOW, inputs, render, run
from triage import Category, Reason, Risk, TriageResult

ROOT = Path(__file__).resolve().parent.parent
DIALOGUE = Dialogue(get_content(), Hours.parse("mon-sun 00:00-24:00"))

# For each state, what each kind of message leads to: (message, action, state after, awaiting, replies).
# "—": not read against the table (the person's own word: a keyword, or the survey's answer).
Row = tuple[str, str, str, str, list[str]]
C, H, MD, M, D, L = (f"{lv.value}: {LEVEL_EXAMPLES[lv].text}" for lv in Level)
FREE = "free text: ありがとう、読んでみます"
K_COUNSELLOR, K_END, K_ERASE, K_CRISIS = (
    "keyword (counsellor): 相談したい",
    "keyword (end): 終了",
    "keyword (erase): 削除",
    "keyword (crisis): たすけて",
)
# High risk skipped the intake: after the crisis reply, or the queue's, the age band is asked once.
CRISIS_ROW: list[str] = ["crisis", "ask_age"]
QUEUED = ["waiting", "waiting_safety", "ask_age"]

EXPECTED: dict[Phase, list[Row]] = {
    Phase.NEW: [
        (C, "crisis", "waiting", ASK_AGE, CRISIS_ROW),
        (H, "queue", "waiting", ASK_AGE, ["welcome", *QUEUED]),
        (MD, "offer_and_ask", "offered", ASK_DANGER, ["welcome", "offer", "ask_danger"]),
        (M, "offer", "offered", "", ["welcome", "offer"]),
        (D, "ask", "welcome", ASK_DANGER, ["welcome", "ask_danger"]),
        (L, "flow", "welcome", "", ["welcome"]),
        (FREE, "flow", "welcome", "", ["welcome"]),
        (K_COUNSELLOR, "—", "waiting", "", ["welcome", "waiting"]),
        (K_END, "flow", "welcome", "", ["welcome"]),  # nothing to end yet
        (K_ERASE, "—", "new", "erase_confirm", ["erase_confirm"]),
        (K_CRISIS, "crisis", "waiting", ASK_AGE, CRISIS_ROW),
    ],
    Phase.WELCOME: [
        (C, "crisis", "waiting", ASK_AGE, CRISIS_ROW),
        (H, "queue", "waiting", ASK_AGE, QUEUED),
        (MD, "offer_and_ask", "offered", ASK_DANGER, ["offer", "ask_danger"]),
        (M, "offer", "offered", "", ["offer"]),
        (D, "ask", "welcome", ASK_DANGER, ["ask_danger"]),
        (L, "flow", "welcome", "", ["consent_needed"]),
        ("choice: 同意して話す", "flow", "listening", "", ["listening"]),
        ("choice: 同意しない", "flow", "closed", "", ["declined"]),
        (FREE, "flow", "welcome", "", ["consent_needed"]),
        (K_COUNSELLOR, "—", "waiting", "", ["waiting"]),
        (K_END, "flow", "welcome", "", ["consent_needed"]),
        (K_ERASE, "—", "welcome", "erase_confirm", ["erase_confirm"]),
        (K_CRISIS, "crisis", "waiting", ASK_AGE, CRISIS_ROW),
    ],
    Phase.LISTENING: [
        (C, "crisis", "waiting", ASK_AGE, CRISIS_ROW),
        (H, "queue", "waiting", ASK_AGE, QUEUED),
        (MD, "offer_and_ask", "offered", ASK_DANGER, ["offer", "ask_danger"]),
        (M, "offer", "listening", "intake_age", ["offer_counsellor", "intake_age"]),
        (D, "ask", "listening", ASK_DANGER, ["ask_danger"]),
        (L, "flow", "listening", "intake_age", ["intake_intro", "intake_age"]),
        (FREE, "flow", "listening", "intake_age", ["intake_intro", "intake_age"]),
        (K_COUNSELLOR, "—", "waiting", "", ["waiting"]),
        (K_END, "—", "closed", "survey", ["closing"]),
        (K_ERASE, "—", "listening", "erase_confirm", ["erase_confirm"]),
        (K_CRISIS, "crisis", "waiting", ASK_AGE, CRISIS_ROW),
    ],
    Phase.INTAKE: [
        (C, "crisis", "waiting", ASK_AGE, CRISIS_ROW),
        (H, "queue", "waiting", ASK_AGE, QUEUED),
        (MD, "offer_and_ask", "offered", ASK_DANGER, ["offer", "ask_danger"]),
        (M, "offer", "offered", "", ["offer"]),
        (D, "ask", "listening", ASK_DANGER, ["ask_danger"]),
        (L, "flow", "offered", "", ["offer"]),  # not an answer: the questions stop, the words are heard
        ("choice: 16〜18歳", "flow", "listening", INTAKE_PREFECTURE, ["intake_prefecture"]),
        ("choice: 答えない", "flow", "listening", INTAKE_PREFECTURE, ["intake_prefecture"]),
        (FREE, "flow", "offered", "", ["offer"]),
        (K_COUNSELLOR, "—", "waiting", "", ["waiting"]),
        (K_END, "—", "closed", "survey", ["closing"]),
        (K_ERASE, "—", "listening", "erase_confirm", ["erase_confirm"]),
        (K_CRISIS, "crisis", "waiting", ASK_AGE, CRISIS_ROW),
    ],
    Phase.ASKING: [
        (C, "crisis", "waiting", ASK_AGE, CRISIS_ROW),
        (H, "queue", "waiting", ASK_AGE, QUEUED),
        (MD, "offer", "offered", "", ["offer"]),
        (M, "offer", "offered", "", ["offer"]),
        (D, "flow", "offered", "", ["offer"]),  # asked already: not asked again at the same risk
        (L, "flow", "offered", "", ["offer"]),
        ("choice: はい", "crisis", "waiting", ASK_AGE, CRISIS_ROW),
        ("choice: いいえ", "flow", "offered", "", ["danger_no", "offer"]),
        ("choice: わからない", "crisis", "waiting", ASK_AGE, CRISIS_ROW),
        (FREE, "flow", "offered", "", ["offer"]),
        (K_COUNSELLOR, "—", "waiting", "", ["waiting"]),
        (K_END, "—", "closed", "survey", ["closing"]),
        (K_ERASE, "—", "listening", "erase_confirm", ["erase_confirm"]),
        (K_CRISIS, "crisis", "waiting", ASK_AGE, CRISIS_ROW),
    ],
    Phase.OFFERED: [
        (C, "crisis", "waiting", ASK_AGE, CRISIS_ROW),
        (H, "queue", "waiting", ASK_AGE, QUEUED),
        (MD, "ask", "offered", ASK_DANGER, ["ask_danger"]),
        (M, "flow", "offered", "", ["offer_again"]),
        (D, "ask", "offered", ASK_DANGER, ["ask_danger"]),
        (L, "flow", "offered", "", ["offer_again"]),
        ("choice: 情報だけでよい", "flow", "closed", "survey", ["closing"]),
        (FREE, "flow", "offered", "", ["offer_again"]),
        (K_COUNSELLOR, "—", "waiting", "", ["waiting"]),
        (K_END, "—", "closed", "survey", ["closing"]),
        (K_ERASE, "—", "offered", "erase_confirm", ["erase_confirm"]),
        (K_CRISIS, "crisis", "waiting", ASK_AGE, CRISIS_ROW),
    ],
    Phase.WAITING: [
        (C, "crisis", "waiting", ASK_AGE, CRISIS_ROW),
        (H, "queue", "waiting", ASK_AGE, ["waiting_update", "waiting_safety", "ask_age"]),
        (MD, "ask", "waiting", ASK_DANGER, ["ask_danger"]),
        (M, "flow", "waiting", "", ["waiting_update"]),
        (D, "ask", "waiting", ASK_DANGER, ["ask_danger"]),
        (L, "flow", "waiting", "", ["waiting_update"]),
        (FREE, "flow", "waiting", "", ["waiting_update"]),
        (K_COUNSELLOR, "—", "waiting", "", ["waiting_update"]),
        (K_END, "—", "closed", "survey", ["closing"]),
        (K_ERASE, "—", "waiting", "erase_confirm", ["erase_confirm"]),
        (K_CRISIS, "crisis", "waiting", ASK_AGE, CRISIS_ROW),
    ],
    Phase.WITH_COUNSELLOR: [
        (C, "crisis", "with_counsellor", "", []),  # the supervisors are alerted; the counsellor is there
        (H, "silent", "with_counsellor", "", []),
        (MD, "silent", "with_counsellor", "", []),
        (M, "silent", "with_counsellor", "", []),
        (D, "silent", "with_counsellor", "", []),
        (L, "silent", "with_counsellor", "", []),
        (FREE, "silent", "with_counsellor", "", []),
        (K_COUNSELLOR, "—", "with_counsellor", "", []),
        (K_END, "—", "closed", "survey", ["closing"]),
        (K_ERASE, "—", "with_counsellor", "erase_confirm", ["erase_confirm"]),
        (K_CRISIS, "crisis", "with_counsellor", "", []),
    ],
    # A message after closing, other than the survey's answer, starts a new conversation.
    Phase.CLOSED: [
        (C, "crisis", "waiting", ASK_AGE, CRISIS_ROW),
        (H, "queue", "waiting", ASK_AGE, ["welcome", *QUEUED]),
        (MD, "offer_and_ask", "offered", ASK_DANGER, ["welcome", "offer", "ask_danger"]),
        (M, "offer", "offered", "", ["welcome", "offer"]),
        (D, "ask", "welcome", ASK_DANGER, ["welcome", "ask_danger"]),
        (L, "flow", "welcome", "", ["welcome"]),
        ("choice: よかった", "—", "closed", "", ["survey_thanks"]),
        (FREE, "flow", "welcome", "", ["welcome"]),
        (K_COUNSELLOR, "—", "waiting", "", ["welcome", "waiting"]),
        (K_END, "flow", "welcome", "", ["welcome"]),
        (K_ERASE, "—", "new", "erase_confirm", ["erase_confirm"]),
        (K_CRISIS, "crisis", "waiting", ASK_AGE, CRISIS_ROW),
    ],
}


def test_the_table_has_every_state_and_level() -> None:
    assert set(SAFETY) == {(p, lv) for p in Phase for lv in Level}
    assert set(EXPECTED) == set(Phase) == set(EXAMPLES)
    # Wherever a person can be, a crisis takes the crisis path and high goes to the queue.
    for phase in Phase:
        assert SAFETY[(phase, Level.CRISIS)] is Action.CRISIS
        assert SAFETY[(phase, Level.HIGH)] in (Action.QUEUE, Action.SILENT)


@pytest.mark.parametrize("phase", list(Phase))
def test_every_state_against_every_kind_of_message(phase: Phase) -> None:
    got: list[Row] = []
    for example in inputs(phase):
        turn, _ = run(DIALOGUE, EXAMPLES[phase], example.said)
        action = turn.action.value if turn.action else "—"
        keys = [r.key for r in turn.replies]
        got.append((example.name, action, turn.conv.state.value, turn.conv.pending, keys))
    assert got == EXPECTED[phase]


@pytest.mark.parametrize("phase", list(Phase))
def test_the_action_taken_is_the_tables(phase: Phase) -> None:
    """The levels' examples, read in each state: the action is what the table says for their level."""
    for level, said in LEVEL_EXAMPLES.items():
        turn, restarted = run(DIALOGUE, EXAMPLES[phase], said)
        read_as = Phase.CLOSED if restarted else phase
        assert turn.level is not None
        assert turn.action is SAFETY[(read_as, turn.level)], (phase, level)
        if phase is not Phase.ASKING:  # (asked already: distress there reads as its risk)
            assert turn.level is level, (phase, level)
        _check_action(turn, phase)


def _check_action(turn: Turn, phase: Phase) -> None:
    keys = [r.key for r in turn.replies]
    conv = turn.conv
    # (After a crisis reply or the queue's, the age band is asked when nothing told it yet.)
    keys = keys[:-1] if keys[-1:] == ["ask_age"] else keys
    if turn.action is Action.CRISIS:
        assert conv.risk is Risk.CRISIS and conv.emergency and turn.alert
        if phase is not Phase.WITH_COUNSELLOR:
            assert keys[-1] == "crisis" and conv.state == State.WAITING and turn.enqueue
    elif turn.action is Action.QUEUE:
        assert conv.state == State.WAITING and turn.enqueue and keys[-1] == "waiting_safety"
    elif turn.action in (Action.ASK, Action.OFFER_AND_ASK):
        assert keys[-1] == "ask_danger" and conv.pending == ASK_DANGER and conv.danger_asked
    elif turn.action is Action.OFFER:
        assert "ask_danger" not in keys
        assert keys[-1] in ("offer", "offer_again", "waiting_update") or keys == [
            "offer_counsellor",
            "intake_age",
        ]
    elif turn.action is Action.SILENT:
        assert keys == []


def said(text: str, risk: Risk = Risk.LOW, *, distress: bool = False, choice: str = "") -> Said:
    cats = (Category.SUICIDE,) if risk.rank >= Risk.HIGH.rank else ()
    reasons = (Reason("suicide.ideation", text, (0, len(text))),) if cats else ()
    return Said(text, TriageResult(risk, cats, reasons, signals=("distress",) if distress else ()), choice)


def step(conv: Conv, event: Said | Timeout | Claimed | Requeued | ClosedByCounsellor) -> Turn:
    return DIALOGUE.step(conv, event, NOW)


LISTENING = Conv(state=State.LISTENING, consented=True)


def test_asked_at_most_once_unless_the_risk_rises() -> None:
    asked = step(LISTENING, said("全部やめたい", distress=True)).conv
    answered = step(asked, said("いいえ")).conv
    assert (answered.state, answered.danger_answer, answered.danger_asked) == (State.OFFERED, "no", "low")
    again = step(answered, said("逃げたい", distress=True))
    assert [r.key for r in again.replies] == ["offer_again"], "not asked again at the same risk"
    rose = step(answered, said("毎日泣いてばかりで、もう限界", Risk.MEDIUM, distress=True))
    assert [r.key for r in rose.replies] == ["ask_danger"], "asked again: the risk rose"
    assert rose.conv.danger_asked == "medium"


@pytest.mark.parametrize(
    ("reply", "answer", "action", "keys"),
    [
        ("はい", "yes", Action.CRISIS, CRISIS_ROW),
        ("うん", "yes", Action.CRISIS, CRISIS_ROW),
        ("はい、もう準備はできてる", "yes", Action.CRISIS, CRISIS_ROW),
        ("わからない", "unsure", Action.CRISIS, CRISIS_ROW),
        ("いいえ", "no", Action.FLOW, ["danger_no", "offer"]),
        ("いいえ。ただ疲れてて", "no", Action.FLOW, ["danger_no", "offer"]),
        ("そういうのじゃないけど、しんどい", "message", Action.FLOW, ["offer"]),
    ],
)
def test_the_direct_questions_answers(reply: str, answer: str, action: Action, keys: list[str]) -> None:
    asked = step(LISTENING, said("全部やめたい", distress=True)).conv
    turn = step(asked, said(reply))
    assert (turn.conv.danger_answer, turn.action, [r.key for r in turn.replies]) == (answer, action, keys)


def test_high_in_the_reply_to_the_direct_question_goes_to_the_queue() -> None:
    """いいえ, but the words say otherwise: what the triage found comes first; the answer is kept."""
    asked = step(LISTENING, said("全部やめたい", distress=True)).conv
    turn = step(asked, said("いいえ、でも消えたい", Risk.HIGH))
    assert turn.action is Action.QUEUE and turn.conv.state == State.WAITING
    assert turn.conv.danger_answer == "no"
    assert [r.key for r in turn.replies] == QUEUED


def test_a_choice_found_in_a_longer_text_answers_and_the_text_is_still_read() -> None:
    """A mail whose line 「はい」 answers, below which they wrote more: the choice answers."""
    asked = step(LISTENING, said("全部やめたい", distress=True)).conv
    turn = step(asked, said("はい\n\nもう準備はできています", choice="はい"))
    assert turn.action is Action.CRISIS and turn.conv.danger_answer == "yes"


@pytest.mark.parametrize(
    ("pending", "text"),
    [
        ("intake_age", "もう終わりにします。全部準備できた"),
        ("intake_prefecture", "もう終わり、全部準備はできてる"),
        ("intake_prefecture", "東京に住んでたけど今は違う"),
        ("intake_safe", "たぶん今夜で最後"),
    ],
)
def test_a_form_never_swallows_a_persons_words(pending: str, text: str) -> None:
    """Not an answer to the question: a message. The questions stop and the words are heard."""
    conv = Conv(state=State.LISTENING, consented=True, pending=pending, age_asked=True)  # (asked first)
    calm = step(conv, said(text))
    assert calm.conv.pending == "" and [r.key for r in calm.replies] == ["offer"]
    assert (calm.conv.age_band, calm.conv.prefecture, calm.conv.safe_now) == ("", "", "")
    distressed = step(conv, said(text, distress=True))
    assert [r.key for r in distressed.replies] == ["ask_danger"]
    serious = step(conv, said(text, Risk.CRISIS))
    assert [r.key for r in serious.replies] == ["crisis"]


@pytest.mark.parametrize(
    ("pending", "text", "field", "value"),
    [
        ("intake_age", "17", "age_band", "16-18"),
        ("intake_age", "17歳です", "age_band", "16-18"),
        ("intake_age", "高2", "age_band", "16-18"),
        ("intake_age", "大学3年", "age_band", "19-22"),
        ("intake_prefecture", "大阪", "prefecture", "大阪府"),
        ("intake_prefecture", "東京都です", "prefecture", "東京都"),
        ("intake_safe", "はい", "safe_now", "yes"),
        ("intake_safe", "わからない", "safe_now", "unsure"),
    ],
)
def test_plain_answers_are_answers(pending: str, text: str, field: str, value: str) -> None:
    turn = step(Conv(state=State.LISTENING, consented=True, pending=pending), said(text))
    assert getattr(turn.conv, field) == value
    assert turn.action is Action.FLOW


def test_not_safe_now_goes_to_the_queue_at_once() -> None:
    turn = step(Conv(state=State.LISTENING, consented=True, pending=INTAKE_SAFE), said("いいえ"))
    assert turn.conv.risk is Risk.HIGH and turn.conv.state == State.WAITING and turn.enqueue
    assert [r.key for r in turn.replies] == ["unsafe", *QUEUED]


def test_a_returning_person_at_high_is_queued_with_their_first_word() -> None:
    """The engine starts the conversation of someone back soon after one at high at that risk."""
    turn = step(Conv(risk=Risk.HIGH), said("こんにちは"))
    assert turn.action is Action.QUEUE and turn.conv.state == State.WAITING
    assert [r.key for r in turn.replies] == ["welcome", *QUEUED]
    crisis = step(Conv(risk=Risk.CRISIS), said("こんにちは"))
    assert crisis.action is Action.QUEUE and crisis.conv.risk is Risk.CRISIS, "the head of the queue"


def test_an_unanswered_direct_question_goes_to_a_counsellor_at_the_idle_time() -> None:
    asked = step(LISTENING, said("全部やめたい", distress=True)).conv
    turn = step(asked, Timeout())
    assert (turn.conv.state, turn.conv.danger_answer, turn.enqueue, turn.replies) == (
        State.WAITING,
        "none",
        True,
        (),
    )
    idle = step(LISTENING, Timeout())
    assert (idle.conv.state, idle.close, idle.replies) == (State.CLOSED, "idle", ())


def test_counsellor_actions() -> None:
    waiting = Conv(state=State.WAITING, consented=True, pending=ASK_DANGER)
    claimed = step(waiting, Claimed())
    assert claimed.conv.state == State.WITH_COUNSELLOR and claimed.conv.pending == ""
    assert [(r.key, r.sender) for r in claimed.replies] == [("with_counsellor", Sender.SYSTEM)]
    assert step(claimed.conv, Requeued()).conv.state == State.WAITING
    closed = step(claimed.conv, ClosedByCounsellor("listened"))
    assert (closed.conv.state, closed.conv.outcome, closed.close) == (State.CLOSED, "listened", "listened")
    assert [r.key for r in closed.replies] == ["closing"]


def test_docs_safety_md_is_up_to_date() -> None:
    """docs/safety.md is made from the code: `tsunagi safety-table > docs/safety.md` after a change."""
    doc = (ROOT / "docs" / "safety.md").read_text(encoding="utf-8")
    assert doc == render(get_content()), (
        "docs/safety.md is out of date: run `tsunagi safety-table > docs/safety.md`"
    )


def test_the_command_writes_docs_safety_md(capsys: pytest.CaptureFixture[str]) -> None:
    from bot.cli import main

    assert main(["safety-table"]) == 0
    assert capsys.readouterr().out == (ROOT / "docs" / "safety.md").read_text(encoding="utf-8")
