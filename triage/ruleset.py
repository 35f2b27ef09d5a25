"""Loading the triage content (``content/triage/*.yaml``) into matchers and rules.

The files are written for counselling staff; the structures here are what the engine
runs. Every error in the content names its file and entry, and is raised at load time,
never while a message is being triaged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from triage import yamlfile
from triage.normalize import NormalizerConfig, fold
from triage.paths import CONTENT_DIR
from triage.types import RISK_ORDER, Category, Risk

# Flags that a context check may set on a concept hit; a concept lists those that
# take its hits out of play (see lexicon.yaml).
FLAGS = (
    "negated",
    "past",
    "used_to",
    "fiction",
    "hypothetical",
    "joking",
    "quoted",
    "habitual",
    "sometimes",
    "said_to_me",
    "completed",
)


class ContentError(ValueError):
    """The triage content is malformed; the message names the file and the entry."""


@dataclass(frozen=True)
class Element:
    """One token position of a sequence pattern: alternatives, and an optional form."""

    keys: frozenset[str]
    cform: str = ""
    optional: bool = False
    any: bool = False  # * : any one word (with a form: *#意志 is any volitional verb)


@dataclass(frozen=True)
class SeqPattern:
    concept: str
    term: str
    elements: tuple[Element, ...]
    anchor: int = 0  # the element the pattern is indexed by; those before it sit right before
    # the words (alternatives) of every other required element: a quick look before matching
    # (each as a tuple, looked up one by one; those holding a common word last, as they fail least)
    required: tuple[tuple[str, ...], ...] = ()
    # One word and no form (a plain lexicon word): it matches wherever it is indexed, alone.
    plain: bool = False
    # The bits (key_bit) of the words of the first required element, all bits when none: a
    # message whose words have none of them lacks that element, without a look-up.
    first_bits: int = 0


KEY_BITS = 60  # bits of a word's mark; a machine integer holds them


def key_bit(key: str) -> int:
    """A word's mark: one of KEY_BITS bits, from its hash (the same for the whole process)."""
    return 1 << (hash(key) % KEY_BITS)


def _bits_of(keys: tuple[str, ...]) -> int:
    bits = 0
    for key in keys:
        bits |= key_bit(key)
    return bits


# Words too common to index a pattern by (に+居る is found from 居る, then に is checked).
_COMMON = frozenset(
    {"に", "て", "で", "を", "が", "は", "の", "と", "も", "から", "まで", "へ", "だ", "た", "ない"}
)


def _anchor(elements: tuple[Element, ...]) -> int:
    for k, el in enumerate(elements):
        if el.optional or el.any:
            return 0
        if el.keys.isdisjoint(_COMMON):
            return k
    return 0


@dataclass(frozen=True)
class SurfaceTerm:
    concept: str
    term: str
    strict_end: bool  # must end on a token boundary (kana spellings added automatically)
    exact: bool = False  # must match in its own script (ママ is not まま)
    loose: bool = False  # may end inside any word (katakana words written in hiragana)
    reading: bool = False  # a kana spelling of a kanji word: one whole word that is not a verb (くすり)


@dataclass
class Concept:
    name: str
    flags: frozenset[str]  # flags that make a hit inactive
    group: str = ""  # concepts of one group: the longest overlapping hit wins
    idiom: bool = False  # hits of an idiom take overlapping hits of other concepts out of play
    description: str = ""


@dataclass(frozen=True)
class Condition:
    """Concepts of which any will do, each with the state its hit must be in
    (active, any, or one of FLAGS: ideation:said_to_me)."""

    options: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Rule:
    id: str
    risk: Risk
    categories: tuple[Category, ...]
    when: tuple[Condition, ...]
    unless: tuple[Condition, ...] = ()
    window: int | None = None  # sentences between the first condition and the others
    after: int | None = None  # the others start within this many tokens after the first
    clauses: int | None = None  # and within this many clauses of the first
    with_: tuple[Condition, ...] = ()  # present anywhere in the message
    act_by: tuple[str, ...] = ()  # actor groups the first condition's hit must be done by
    removes: tuple[Category, ...] = ()
    description: str = ""
    # For a quick skip: each set must meet the concepts found in a message.
    required: tuple[frozenset[str], ...] = ()


