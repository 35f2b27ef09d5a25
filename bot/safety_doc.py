"""docs/safety.md, the conversation's safety table for a clinical reviewer, made from the code.

The table is ``bot.dialogue.SAFETY``; the second part runs the dialogue itself on one example conversation
in every state with every kind of message (each level of risk, a choice, free text, each keyword), so what
it shows is what the bot does; every reply is shown with its text from content/messages.yaml.
``tsunagi safety-table > docs/safety.md`` writes it again; a test fails while it is out of date.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from bot.content import Content
from bot.dialogue import (
    ASK_DANGER,
    INTAKE_AGE,
    SAFETY,
    SURVEY,
    Action,
    Conv,
    Dialogue,
    Level,
    Phase,
    Said,
    Turn,
)
from bot.hours import Hours
from bot.models import State
from triage import Category, Reason, Risk, TriageResult

NOW = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)  # a Wednesday noon in Japan; counsellors always on

# One conversation in each phase.
EXAMPLES: dict[Phase, Conv] = {
    Phase.NEW: Conv(),
    Phase.WELCOME: Conv(state=State.WELCOME),
    Phase.LISTENING: Conv(state=State.LISTENING, consented=True),
    Phase.INTAKE: Conv(state=State.LISTENING, consented=True, pending=INTAKE_AGE),
    Phase.ASKING: Conv(state=State.LISTENING, consented=True, pending=ASK_DANGER, danger_asked="low"),
    Phase.OFFERED: Conv(state=State.OFFERED, consented=True),
    Phase.WAITING: Conv(state=State.WAITING, consented=True),
    Phase.WITH_COUNSELLOR: Conv(state=State.WITH_COUNSELLOR, consented=True),
    Phase.CLOSED: Conv(state=State.CLOSED, consented=True, pending=SURVEY, outcome="information"),
}

PHASE_MEANING: dict[Phase, str] = {
    Phase.NEW: "the first message of a conversation",
    Phase.WELCOME: "the terms are shown; consent is awaited",
    Phase.LISTENING: "consent given; the bot listens for what is wrong",
    Phase.INTAKE: "an intake question (age band, prefecture, safe now) awaits its answer",
    Phase.ASKING: "the direct question about danger awaits its answer",
    Phase.OFFERED: "services and a counsellor were offered",
    Phase.WAITING: "in the queue for a counsellor",
    Phase.WITH_COUNSELLOR: "a counsellor has the conversation; the bot is silent",
    Phase.CLOSED: "closed; a message other than the survey's answer starts a new conversation",
}

LEVEL_MEANING: dict[Level, str] = {
    Level.CRISIS: "crisis in this message (the triage's reasons), or たすけて / 緊急",
    Level.HIGH: "the conversation is at high or above (this message, an earlier one, or a return soon "
    "after one)",
    Level.MEDIUM_DISTRESS: "the conversation is at medium, and the message shows distress",
    Level.MEDIUM: "the conversation is at medium",
    Level.DISTRESS: "the message shows distress, nothing at medium or above",
    Level.LOW: "nothing of the above",
}

ACTION_MEANING: dict[Action, str] = {
    Action.CRISIS: "the crisis reply (110 / 119 and the 24-hour lines that fit), the head of the queue, "
    "the supervisors on duty alerted (once); with a counsellor, the alert only",
    Action.QUEUE: "to the queue at once, no offer to accept first, with the 24-hour lines while waiting "
    "(already waiting: moved up, and the lines when the risk first reaches high)",
    Action.OFFER_AND_ASK: "the offer of services and a counsellor, then the direct question",
    Action.ASK: "the direct question: thinking of dying, of hurting oneself, or in danger now? "
    "はい / わからない: the crisis path; いいえ: on with the conversation",
    Action.OFFER: "the offer of a counsellor with the first reply, before any question: after consent, "
    "a counsellor offered and then the (optional) intake questions; before consent or instead of an "
    "intake answer, the services and a counsellor (offered or waiting already: what the state does)",
    Action.FLOW: "what the state does with a message (the tables below)",
    Action.SILENT: "nothing; the counsellor reads it in the console",
}


def _result(
    risk: Risk, categories: tuple[Category, ...] = (), *, rule: str = "", distress: bool = False
) -> TriageResult:
    reasons = (Reason(rule, "", (0, 0)),) if rule else ()
    return TriageResult(risk, categories, reasons, signals=("distress",) if distress else ())


@dataclass(frozen=True)
class Example:
    name: str
    said: Said


LOW = _result(Risk.LOW)
LEVEL_EXAMPLES: dict[Level, Said] = {
    Level.CRISIS: Said(
        "今から飛び降りる", _result(Risk.CRISIS, (Category.SUICIDE,), rule="suicide.intent_now")
    ),
    Level.HIGH: Said("夫に毎日殴られています", _result(Risk.HIGH, (Category.DV,), rule="dv.physical")),
    Level.MEDIUM_DISTRESS: Said(
        "毎日泣いてばかりで、もう限界です", _result(Risk.MEDIUM, rule="distress.general", distress=True)
    ),
    Level.MEDIUM: Said(
        "最近ちょっと学校に行きづらくて",
        _result(Risk.MEDIUM, (Category.SCHOOL_REFUSAL,), rule="school_refusal.absence"),
    ),
    Level.DISTRESS: Said("全部やめたい", _result(Risk.LOW, distress=True)),
    Level.LOW: Said("学校で友だちとうまくいかなくて悩んでいます", LOW),
}
FREE_TEXT = Said("ありがとう、読んでみます", LOW)
KEYWORDS = {
    name: Said(text, LOW)
    for name, text in (
        ("counsellor", "相談したい"),
        ("end", "終了"),
        ("erase", "削除"),
        ("crisis", "たすけて"),
    )
}
# The choices each phase shows (as buttons, quick replies or numbered lines).
CHOICES: dict[Phase, tuple[str, ...]] = {
    Phase.NEW: (),
    Phase.WELCOME: ("同意して話す", "同意しない"),
    Phase.LISTENING: (),
    Phase.INTAKE: ("16〜18歳", "答えない"),
    Phase.ASKING: ("はい", "いいえ", "わからない"),
    Phase.OFFERED: ("情報だけでよい",),
    Phase.WAITING: (),
    Phase.WITH_COUNSELLOR: (),
    Phase.CLOSED: ("よかった",),
}


def inputs(phase: Phase) -> list[Example]:
    """Every kind of message, for one phase: each level, its choices, free text, each keyword."""
    out = [Example(f"{level.value}: {said.text}", said) for level, said in LEVEL_EXAMPLES.items()]
    out += [Example(f"choice: {label}", Said(label, LOW)) for label in CHOICES[phase]]
    out.append(Example(f"free text: {FREE_TEXT.text}", FREE_TEXT))
    out += [Example(f"keyword ({name}): {said.text}", said) for name, said in KEYWORDS.items()]
    return out


def run(dialogue: Dialogue, conv: Conv, said: Said) -> tuple[Turn, bool]:
    """One message, as the engine would handle it: a closed conversation gives way to a new one.
    Returns the turn and whether a new conversation began."""
    turn = dialogue.step(conv, said, NOW)
    if turn.restart:
        return dialogue.step(Conv(), said, NOW), True
    return turn, False


def render(content: Content) -> str:
    dialogue = Dialogue(content, Hours.parse("mon-sun 00:00-24:00"))
    levels = list(Level)
    lines = [
        "# The conversation's safety table",
        "",
        "<!-- Generated from bot/dialogue.py and content/messages.yaml by `tsunagi safety-table > "
        "docs/safety.md`; a test fails while this file is out of date. Do not edit by hand. -->",
        "",
        "No triage reads every message right, so the conversation is the second safety net. Every message "
        "is read against the table below before anything else its state does: no form, button or offer "
        "stands between a person and help. An answer counts only when it answers the question asked "
        "(one of the choices, or text that plainly is one); anything else is a message, stored, triaged "
        "with its conversation and answered like any other. The same table runs on every channel (LINE "
        "quick replies, Telegram and web chat buttons, numbered lines in e-mail that a reply `1`, `はい` "
        "or a line of the reply answers).",
        "",
        "## How a message is read (levels)",
        "",
        "| level | meaning | example |",
        "|---|---|---|",
    ]
    lines += [f"| {lv.value} | {LEVEL_MEANING[lv]} | {LEVEL_EXAMPLES[lv].text} |" for lv in levels]
    lines += [
        "",
        "Distress is the triage's signal (content/triage/distress.yaml: exhaustion, hopelessness, being at "
        "the limit, wanting everything to stop, crying, fear). The direct question is asked at most once a "
        "conversation, unless the risk rises again; after that, distress reads as its risk alone.",
        "",
        "## What the bot does (actions)",
        "",
        "| action | what happens |",
        "|---|---|",
    ]
    lines += [f"| {a.value} | {ACTION_MEANING[a]} |" for a in Action]
    lines += [
        "",
        "## The table: state × level → action",
        "",
        "| state | " + " | ".join(lv.value for lv in levels) + " |",
        "|---|" + "---|" * len(levels),
    ]
    for phase in Phase:
        row = " | ".join(SAFETY[(phase, lv)].value for lv in levels)
        lines.append(f"| {phase.value} | {row} |")
    lines += ["", "States:", ""]
    lines += [f"- **{p.value}**: {PHASE_MEANING[p]}" for p in Phase]
    lines += [
        "",
        "## Every state, every kind of message",
        "",
        "What the dialogue does, run on one example conversation in each state (counsellors' hours open). "
        "Replies are named by their entry in content/messages.yaml (texts below). An action of — means the "
        "table was not consulted: the person's own word decided (a keyword, the survey's answer), after "
        "the crisis column, which always comes first.",
    ]
    for phase in Phase:
        lines += [
            "",
            f"### {phase.value}",
            "",
            "| message | action | state after | the bot says |",
            "|---|---|---|---|",
        ]
        for example in inputs(phase):
            turn, restarted = run(dialogue, EXAMPLES[phase], example.said)
            state = turn.conv.state.value + (" (a new conversation)" if restarted else "")
            if turn.conv.pending:
                state += f", awaiting {turn.conv.pending}"
            said = ", ".join(r.key for r in turn.replies) or "(nothing)"
            action = turn.action.value if turn.action else "—"
            lines.append(f"| {example.name} | {action} | {state} | {said} |")
    lines += [
        "",
        "## The replies",
        "",
        "As in content/messages.yaml; `{lines}` are the services that fit, at most two (in a crisis and "
        "while waiting, the 24-hour lines), `{referrals}` the services offered (at most two), `{position}` "
        "and `{wait}` the place in the queue, `{ack}` the acknowledgement of what they told (once, with the "
        "first reply to it), `{promise}` what can honestly be promised now: a counsellor on duty and free, "
        "all busy, nobody on duty, or out of hours (a line left empty is dropped).",
        "",
        "### The acknowledgements and the promises (formats)",
        "",
        "```text",
        *[
            f"{name}: {content.formats[name]}"
            for name in sorted(content.formats)
            if name.startswith(("ack_", "promise_"))
        ],
        "```",
    ]
    used = sorted(
        {
            r.key
            for phase in Phase
            for e in inputs(phase)
            for r in run(dialogue, EXAMPLES[phase], e.said)[0].replies
        }
    )
    for name in used:
        text = content.messages[name]
        lines += ["", f"### {name}", "", "```text", text.text, "```"]
        if text.quick:
            lines.append("Choices: " + " / ".join(text.quick))
    return "\n".join(lines) + "\n"
