"""The coverage table: every situation of the coverage map, each in several voices.

docs/coverage.md lists the forms that law and clinical practice recognise for
each category (the six types of power harassment, the four types of child abuse, the acts
of the stalking law, ...), the steps of the Columbia suicide screen and the signs of danger
from another person. tests/data/coverage_cases.jsonl holds cases written from each form's
definition (not from a labelled set), one object a line:

    {"id": "cov-<category>-<form>-<n>", "form": "<category>-<form>", "voice": ...,
     "text": ..., "risk": ..., "categories": [...]}

Voices: a teenager on LINE (teen_line), an adult by mail (adult_mail), someone writing about
another person (third_party), regional speech (regional), typing without kanji (no_kanji).
The "guard" forms are harmless words that look alarming (死ぬほど, 殺す気か, a quoted insult,
negation, the past, homophones): they must stay low, or at the harm they really describe.

What is checked for each case:
- the risk is exact. A case may carry "higher_ok" with the reason why the issue's safety
  rule (between a false alarm and a missed crisis, choose the false alarm) accepts one level
  more for it: then the risk is the expected one or one level higher, never lower and never
  two levels higher;
- every expected category is present (a message may have others as well);
- a case may carry "pending" with the reason it cannot pass yet (spellings the engine does
  not read until the spelling work of the same issue lands): it runs, and is expected to
  fail, without failing the suite.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

import pytest

from tests.helpers import DATA, load_jsonl
from triage import Category, Risk, triage

CASES = load_jsonl(DATA / "coverage_cases.jsonl")
RANK = {r.value: r.rank for r in Risk}
VOICES = {"teen_line", "adult_mail", "third_party", "regional", "no_kanji"}

# Every form of the coverage map, as <category>-<form>, in the map's order.
FORMS = [
    # suicide and self-harm: the steps of the Columbia screen, and the time of each
    "suicide-wish",  # 1. wish to be dead, to disappear, not to wake
    "suicide-active",  # 2. active thoughts of killing oneself, no method
    "suicide-method",  # 3. thoughts with a method, its places and objects, no time
    "suicide-method_time",  # 3 with a time within hours: crisis without the word 死
    "suicide-intent",  # 4. decided, about to act
    "suicide-plan",  # 5. when, where, how
    "suicide-preparation",  # 6. a note, belongings given away, pills saved, means bought
    "suicide-attempt_now",  # 6. an attempt begun, interrupted or just done
    "suicide-attempt_recent",  # 6. an attempt within the last months: high
    "suicide-attempt_past",  # 6. an attempt years ago: medium, or low when over
    "suicide-place_reached",  # 6. the place of a method reached
    "suicide-goodbye",  # a goodbye
    "suicide-self_harm",  # self-harm, repeated or recent
    "suicide-self_harm_medical",  # self-harm that needs medical care
    "suicide-overdose_now",  # an overdose just taken
    "suicide-otc",  # over-the-counter medicines: generic names, brands, slang
    "suicide-third_party",  # someone else about to do any of this
    "suicide-past",  # ideation in the past
    # harmless words that look alarming
    "guard-idiom",  # 死ぬほど, 死ぬかと思った
    "guard-joke",  # 殺す気か
    "guard-quoted",  # 「死ね」と言われた: the insult, not ideation
    "guard-negation",  # 死にたくない
    "guard-past",  # ideation or self-harm long over
    "guard-homophone",  # a platform, a rooftop, a bridge, a pill in everyday life
    "guard-medicine",  # an ordinary dose of an ordinary medicine
    # danger from another person (crisis when now)
    "danger-weapon",  # a weapon shown or used
    "danger-intruder",  # someone in the home or trying to get in
    "danger-confinement",  # locked in, held, unable to leave
    "danger-taken",  # being taken somewhere against one's will
    "danger-threat_time",  # a threat to kill with a time or a means
    "danger-strangulation",  # high at least; crisis when recent
    "danger-pregnancy",  # violence during pregnancy
    "danger-child_tonight",  # a child afraid of what will happen at home tonight
    "danger-heard_now",  # violence heard now next door or upstairs: screams, things breaking
    "guard-danger",  # a knife in the kitchen, a bat at practice, 殺す気ですか
    # partner violence, as the law and public guidance list it (dating violence counts the same)
    "dv-physical",
    "dv-psychological",  # insults, threats, ignoring, breaking things, blaming
    "dv-economic",  # no living money, wages or cards taken, work forbidden, debts in her name
    "dv-sexual",  # forced sex, contraception refused, abortion forced
    "dv-isolation",  # cut off from family and friends, every contact checked
    "dv-digital",  # the phone read, location apps, photos or live location demanded
    "dv-children",  # using the children
    "dv-dating",  # デートDV, whatever the sex of the partner or the writer
    # child abuse: the four legal types; the writer may be the child or someone who sees it
    "child_abuse-physical",
    "child_abuse-sexual",  # including a step-parent, a mother's partner, a grandparent; photographing
    "child_abuse-neglect",  # no food, no bath, no care, left alone, utilities cut, no doctor
    "child_abuse-psychological",  # insults, threats, treated unlike siblings, witnessing violence
    # bullying: the forms of the national school survey
    "bullying-teasing",  # teasing, insults and threats
    "bullying-exclusion",  # left out or ignored by a group
    "bullying-hitting",  # hit or kicked, "as a game" or hard
    "bullying-extortion",  # money or goods demanded
    "bullying-belongings",  # hidden, stolen, broken or thrown away
    "bullying-humiliation",  # made to do embarrassing, dangerous or humiliating things
    "bullying-online",  # group chats, photos passed round, posts
    "bullying-serious",  # harm to life, body or property
    # power harassment: the six types of the national guideline
    "power_harassment-physical",
    "power_harassment-mental",  # insults, public humiliation, threats
    "power_harassment-isolation",  # cut off from colleagues
    "power_harassment-excessive",  # impossible or needless work, long hours
    "power_harassment-too_little",  # no work, trivial tasks, shifts or pay cut as punishment
    "power_harassment-private",  # intrusion into private life
    # sexual harassment: quid pro quo and hostile environment, by anyone at work
    "sexual_harassment-quid_pro_quo",
    "sexual_harassment-remarks",  # sexual questions, remarks, comments on the body
    "sexual_harassment-touching",
    "sexual_harassment-images",
    "sexual_harassment-rumours",
    # maternity and parental harassment
    "maternity_harassment-leave",  # parental or care leave
    "maternity_harassment-short_hours",  # short hours and childcare rights
    "maternity_harassment-pregnancy",  # the state of pregnancy: remarks, pressure, dismissal
    # academic harassment
    "academic_harassment-research_obstructed",
    "academic_harassment-results_taken",  # ideas or results taken, authorship refused
    "academic_harassment-supervision_refused",
    "academic_harassment-graduation_threatened",  # graduation, a degree, grades or placements
    "academic_harassment-errands",  # forced social events or private errands
    "academic_harassment-career_obstructed",
    "academic_harassment-personal_attack",
    # job-hunting harassment (オワハラ, 就活ハラスメント)
    "job_hunting-end_pressure",
    "job_hunting-acceptance",  # pressed to sign an acceptance
    "job_hunting-decline_in_front",  # made to decline other offers in front of the recruiter
    "job_hunting-deadline",  # deadlines that make refusal impossible
    "job_hunting-offer_withdrawn",  # an offer withdrawn as a threat
    "job_hunting-sexual",  # by interviewers, recruiters, alumni, internship staff, online
    # stalking: the acts of the Stalker Control Law
    "stalking-following",
    "stalking-lying_in_wait",
    "stalking-watching",  # いつも見てるよ
    "stalking-turning_up",  # at home, work or school
    "stalking-demand_meeting",  # demanding meetings or a relationship
    "stalking-violent_words",
    "stalking-repeated_contact",  # silent or repeated calls, mail and messages after refusal
    "stalking-filth",
    "stalking-defamation",
    "stalking-sexual_humiliation",
    "stalking-location",  # location taken without consent, a GPS or a tracker
    # exploitation
    "exploitation-jk_business",  # walks, "reflexology", photo sessions with minors
    "exploitation-av_coercion",  # adult video or nude filming, penalties and contracts as threats
    "exploitation-papakatsu",  # sugar dating with minors or turning into coercion
    "exploitation-sextortion",  # intimate images shared or threatened
    "exploitation-host_debt",  # host club debts turned into forced sex work
    "exploitation-sell_sex",  # made to sell sex
    "exploitation-grooming",  # minors pressed by adults met online to meet or send images
    # runaway and nowhere to stay
    "runaway-days_out",  # not going home for days
    "runaway-sleeping_out",  # public places, all-night shops
    "runaway-gathering_spots",  # トー横, グリ下
    "runaway-kamimachi",  # looking for a place to stay through SNS (神待ち)
    "runaway-stranger_offer",  # a stranger offering a minor a room or a ride
    # school refusal
    "school_refusal-cannot_go",
    "school_refusal-some_days",
    "school_refusal-cannot_enter",  # unable to go in once there
    "school_refusal-somatic_morning",  # body symptoms on school mornings
    "school_refusal-cannot_get_up",  # orthostatic dysregulation (起立性調節障害)
    "school_refusal-separate_room",  # 保健室登校, 別室登校
    "school_refusal-after_holidays",
    "school_refusal-wanting_to_quit",
    # everyday words of the categories that describe no harm (家出した猫, 仲直りした, パパ活って何)
    "guard-everyday",
]

_ID = re.compile(r"^cov-(?P<form>[a-z_]+-[a-z_]+)-(?P<n>[1-9][0-9]*)$")


def _expected_failure(case: dict[str, Any]) -> Any:
    if case.get("pending"):
        return pytest.param(case, marks=pytest.mark.xfail(reason=case["pending"], strict=True))
    return case


@pytest.mark.parametrize("case", [_expected_failure(c) for c in CASES], ids=[c["id"] for c in CASES])
def test_coverage_case(case: dict[str, Any]) -> None:
    result = triage(case["text"])
    got = result.risk.value
    categories = {c.value for c in result.categories}
    rules = [r.rule for r in result.reasons]
    why = f"{case['text']}\nrisk {got}, categories {sorted(categories)}, reasons {rules}"
    if case.get("higher_ok"):
        assert RANK[case["risk"]] <= RANK[got] <= RANK[case["risk"]] + 1, why
    else:
        assert got == case["risk"], why
    assert set(case["categories"]) <= categories, why


def test_table_is_well_formed() -> None:
    """Ids name their form and are unique; forms, voices, risks and categories are known."""
    known_categories = {c.value for c in Category}
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids)), "duplicate ids"
    for case in CASES:
        m = _ID.match(case["id"])
        assert m is not None, case["id"]
        assert m["form"] == case["form"], case["id"]
        assert case["form"] in FORMS, f"{case['id']}: form not in FORMS"
        assert case["voice"] in VOICES, case["id"]
        assert case["risk"] in RANK, case["id"]
        assert set(case["categories"]) <= known_categories, case["id"]
        assert isinstance(case["text"], str) and case["text"].strip(), case["id"]
        for note in ("higher_ok", "pending"):
            assert note not in case or (isinstance(case[note], str) and case[note].strip()), case["id"]


def test_every_form_has_three_cases_in_two_voices() -> None:
    cases: dict[str, list[str]] = defaultdict(list)
    for case in CASES:
        cases[case["form"]].append(case["voice"])
    thin = {form: cases.get(form, []) for form in FORMS if len(cases.get(form, [])) < 3}
    thin.update({form: cases[form] for form in FORMS if len(set(cases.get(form, []))) == 1})
    assert thin == {}, f"forms with fewer than three cases or one voice: {thin}"