@dataclass
class ContextConfig:
    fillers: frozenset[str]
    negators: frozenset[str]
    negation_pass: frozenset[str]
    negator_words: frozenset[str]
    scope_breakers: frozenset[str]
    sentence_ends: frozenset[str]
    open_quotes: str
    close_quotes: str
    quote_particles: frozenset[str] = frozenset()
    speech_verbs: frozenset[str] = frozenset()
    aux_after_te: frozenset[str] = frozenset()
    condition_times: frozenset[str] = frozenset()
    wondering: frozenset[str] = frozenset()
    max_filler: int = 2
    negation_window: int = 6
    actor_sentences_back: int = 3
    actor_concepts: dict[str, str] = field(default_factory=dict)  # concept -> actor group


@dataclass
class ConversationConfig:
    recent_messages: int
    ambiguous: tuple[str, ...]  # concepts that mean more after a serious message
    escalate_after: dict[str, Risk]  # category of an earlier message -> risk of the ambiguous one


@dataclass
class Ruleset:
    normalizer: NormalizerConfig
    context: ContextConfig
    conversation: ConversationConfig
    concepts: dict[str, Concept]
    seq_index: dict[str, list[SeqPattern]]
    trie: dict[str, Any]
    rules: list[Rule]
    known_katakana: frozenset[str]  # katakana words of the lexicon (リスカ): never re-read as kana
    kanji_words: frozenset[str] = frozenset()  # words of the lexicon written with kanji (練炭)
    # Signals and the concepts that show them (distress.yaml): reported beside the risk, never raising it.
    signals: dict[str, frozenset[str]] = field(default_factory=dict)
    # katakana words of the lexicon of three letters or more (ベランダ, ホテル): typed in hiragana
    # (べらんだ) the dictionary cuts them into native words; tokens.py spells them back
    loan_words: frozenset[str] = frozenset()
    # two words of a pattern written with kanji one after the other (腕+切る: 腕切る), for the
    # same in kana cut across the join (う|できる)
    kanji_pairs: frozenset[str] = frozenset()


TRIE_END = "\0"  # the key under which a trie node keeps the terms ending there


