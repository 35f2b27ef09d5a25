"""The conversation engine as tables: what the person writes, the state it leads to, what the bot says.

Each reply is named by its entry in content/messages.yaml, so the tables hold when the wording is
improved. Every state, every keyword, crisis from every state, and out of hours."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select
from sqlmodel import col

from bot.models import Alert, Contact, Counsellor, Role, utcnow
from bot.service import Service
from bot.types import Kind
from tests.engine_helpers import Chat, reply_keys, running

JST = ZoneInfo("Asia/Tokyo")

# (message, state after it, replies in order)
Step = tuple[str, str, list[str]]

WELCOME: list[Step] = [("こんにちは", "welcome", ["welcome"])]
LISTENING: list[Step] = WELCOME + [("同意して話す", "listening", ["listening"])]
INTAKE: list[Step] = LISTENING + [
    ("部活の先輩からのことで悩んでいて", "listening", ["intake_intro", "intake_age"]),
]
OFFERED: list[Step] = INTAKE + [
    ("16〜18歳", "listening", ["intake_prefecture"]),
    ("大阪", "listening", ["intake_safe"]),
    ("はい", "offered", ["offer"]),
]
WAITING: list[Step] = OFFERED + [("相談員と話したい", "waiting", ["waiting"])]

DIALOGUES: dict[str, list[Step]] = {
    "consent by button, then the whole intake, information only": OFFERED
    + [("情報だけでよい", "closed", ["closing"]), ("よかった", "closed", ["survey_thanks"])],
    "consent by a typed reply": WELCOME + [("わかりました", "listening", ["listening"])],
    "no consent yet: asked again, nothing lost": WELCOME
    + [
        ("彼氏のことで相談があって、どうしたらいいかわからない", "welcome", ["consent_needed"]),
        ("同意", "listening", ["listening_after_consent_with_story", "intake_age"]),
    ],
    "a greeting before consent is not a story": WELCOME
    + [("よろしく", "welcome", ["consent_needed"]), ("同意", "listening", ["listening"])],
    "declined": WELCOME + [("同意しない", "closed", ["declined"])],
    "intake answers skipped": INTAKE
    + [
        ("答えない", "listening", ["intake_prefecture"]),
        ("答えない", "listening", ["intake_safe"]),
        ("わからない", "offered", ["offer"]),
    ],
    # At high no offer waits to be accepted: the queue at once, with the 24-hour lines.
    "not safe now: raised to high, a safety note, then the queue": INTAKE
    + [
        ("15歳", "listening", ["intake_prefecture"]),
        ("答えない", "listening", ["intake_safe"]),
        ("いいえ", "waiting", ["unsafe", "waiting", "waiting_safety"]),
        ("相談したい", "waiting", ["waiting_update"]),
    ],
    "high risk skips the questionnaire and the offer": LISTENING
    + [("夫に毎日殴られていて、家に帰るのがこわいです", "waiting", ["waiting", "waiting_safety", "ask_age"])],
    "medium: a counsellor offered with the first reply, before any question": LISTENING
    + [
        ("最近ちょっと学校に行きづらくて", "listening", ["offer_counsellor", "intake_age"]),
        ("相談員と話したい", "waiting", ["waiting"]),
    ],
    "medium before consent: the services and a counsellor at once": WELCOME
    + [("最近ちょっと学校に行きづらくて", "offered", ["offer"]), ("情報だけでよい", "closed", ["closing"])],
    "free text while offered": OFFERED + [("ありがとう、読んでみます", "offered", ["offer_again"])],
    "waiting, then writing while waiting": WAITING
    + [("まだですか", "waiting", ["waiting_update"]), ("相談したい", "waiting", ["waiting_update"])],
    "相談したい from the very first message: terms first, then the queue": [
        ("相談したい", "waiting", ["welcome", "waiting"])
    ],
    "相談したい during the welcome": WELCOME + [("相談したい", "waiting", ["waiting"])],
    "相談したい while listening": LISTENING + [("相談したい", "waiting", ["waiting"])],
    "終了 while waiting leaves the queue": WAITING
    + [("終了", "closed", ["closing"]), ("答えない", "closed", ["survey_thanks"])],
    "終了 while listening": LISTENING + [("終了", "closed", ["closing"])],
    "a message after closure starts anew": LISTENING
    + [("終了", "closed", ["closing"]), ("また話したい", "welcome", ["welcome"])],
    "削除 asks first; やめる keeps everything": LISTENING
    + [("削除", "listening", ["erase_confirm"]), ("やめる", "listening", ["erase_cancelled"])],
    "削除 then 削除する erases": WAITING
    + [("削除", "waiting", ["erase_confirm"]), ("削除する", "closed", ["erase_done"])],
    "削除 then something else carries on": LISTENING
    + [
        ("削除", "listening", ["erase_confirm"]),
        ("部活の先輩とうまくいかなくて悩んでいて", "listening", ["intake_intro", "intake_age"]),
    ],
    # Crisis from every state: at once, 110/119 and 24-hour lines, and the queue.
    "crisis as the first message": [("もう死にたい。今から飛び降りる", "waiting", ["crisis", "ask_age"])],
    "crisis in the welcome": WELCOME + [("薬を全部飲んだ", "waiting", ["crisis", "ask_age"])],
    "crisis while listening": LISTENING
    + [("首を吊ろうと思ってロープを買った", "waiting", ["crisis", "ask_age"])],
    "crisis during the intake": INTAKE + [("今から死にます", "waiting", ["crisis"])],
    "crisis while offered": OFFERED + [("リスカが止まらなくて血がとまらない", "waiting", ["crisis"])],
    "crisis while waiting": WAITING + [("もう無理、遺書を書いた", "waiting", ["crisis"])],
    "crisis again while waiting is short": [
        ("今から飛び降りる", "waiting", ["crisis", "ask_age"]),
        ("もう死ぬ", "waiting", ["crisis_repeat"]),
    ],
    "たすけて in any state": LISTENING + [("たすけて", "waiting", ["crisis", "ask_age"])],
    "緊急 in the welcome": WELCOME + [("緊急", "waiting", ["crisis", "ask_age"])],
    "crisis after closure starts a new conversation on the crisis path": LISTENING
    + [("終了", "closed", ["closing"]), ("たすけて", "waiting", ["crisis", "ask_age"])],
}


@pytest.mark.parametrize("name", list(DIALOGUES))
async def test_dialogue(name: str, tmp_path: Path) -> None:
    async with running(tmp_path) as svc:
        chat = Chat(svc)
        said: list[str] = []
        for i, (text, state, replies) in enumerate(DIALOGUES[name]):
            sent = await chat.say(text)
            got = reply_keys([m.text for m in sent])
            assert got == replies, f"step {i} ({text!r}): replies {got}, expected {replies}"
            assert await chat.state() == state, f"step {i} ({text!r})"
            # (A status update answers each message while waiting: the same words again are its point.)
            said += [m.text for m, key in zip(sent, got, strict=True) if key != "waiting_update" or not said]
        check_tone(said)


def sentences(text: str) -> list[str]:
    """The sentences of a text, without its lists of services (a 24-hour number may rightly come again)."""
    prose = "\n".join(line for line in text.splitlines() if not line.startswith(("・", "\u3000")))
    return [x for x in re.split(r"(?<=[。？！])|\n", prose) if x.strip()]


def check_tone(texts: list[str]) -> None:
    """What can be checked of how the replies read (content/messages.yaml's rules): no sentence said again
    in the next message, at most two services in one message, hours without brackets inside brackets."""
    for before, after in zip(texts, texts[1:], strict=False):
        again = set(sentences(before)) & set(sentences(after))
        assert not again, f"said twice in a row: {again}"
    for text in texts:
        services = [line for line in text.splitlines() if line.startswith("・")]
        assert len(services) <= 2, f"more than two services: {services}"
        assert not re.search(r"（[^）]*（", text), f"brackets inside brackets: {text}"


OUT_OF_HOURS = {"hours": "mon 00:00-00:01", "timezone": "Asia/Tokyo"}  # closed nearly always

OUT_OF_HOURS_DIALOGUES: dict[str, list[Step]] = {
    "the welcome says so and lists 24-hour lines": [("こんばんは", "welcome", ["welcome", "out_of_hours"])],
    "the conversation still queues": [
        ("こんばんは", "welcome", ["welcome", "out_of_hours"]),
        ("相談したい", "waiting", ["waiting", "out_of_hours"]),
    ],
    "a crisis always queues, and says when counsellors are back": [
        ("今から飛び降りる", "waiting", ["crisis", "back_later", "ask_age"])
    ],
}


@pytest.mark.parametrize("name", list(OUT_OF_HOURS_DIALOGUES))
async def test_out_of_hours(name: str, tmp_path: Path) -> None:
    async with running(tmp_path, **OUT_OF_HOURS) as svc:
        chat = Chat(svc)
        for i, (text, state, replies) in enumerate(OUT_OF_HOURS_DIALOGUES[name]):
            got = await chat.keys(text)
            assert got == replies, f"step {i} ({text!r}): replies {got}, expected {replies}"
            assert await chat.state() == state
        assert len(await svc.queue.entries()) == 1 or state != "waiting"


@pytest.mark.parametrize(
    ("local_time", "replies"),
    [
        (datetime(2026, 11, 25, 23, 0, tzinfo=JST), ["welcome", "out_of_hours"]),  # Wednesday night
        (datetime(2026, 11, 25, 12, 0, tzinfo=JST), ["welcome"]),  # Wednesday noon: open
        (datetime(2026, 11, 28, 12, 0, tzinfo=JST), ["welcome", "out_of_hours"]),  # Saturday
    ],
)
async def test_hours_follow_the_clock_in_japan(
    tmp_path: Path, local_time: datetime, replies: list[str]
) -> None:
    async with running(tmp_path, hours="mon-fri 10:00-22:00") as svc:
        svc.engine.clock = lambda: local_time.astimezone(UTC)
        sent = await Chat(svc).say("こんばんは")
        assert reply_keys([m.text for m in sent]) == replies
        assert "月〜金 10:00〜22:00" in sent[0].text
        if len(sent) > 1:
            back = "11月26日(木) 10:00" if local_time.day == 25 else "11月30日(月) 10:00"
            assert back in sent[1].text
            assert "よりそいホットライン" in sent[1].text and "いま受付中" in sent[1].text


async def wait_in_queue(svc: Service, user: str, risk_text: str = "") -> Chat:
    chat = Chat(svc, user=user)
    for text in ["こんにちは", "同意", *([risk_text] if risk_text else []), "相談したい"]:
        await chat.say(text)
    assert await chat.state() == "waiting"
    return chat


async def test_crisis_goes_to_the_head_of_the_queue(tmp_path: Path) -> None:
    async with running(tmp_path) as svc:
        first = await wait_in_queue(svc, "u-1")
        second = await wait_in_queue(svc, "u-2")
        crisis = Chat(svc, user="u-3")
        sent = await crisis.say("もう死にたい。今から飛び降りる")
        assert "110" in sent[0].text and "119" in sent[0].text
        await asyncio.sleep(0)  # the queue is told after the commit
        now = utcnow()
        assert await svc.queue.position(crisis.conversation_id, now) == 1
        assert await svc.queue.position(first.conversation_id, now) == 2
        assert await svc.queue.position(second.conversation_id, now) == 3


async def test_a_rising_risk_while_waiting_moves_up_at_once(tmp_path: Path) -> None:
    async with running(tmp_path) as svc:
        first = await wait_in_queue(svc, "u-1")
        second = await wait_in_queue(svc, "u-2")
        await asyncio.sleep(0)
        assert await svc.queue.position(second.conversation_id, utcnow()) == 2
        keys = await second.keys("実は彼氏に毎日殴られていて、家に帰るのがこわい")
        assert keys == ["waiting_update", "waiting_safety", "ask_age"]
        await asyncio.sleep(0)
        assert await svc.queue.position(second.conversation_id, utcnow()) == 1
        assert await svc.queue.position(first.conversation_id, utcnow()) == 2


async def test_on_duty_supervisors_are_alerted_of_a_crisis(tmp_path: Path) -> None:
    async with running(tmp_path) as svc:
        async with svc.db.session() as s, s.begin():
            s.add_all(
                [
                    Counsellor(username="sup-on", role=Role.SUPERVISOR, on_duty=True),
                    Counsellor(username="sup-off", role=Role.SUPERVISOR, on_duty=False),
                    Counsellor(username="c-on", role=Role.COUNSELLOR, on_duty=True),
                ]
            )
        async with svc.events.subscribe() as events:
            chat = Chat(svc)
            await chat.say("薬を全部飲んだ")
            kinds = [events.get_nowait().kind for _ in range(events.qsize())]
        assert "alert" in kinds
        async with svc.db.session() as s:
            alerted = (
                await s.scalars(
                    select(Counsellor.username).join(Alert, col(Alert.counsellor_id) == col(Counsellor.id))
                )
            ).all()
        assert alerted == ["sup-on"]


async def alerted(svc: Service, *, unseen: bool = True) -> list[str]:
    async with svc.db.session() as s:
        q = select(Counsellor.username).join(Alert, col(Alert.counsellor_id) == col(Counsellor.id))
        if unseen:
            q = q.where(col(Alert.seen_at).is_(None))
        return sorted((await s.scalars(q)).all())


@pytest.mark.parametrize(
    ("on_duty", "expected"),
    [
        ({"sup-on", "c-on"}, ["sup-on"]),  # the supervisors on duty
        ({"c-on", "c-two"}, ["c-on", "c-two"]),  # no supervisor on duty: the counsellors on duty
        (set(), ["admin", "sup-on"]),  # nobody on duty: every supervisor, who sees it on logging in
    ],
)
async def test_a_crisis_alert_reaches_someone_on_duty_and_a_claim_answers_it(
    tmp_path: Path, on_duty: set[str], expected: list[str]
) -> None:
    async with running(tmp_path) as svc:
        async with svc.db.session() as s, s.begin():
            s.add_all(
                [
                    Counsellor(username=name, role=role, on_duty=name in on_duty)
                    for name, role in [
                        ("sup-on", Role.SUPERVISOR),
                        ("admin", Role.ADMIN),
                        ("c-on", Role.COUNSELLOR),
                        ("c-two", Role.COUNSELLOR),
                    ]
                ]
            )
            taker = Counsellor(username="taker", role=Role.COUNSELLOR, on_duty=False, active=True)
            s.add(taker)
        chat = Chat(svc)
        await chat.say("薬を全部飲んだ")
        assert await alerted(svc) == expected
        assert taker.id is not None and await svc.engine.assign(chat.conversation_id, taker.id)
        assert await alerted(svc) == [], "taken: the alert is answered for everyone it went to"
        assert await alerted(svc, unseen=False) == expected


async def test_the_bot_is_silent_with_a_counsellor(tmp_path: Path) -> None:
    async with running(tmp_path) as svc:
        chat = await wait_in_queue(svc, "u-1")
        async with svc.db.session() as s, s.begin():
            counsellor = Counsellor(username="c1", role=Role.COUNSELLOR, on_duty=True)
            s.add(counsellor)
        assert counsellor.id is not None
        assert await svc.engine.assign(chat.conversation_id, counsellor.id)
        assert not await svc.engine.assign(chat.conversation_id, counsellor.id), "taken only once"
        await svc.outbox.send_due()
        assert reply_keys([svc.channels["loopback"].to("u-1")[-1].text]) == ["with_counsellor"]
        assert await chat.state() == "with_counsellor"
        await asyncio.sleep(0)
        assert await svc.queue.position(chat.conversation_id, utcnow()) is None
        assert await chat.say("聞いてもらえますか") == []
        assert await chat.say("相談したい") == []
        assert await chat.say("もう死にたい。今から飛び降りる") == [], "the counsellor is there"
        assert (await chat.conversation()).risk == "crisis"


async def test_intake_answers_are_kept_as_bands_only(tmp_path: Path) -> None:
    async with running(tmp_path) as svc:
        chat = Chat(svc)
        for text in ["こんにちは", "同意", "部活の先輩からのことで悩んでいて", "高2", "神奈川", "はい"]:
            await chat.say(text)
        conv = await chat.conversation()
        assert (conv.age_band, conv.prefecture, conv.safe_now, conv.state) == (
            "16-18",
            "神奈川県",
            "yes",
            "offered",
        )


async def test_idle_conversations_close_quietly_but_waiting_ones_keep_their_place(tmp_path: Path) -> None:
    async with running(tmp_path) as svc:
        idle = Chat(svc, user="u-idle")
        await idle.say("こんにちは")
        waiting = await wait_in_queue(svc, "u-waiting")
        sent_before = len(svc.channels["loopback"].sent)
        svc.engine.clock = lambda: utcnow() + timedelta(hours=25)
        assert await svc.engine.close_idle(timedelta(hours=24)) == 1
        await svc.outbox.send_due()
        assert len(svc.channels["loopback"].sent) == sent_before, "nothing is sent to someone who left"
        conv = await idle.conversation()
        assert (conv.state, conv.outcome, conv.pending) == ("closed", "idle", "")
        assert await waiting.state() == "waiting"


async def test_a_crisis_with_a_counsellor_alerts_supervisors_once_and_the_bot_stays_silent(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as svc:
        async with svc.db.session() as s, s.begin():
            sup = Counsellor(username="sup", role=Role.SUPERVISOR, on_duty=True)
            counsellor = Counsellor(username="c1", role=Role.COUNSELLOR, on_duty=True)
            s.add_all([sup, counsellor])
        chat = await wait_in_queue(svc, "u-1")
        assert counsellor.id is not None and await svc.engine.assign(chat.conversation_id, counsellor.id)
        await svc.outbox.send_due()  # the notice that a counsellor is there
        assert await chat.say("もう死にたい。今から飛び降りる") == []
        assert await chat.say("薬を全部飲んだ") == []
        async with svc.db.session() as s:
            alerts = (await s.scalars(select(Alert))).all()
        assert [(a.counsellor_id, a.conversation_id) for a in alerts] == [(sup.id, chat.conversation_id)]


async def test_a_sticker_alone_queues_nobody_unless_the_risk_is_medium(tmp_path: Path) -> None:
    """Media bypasses text triage: the person is told so (without a promise that someone will look), and
    it alone puts nobody in the queue at low risk; at medium risk or above a person should look."""
    async with running(tmp_path) as svc:
        first = Chat(svc, user="first-contact")
        assert await first.keys("", kind=Kind.MEDIA) == ["welcome"], "a first contact gets the terms"
        chat = Chat(svc)
        await chat.say("こんにちは")
        assert await chat.keys("", kind=Kind.MEDIA) == ["media_unreadable"]
        assert await chat.state() == "welcome", "no queue before consent"
        await chat.say("同意")
        assert await chat.keys("", kind=Kind.MEDIA) == ["media_unreadable"]
        assert await chat.state() == "listening", "a sticker alone at low risk queues nobody"
        await chat.say("最近眠れなくてつらい")
        assert (await chat.conversation()).risk == "medium"
        assert await chat.keys("", kind=Kind.MEDIA) == ["media_unreadable", "waiting"]
        assert await chat.state() == "waiting"


# -- the safety net (bot/dialogue.py): the tables of tests/test_dialogue_table.py, with the real triage ------

SAFETY_NET: dict[str, list[Step]] = {
    "the issue's case: a message the triage misses, then one that is no prefecture": INTAKE
    + [
        ("16〜18歳", "listening", ["intake_prefecture"]),
        ("もう終わり。全部準備できた", "offered", ["offer"]),
    ],
    "distress gets the direct question at once; はい takes the crisis path": LISTENING
    # (今夜、全部終わらせる was the example: the triage reads it as a crisis now, "tonight" a sign.)
    + [("もう全部終わらせたい", "listening", ["ask_danger"]), ("はい", "waiting", ["crisis", "ask_age"])],
    "わからない takes the crisis path too": LISTENING
    + [
        ("何もかも終わらせたい", "listening", ["ask_danger"]),
        ("わからない", "waiting", ["crisis", "ask_age"]),
    ],
    "いいえ goes on, and the question is not asked again": LISTENING
    + [
        ("何もかも終わらせたい", "listening", ["ask_danger"]),
        ("いいえ", "offered", ["danger_no", "offer"]),
        ("全部やめたい", "offered", ["offer_again"]),
    ],
    "anything else in reply is a message": LISTENING
    + [
        ("何もかも終わらせたい", "listening", ["ask_danger"]),
        ("消えたいって思うことはある", "waiting", ["waiting", "waiting_safety", "ask_age"]),
    ],
    "exhaustion and hopelessness during the intake: the question, not the form": INTAKE
    + [("もう何もかも疲れた。どうでもいい", "offered", ["offer", "ask_danger"])],
    "distress before consent: asked at once, then the terms again": WELCOME
    + [
        ("何もかも終わらせたい", "welcome", ["ask_danger"]),
        ("いいえ", "welcome", ["danger_no", "consent_needed"]),
        ("同意", "offered", ["listening_after_consent_with_story", "offer"]),
    ],
    "distress while waiting": WAITING
    + [("何もかも終わらせたい", "waiting", ["ask_danger"]), ("はい", "waiting", ["crisis"])],
}


@pytest.mark.parametrize("name", list(SAFETY_NET))
async def test_safety_net(name: str, tmp_path: Path) -> None:
    async with running(tmp_path) as svc:
        chat = Chat(svc)
        for i, (text, state, replies) in enumerate(SAFETY_NET[name]):
            got = await chat.keys(text)
            assert got == replies, f"step {i} ({text!r}): replies {got}, expected {replies}"
            assert await chat.state() == state, f"step {i} ({text!r})"


async def test_the_remembered_risk_is_encrypted_and_erasing_forgets_it(tmp_path: Path) -> None:
    async with running(tmp_path) as svc:
        chat = Chat(svc)
        await chat.say("もう死にたい。今から飛び降りる")
        async with svc.db.session() as s:
            contact = await s.scalar(select(Contact))
        assert contact is not None and contact.risk_enc
        assert "crisis" not in contact.risk_enc and chat.conversation_id not in contact.risk_enc
        memory = json.loads(svc.crypto.decrypt(contact.risk_enc))
        assert (memory["risk"], memory["conversation"]) == ("crisis", chat.conversation_id)
        await chat.say("削除")
        await chat.say("削除する")
        async with svc.db.session() as s:
            contact = await s.scalar(select(Contact))
        assert contact is not None and contact.risk_enc == ""


async def test_an_unanswered_direct_question_goes_to_a_counsellor_instead_of_closing(tmp_path: Path) -> None:
    async with running(tmp_path) as svc:
        asked = Chat(svc, user="u-asked")
        for text in ["こんにちは", "同意", "何もかも終わらせたい"]:
            await asked.say(text)
        quiet = Chat(svc, user="u-quiet")
        await quiet.say("こんにちは")
        sent_before = len(svc.channels["loopback"].sent)
        svc.engine.clock = lambda: utcnow() + timedelta(hours=25)
        assert await svc.engine.close_idle(timedelta(hours=24)) == 2
        await svc.outbox.send_due()
        assert len(svc.channels["loopback"].sent) == sent_before, "nothing is sent out of the blue"
        conv = await asked.conversation()
        assert (conv.state, conv.danger_answer) == ("waiting", "none")
        await asyncio.sleep(0)
        assert await svc.queue.position(asked.conversation_id, utcnow()) == 1
        assert await quiet.state() == "closed"


# -- how the bot speaks (issue 14) --------------------------------------------------------------------------


async def test_the_first_reply_receives_what_was_told_before_it_informs(tmp_path: Path) -> None:
    async with running(tmp_path) as svc:
        chat = Chat(svc)
        for text in ("こんにちは", "同意"):
            await chat.say(text)
        sent = await chat.say("彼氏に毎日殴られていて、家に帰るのがこわいです")
        first = sent[0].text
        assert first.startswith("つらいことを話してくれて、ありがとう。それは、あなたのせいではありません。")
        assert first.index("あなたのせいではありません") < first.index(
            "番目"
        )  # received first, then informed
        assert not any("あなたのせいではありません" in m.text for m in sent[1:]), "said once"
        check_tone([m.text for m in sent])


async def test_a_medium_story_is_acknowledged_once_across_the_questions(tmp_path: Path) -> None:
    async with running(tmp_path) as svc:
        chat = Chat(svc)
        texts: list[str] = []
        for text in ("こんにちは", "同意", "最近ちょっと学校に行きづらくて", "15歳", "さいたま", "はい"):
            texts += [m.text for m in await chat.say(text)]
        assert sum("話してくれてありがとう" in t for t in texts) == 1
        check_tone(texts)
        conv = await chat.conversation()
        assert (conv.age_band, conv.prefecture, conv.state) == ("13-15", "埼玉県", "offered")
        offer = texts[-1]
        assert "24時間子供SOSダイヤル" in offer  # a young people's line for a 15-year-old


@pytest.mark.parametrize(
    ("answer", "keys", "band", "expected_line"),
    [
        ("16〜18歳", ["age_young"], "16-18", "24時間子供SOSダイヤル"),
        ("17歳です", ["age_young"], "16-18", "24時間子供SOSダイヤル"),
        ("30歳以上", ["age_thanks"], "30+", ""),
        ("答えない", ["age_thanks"], "", ""),
    ],
)
async def test_high_risk_asks_the_age_band_once_and_young_people_get_their_lines(
    tmp_path: Path, answer: str, keys: list[str], band: str, expected_line: str
) -> None:
    async with running(tmp_path) as svc:
        chat = Chat(svc)
        for text in ("こんにちは", "同意"):
            await chat.say(text)
        sent = await chat.say("彼氏に毎日殴られていて、家に帰るのがこわいです")
        assert reply_keys([m.text for m in sent]) == ["waiting", "waiting_safety", "ask_age"]
        assert sent[-1].quick_replies[-1] == "答えない"  # gently: with buttons, and a way not to answer
        reply = await chat.say(answer)
        assert reply_keys([m.text for m in reply]) == keys
        conv = await chat.conversation()
        assert (conv.age_band, conv.state) == (band, "waiting")
        if expected_line:
            assert expected_line in reply[0].text and "DV相談プラス" in reply[0].text
        # Asked once: what they write next is a message like any other.
        assert reply_keys([m.text for m in await chat.say("こわい")]) == ["waiting_update"]


@pytest.mark.parametrize(
    ("on_duty", "held", "promise"),
    [
        (True, 0, "相談員にすぐつなぎます"),
        (True, 2, "相談員はいま全員ほかの相談に対応していますが"),
        (False, 0, "いまは、すぐにつなげる相談員がいません"),
    ],
)
async def test_a_crisis_is_promised_only_what_will_happen(
    tmp_path: Path, on_duty: bool, held: int, promise: str
) -> None:
    async with running(tmp_path) as svc:
        async with svc.db.session() as s, s.begin():
            c = Counsellor(username="c1", role=Role.COUNSELLOR, on_duty=on_duty)
            s.add(c)
        assert c.id is not None
        for i in range(held):
            other = await wait_in_queue(svc, f"u-held-{i}")
            assert await svc.engine.assign(other.conversation_id, c.id)
        sent = await Chat(svc, user="u-crisis").say("もう死にたい。今から飛び降りる")
        crisis = sent[0].text
        assert promise in crisis
        others = {
            "相談員にすぐつなぎます",
            "相談員はいま全員ほかの相談に対応していますが",
            "すぐにつなげる相談員がいません",
        }
        assert not [p for p in others if p in crisis and p not in promise]
        waiting = await Chat(svc, user="u-wait").say("相談したい")
        if on_duty and not held:
            assert "目安は" in waiting[-1].text
        elif not on_duty:
            assert "いつつながるかお約束できません" in waiting[-1].text and "目安は" not in waiting[-1].text