def _load_yaml(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as f:
            return yamlfile.load(f)
    except (OSError, yaml.YAMLError) as e:
        raise ContentError(f"{path}: {e}") from e


def _parse_element(text: str, where: str, reading: Any = None) -> Element:
    optional = text.endswith("?")
    if optional:
        text = text[:-1]
    cform = ""
    if "#" in text:
        text, cform = text.split("#", 1)
    words = [k for k in text.split("|") if k]
    if not words:
        raise ContentError(f"{where}: empty token in pattern")
    return Element(frozenset(words) | _readings(words, reading), cform, optional, any="*" in words)


def _has_kanji(word: str) -> bool:
    return any("\u4e00" <= c <= "\u9fff" or c == "々" for c in word)


_KATAKANA_WORD = re.compile("[\u30a1-\u30fa\u30fc]{3,}")


def _katakana_word(word: str) -> bool:
    """A word written in katakana only, of three letters or more (ホテル; not ママ)."""
    return _KATAKANA_WORD.fullmatch(word) is not None


def _pairs(elements: tuple[Element, ...]) -> set[str]:
    """Two words written with kanji in adjacent elements of a pattern (an optional element
    between them may be left out): 腕+を?+切る gives 腕切る."""
    out: set[str] = set()
    for a in range(len(elements) - 1):
        b = a + 1
        if elements[b].optional and b + 1 < len(elements):
            b += 1
        firsts = [k for k in elements[a].keys if _has_kanji(k)]
        seconds = [k for k in elements[b].keys if _has_kanji(k)]
        if len(firsts) * len(seconds) <= 64:  # long lists of alternatives: a word for a word
            out.update(x + y for x in firsts for y in seconds)
    return out


def _hiragana(word: str) -> str:
    return "".join(chr(ord(c) - 0x60) if "\u30a1" <= c <= "\u30f6" else c for c in word)


def _readings(words: list[str], reading: Any) -> frozenset[str]:
    """The hiragana readings of the words written with kanji (殴る: なぐる), so that a word typed
    in kana is found whichever word of that reading the dictionary took it for (see tokens.py).
    One kana is too little to tell a word by (死: し is also する's)."""
    if reading is None:
        return frozenset()
    out = set()
    for w in words:
        if w != "*" and _has_kanji(w):
            kana = reading(w)
            if len(kana) >= 2 and kana not in COMMON_KANA:
                out.add(READING + kana)
        elif _katakana_word(w):
            # a loanword typed in hiragana (ほてる) is read as a native word (火照る): its
            # hiragana is its reading, as written (a loanword does not conjugate: くらし is 暮らす,
            # never クラス)
            kana = _hiragana(w)
            if kana not in COMMON_KANA:
                out.add(WRITTEN + kana)
    return frozenset(out)


# The mark of a reading key: a word's reading, matched only in messages typed in kana.
READING = "〃"
# The mark of a word's kana as written (not of its dictionary form): what a loanword of the
# lexicon typed in hiragana is matched by, in messages typed in kana.
WRITTEN = "〆"
# Kana words so common in their own sense that a lexicon word of the same reading is not read
# into them (あと is "after" far more often than 痕).
# Nor is a word of the lexicon written into kana that read as common words (いない is not 以内).
COMMON_KANA = frozenset(
    {
        *("あと", "いい", "こと", "もの", "とき", "ため", "ところ", "うち", "まえ", "なか", "うえ", "した"),
        *("ほう", "よう", "かた", "いない", "しない", "こない", "できる", "いける", "かける"),
        *("いく", "あるく", "いきる", "しんで", "かいた", "きかい", "いがい", "いじょう"),
        *("いか", "こんど"),
    }
)


def _parse_condition(value: Any, where: str, concepts: dict[str, Concept]) -> Condition:
    names = [value] if isinstance(value, str) else list(value)
    options: list[tuple[str, str]] = []
    for n in names:
        if not isinstance(n, str):
            raise ContentError(f"{where}: condition {value!r} must be a concept name or a list of names")
        state = "active"
        if ":" in n:
            n, state = n.split(":", 1)
            if state not in FLAGS + ("any", "active"):
                raise ContentError(f"{where}: unknown state {state!r}")
        if n not in concepts:
            raise ContentError(f"{where}: unknown concept {n!r}")
        options.append((n, state))
    return Condition(tuple(options))


def _trie_add(trie: dict[str, Any], word: str, term: SurfaceTerm) -> None:
    node = trie
    for ch in word:
        node = node.setdefault(ch, {})
    node.setdefault(TRIE_END, []).append(term)


def load_ruleset(content_dir: Path = CONTENT_DIR, reading: Any = None) -> Ruleset:
    """Load and check every triage content file. ``reading`` gives a word's hiragana reading."""
    norm_doc = _load_yaml(content_dir / "normalize.yaml")
    lex_doc = _load_yaml(content_dir / "lexicon.yaml")
    rules_doc = _load_yaml(content_dir / "rules.yaml")
    distress_doc = _load_yaml(content_dir / "distress.yaml") or {}
    if not isinstance(distress_doc, dict) or not isinstance(distress_doc.get("concepts") or {}, dict):
        raise ContentError("distress.yaml: needs 'concepts', a mapping of concept names")

    normalizer = NormalizerConfig(
        substitutions=[(re.compile(s["pattern"]), s["replace"]) for s in norm_doc.get("substitutions", [])],
        mask_chars=norm_doc.get("mask_chars", ""),
        emoji={str(k): str(v) for k, v in (norm_doc.get("emoji") or {}).items()},
        kaomoji=[(re.compile(k["pattern"]), k["word"]) for k in norm_doc.get("kaomoji", [])],
        drop_emoji=re.compile(norm_doc.get("drop_emoji", r"[\U0001F000-\U0001FAFF\u2600-\u27BF]+")),
        kaomoji_chars=str(norm_doc.get("kaomoji_chars", "()（）;TＴ")),
        substitution_chars=str(norm_doc.get("substitution_chars", "")),
        substitution_gate=str(norm_doc.get("substitution_gate", "")),
    )

    ctx_doc = lex_doc.get("context", {})
    concepts: dict[str, Concept] = {}
    seq_index: dict[str, list[SeqPattern]] = {}
    trie: dict[str, Any] = {}
    actor_concepts: dict[str, str] = {}
    known_katakana: set[str] = set()
    kanji_words: set[str] = set()
    loan_words: set[str] = set()
    kanji_pairs: set[str] = set()
    distress: set[str] = set()
    specs = [("lexicon.yaml", n, spec) for n, spec in (lex_doc.get("concepts") or {}).items()]
    specs += [("distress.yaml", n, spec) for n, spec in (distress_doc.get("concepts") or {}).items()]
    for file, name, spec in specs:
        where = f"{file}: concept {name}"
        if file == "distress.yaml":
            if name in concepts:
                raise ContentError(f"{where}: the name is taken in lexicon.yaml")
            distress.add(name)
        if not isinstance(spec, dict) or "terms" not in spec:
            raise ContentError(f"{where}: needs a 'terms' list")
        flags = frozenset(spec.get("inactive_when", []))
        bad = flags - set(FLAGS)
        if bad:
            raise ContentError(f"{where}: unknown flags {sorted(bad)}")
        concepts[name] = Concept(
            name=name,
            flags=flags,
            group=spec.get("group", ""),
            idiom=bool(spec.get("idiom", False)),
            description=spec.get("description", ""),
        )
        if spec.get("actor"):
            actor_concepts[name] = str(spec["actor"])
        for term in spec["terms"]:
            term = str(term)
            if any(c in term for c in "+#|?") and len(term) > 1:
                elements = tuple(_parse_element(t, f"{where}: {term}", reading) for t in term.split("+"))
                if file == "lexicon.yaml":  # signals never change how a message is read
                    kanji_words.update(k for el in elements for k in el.keys if _has_kanji(k))
                    loan_words.update(k for el in elements for k in el.keys if _katakana_word(k))
                    kanji_pairs.update(_pairs(elements))
                anchor = _anchor(elements)
                groups = [
                    el.keys for k, el in enumerate(elements) if k != anchor and not el.optional and not el.any
                ]
                groups.sort(key=lambda keys: not keys.isdisjoint(_COMMON))  # stable: rarer words first
                words = tuple(tuple(sorted(keys)) for keys in groups)
                first_bits = _bits_of(words[0]) if words else (1 << KEY_BITS) - 1
                pat = SeqPattern(name, term, elements, anchor, words, first_bits=first_bits)
                first = elements[0]
                if first.optional:
                    raise ContentError(f"{where}: {term}: the first token cannot be optional")
                if first.any and not first.cform:
                    raise ContentError(f"{where}: {term}: a first * needs a form (*#意志)")
                for key in elements[anchor].keys:
                    seq_index.setdefault(key, []).append(pat)  # * patterns sit under "*"
            else:
                # A plain word: matched as written (hiragana-folded) from a token boundary,
                # and as a single token by lemma, so that conjugated forms match too.
                word = fold(term)  # the text is read folded the same way
                # A hiragana-only word must match whole words (しね is not in 推しねこ); a word
                # with kanji or katakana may end inside a verb stem (首しめ|られ, リス|カし).
                all_kana = all("\u3041" <= c <= "\u309f" for c in term)
                # Short katakana words must keep their script: ママ is not そのまま.
                katakana = all("\u30a1" <= c <= "\u30fc" for c in term)
                exact = len(term) <= 2 and katakana
                # A katakana word of three or more letters written in hiragana (ほーむ) is
                # split oddly by the dictionary (ほー|むに): let it end inside a word.
                loose = katakana and len(term) >= 3
                _trie_add(
                    trie,
                    word,
                    SurfaceTerm(name, term, strict_end=all_kana or exact, exact=exact, loose=loose),
                )
                if any("\u30a1" <= c <= "\u30fa" for c in term):
                    known_katakana.add(term)
                el = Element(frozenset({term}) | _readings([term], reading))
                if _has_kanji(term) and file == "lexicon.yaml":
                    kanji_words.add(term)
                if _katakana_word(term) and file == "lexicon.yaml":
                    loan_words.add(term)
                plain = SeqPattern(name, term, (el,), plain=True)
                for key in el.keys:
                    seq_index.setdefault(key, []).append(plain)
                # (not for one kanji alone: 痕 would read as あと, "after")
                if reading is not None and len(term) > 1 and any("\u4e00" <= c <= "\u9fff" for c in term):
                    kana = reading(term)
                    if kana and kana != word and len(kana) >= 2:
                        _trie_add(trie, kana, SurfaceTerm(name, term, strict_end=True, reading=True))

    context = ContextConfig(
        fillers=frozenset(ctx_doc.get("fillers", [])),
        negators=frozenset(ctx_doc.get("negators", [])),
        negation_pass=frozenset(ctx_doc.get("negation_pass", [])),
        negator_words=frozenset(ctx_doc.get("negator_words", [])),
        scope_breakers=frozenset(ctx_doc.get("scope_breakers", [])),
        sentence_ends=frozenset(ctx_doc.get("sentence_ends", [])),
        open_quotes=ctx_doc.get("open_quotes", "「『"),
        close_quotes=ctx_doc.get("close_quotes", "」』"),
        quote_particles=frozenset(ctx_doc.get("quote_particles", [])),
        speech_verbs=frozenset(ctx_doc.get("speech_verbs", [])),
        aux_after_te=frozenset(ctx_doc.get("aux_after_te", [])),
        condition_times=frozenset(ctx_doc.get("condition_times", [])),
        wondering=frozenset(ctx_doc.get("wondering", [])),
        max_filler=int(ctx_doc.get("max_filler", 2)),
        negation_window=int(ctx_doc.get("negation_window", 6)),
        actor_sentences_back=int(ctx_doc.get("actor_sentences_back", 3)),
        actor_concepts=actor_concepts,
    )

    valid_categories = {c.value for c in Category}
    actor_groups = set(actor_concepts.values()) | {"none"}
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, r in enumerate(rules_doc.get("rules") or []):
        rid = r.get("id") or f"#{i}"
        where = f"rules.yaml: rule {rid}"
        if rid in seen:
            raise ContentError(f"{where}: duplicate id")
        seen.add(rid)
        if r.get("risk") not in RISK_ORDER:
            raise ContentError(f"{where}: risk must be one of {list(RISK_ORDER)}")
        cats = r.get("category", [])
        cats = [cats] if isinstance(cats, str) else list(cats)
        removes = list(r.get("removes", []))
        for c in cats + removes:
            if c not in valid_categories:
                raise ContentError(f"{where}: unknown category {c!r}")
        when = tuple(_parse_condition(c, where, concepts) for c in r.get("when", []))
        if not when:
            raise ContentError(f"{where}: needs 'when'")
        by = tuple(r.get("by", []))
        for a in by:
            if a not in actor_groups:
                raise ContentError(f"{where}: unknown actor {a!r} (known: {sorted(actor_groups)})")
        with_ = tuple(_parse_condition(c, where, concepts) for c in r.get("with", []))
        required = tuple(frozenset(n for n, _ in c.options) for c in when + with_)
        rules.append(
            Rule(
                id=rid,
                risk=Risk(r["risk"]),
                categories=tuple(Category(c) for c in cats),
                when=when,
                unless=tuple(_parse_condition(c, where, concepts) for c in r.get("unless", [])),
                window=r.get("window"),
                after=r.get("after"),
                clauses=r.get("clauses"),
                with_=with_,
                required=required,
                act_by=by,
                removes=tuple(Category(c) for c in removes),
                description=r.get("description", ""),
            )
        )

    conv_doc = rules_doc.get("conversation", {})
    conversation = ConversationConfig(
        recent_messages=int(conv_doc.get("recent_messages", 10)),
        ambiguous=tuple(conv_doc.get("ambiguous", [])),
        escalate_after={str(k): Risk(v) for k, v in (conv_doc.get("escalate_after") or {}).items()},
    )
    for c in conversation.ambiguous:
        if c not in concepts:
            raise ContentError(f"rules.yaml: conversation: unknown concept {c!r}")
    # Equal patterns (a term listed twice) become one object: the tokenizer then tells patterns
    # apart by identity, without comparing their fields.
    canonical: dict[SeqPattern, SeqPattern] = {}
    for key, pats in seq_index.items():
        seq_index[key] = [canonical.setdefault(pat, pat) for pat in pats]
    return Ruleset(
        normalizer,
        context,
        conversation,
        concepts,
        seq_index,
        trie,
        rules,
        frozenset(known_katakana),
        frozenset(kanji_words),
        {"distress": frozenset(distress)},
        frozenset(loan_words),
        frozenset(kanji_pairs),
    )
