"""The triage engine: text (and earlier messages) in, risk, categories and reasons out.

Pure: no I/O after construction. Build one ``Engine`` per process (``triage.get_engine``)
and call it from anywhere; it holds no per-message state.

How a message is read:
1. sanitise and cap the text; normalise it (``normalize.py``), keeping offsets;
2. tokenise it (``tokens.py``) and split it into sentences and clauses;
3. find concept hits: lemma sequences (死ぬ+たい) and written forms (リスカ) from the lexicon;
4. set context flags on each hit (negated, past, fiction, hypothetical, joking, quoted);
5. fire the rules: a rule needs active hits of its concepts, optionally within a window of
   sentences, optionally done by an actor (夫に殴られる: the act's nearest actor);
6. risk is the highest fired rule's; categories are the union, less those a rule removes.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from triage.normalize import Normalized, Normalizer, fold, sanitize, trie_as_written
from triage.paths import CONTENT_DIR
from triage.ruleset import (
    TRIE_END,
    Condition,
    Element,
    Rule,
    Ruleset,
    SeqPattern,
    SurfaceTerm,
    key_bit,
    load_ruleset,
)
from triage.tokens import Token, Tokenizer
from triage.types import CATEGORY_ORDER, Category, Reason, Risk, TriageResult

MAX_CHARS = 100_000  # longer texts are cut here, and the result says so


class Hit:
    """A lexicon concept found in a message (a plain class: mypyc compiles its constructor)."""

    def __init__(
        self, concept: str, term: str, first: int, last: int, start: int, end: int, sentence: int
    ) -> None:
        self.concept = concept
        self.term = term
        self.first = first  # first token index
        self.last = last  # last token index (inclusive)
        self.start = start  # span in the normalised text
        self.end = end
        self.sentence = sentence
        self.flags: set[str] = set()
        self.suppressed = False  # inside an idiom, or a longer hit of the same group

    def __repr__(self) -> str:
        return f"Hit({self.concept!r}, {self.term!r}, {self.first}-{self.last}, {sorted(self.flags)})"


@dataclass
class _Doc:
    original: str
    norm: Normalized
    tokens: list[Token]
    sentence_of: list[int]
    clause_of: list[int]
    quote_depth: list[int]
    hits: list[Hit]
    by_concept: dict[str, list[Hit]]
    actors_plain: list[Hit] | None = None
    actors_quoted: list[Hit] | None = None

    def original_span(self, hit: Hit) -> tuple[int, int]:
        start, end = self.norm.original_span(hit.start, hit.end)
        first, last = self.tokens[hit.first], self.tokens[hit.last]
        if first.synthetic and first.origin is not None:  # an emoji: its own span
            start = first.origin[0]
        if last.synthetic and last.origin is not None:
            end = last.origin[1]
        return start, max(start, end)


class Engine:
    def __init__(self, content_dir: Path = CONTENT_DIR) -> None:
        self.tokenizer = Tokenizer()
        self.rules: Ruleset = load_ruleset(content_dir, reading=self.tokenizer.reading)
        self.tokenizer.known_katakana = self.rules.known_katakana
        self.tokenizer.learn_words(self.rules.kanji_words, self.rules.loan_words, self.rules.kanji_pairs)
        self.tokenizer.index = self.rules.seq_index
        self.normalizer = Normalizer(
            self.rules.normalizer,
            word_across=self.tokenizer.word_across,
            loans=self.tokenizer.loan_kana,
            cuts_words=self.tokenizer.cuts_words,
            n_words=self.tokenizer.n_final_nouns,
        )
        ctx = self.rules.context
        self._ctx = ctx
        # Concepts whose context matters: those with inactive_when flags, and those a rule
        # asks about in a given state (ideation:past). Only their hits get context flags.
        self._flagged: set[str] = {n for n, c in self.rules.concepts.items() if c.flags}
        for rule in self.rules.rules:
            for cond in (*rule.when, *rule.unless, *rule.with_):
                self._flagged.update(n for n, state in cond.options if state not in ("active", "any"))
        # Each rule is looked at only when a concept of its first item is in the message, and
        # then only when each of its other items has a concept there too (looked up one by one).
        by_concept: dict[str, list[int]] = {}
        for index, rule in enumerate(self.rules.rules):
            for concept in rule.required[0]:
                by_concept.setdefault(concept, []).append(index)
        self._rules_by_concept = {c: tuple(indexes) for c, indexes in by_concept.items()}
        self._rule_others: list[tuple[tuple[str, ...], ...]] = [
            tuple(tuple(sorted(group)) for group in rule.required[1:]) for rule in self.rules.rules
        ]
        self._rule_rank: list[int] = [rule.risk.rank for rule in self.rules.rules]
        by_form: dict[str, list[SeqPattern]] = {}
        for pat in self.rules.seq_index.get("*", ()):
            by_form.setdefault(pat.elements[0].cform, []).append(pat)
        self._any_first = [(form, tuple(pats)) for form, pats in by_form.items()]
        self._trie_as_written = trie_as_written(self.rules.trie, TRIE_END)
        # The same, by a token's conjugated form (a few dozen of them), filled as forms are met.
        self._any_first_by_cform: dict[str, tuple[SeqPattern, ...]] = {}
        # Distress (distress.yaml): any of its concepts active in a message is the signal.
        distress = sorted(self.rules.signals.get("distress", ()))
        self._distress = Condition(tuple((name, "active") for name in distress))
        self._signal_only: frozenset[str] = frozenset(distress)

    # ------------------------------------------------------------------ public API

    def triage(self, text: str) -> TriageResult:
        """Triage one message on its own."""
        return self._triage_one(text)[0]

    def triage_conversation(self, text: str, history: Sequence[str] = ()) -> TriageResult:
        """Triage a message in its conversation: ``history`` holds the earlier texts, oldest first.

        The result never falls below the highest risk of the recent messages, and short
        ambiguous messages (もう無理) take their meaning from what came before.
        """
        result, doc = self._triage_one(text)
        recent = list(history)[-self.rules.conversation.recent_messages :]
        if not recent:
            return result
        earlier = [self._triage_one(h)[0] for h in recent]
        risk = result.risk
        categories = set(result.categories)
        reasons = list(result.reasons)
        context: list[Reason] = []
        peak = max(earlier, key=lambda r: r.risk.rank)
        if peak.risk.rank > risk.rank:
            risk = peak.risk
            # Why the floor: the reasons of the earlier message that set it (spans are in
            # that message, not this one).
            context.extend(Reason(f"history.{r.rule}", r.matched, r.span) for r in peak.reasons[:5])
        for r in earlier:
            categories.update(r.categories)
        # An ambiguous message after a serious one means more than it would alone.
        conv = self.rules.conversation
        ambiguous = [h for c in conv.ambiguous for h in doc.by_concept.get(c, []) if not h.suppressed]
        if ambiguous and peak.risk.rank >= Risk.HIGH.rank:
            raised = Risk.HIGH
            for r in earlier:
                for c in r.categories:
                    target = conv.escalate_after.get(c.value)
                    if target is not None and target.rank > raised.rank:
                        raised = target
            if raised.rank > risk.rank:
                risk = raised
            h = ambiguous[0]
            start, end = doc.original_span(h)
            reasons.append(Reason("context.ambiguous_after_serious", doc.original[start:end], (start, end)))
        return TriageResult(
            risk=risk,
            categories=_ordered(categories),
            reasons=tuple(reasons),
            truncated=result.truncated,
            empty=result.empty,
            context=tuple(context),
            signals=result.signals,
        )

    # ------------------------------------------------------------------ one message

    def _triage_one(self, text: str) -> tuple[TriageResult, _Doc]:
        truncated = len(text) > MAX_CHARS
        original = sanitize(text[:MAX_CHARS])
        doc = self._read(original)
        if not doc.tokens:
            return TriageResult(Risk.LOW, (), (), truncated=truncated, empty=not original.strip()), doc
        risk = Risk.LOW
        risk_rank = risk.rank
        categories: set[Category] = set()
        removed: set[Category] = set()
        reasons: list[Reason] = []
        # Reasons met so far, by rule and span (the words are those of the span): a tuple hashes in
        # C, a Reason through its dataclass's Python __hash__.
        seen: set[tuple[str, int, int]] = set()
        present = set(doc.by_concept)
        candidates: set[int] = set()
        by_concept = self._rules_by_concept
        for concept in present:
            indexes = by_concept.get(concept)
            if indexes is not None:
                candidates.update(indexes)
        rules = self.rules.rules
        others = self._rule_others
        for index in sorted(candidates):
            if not _all_present(others[index], present):
                continue  # an item of the rule has no concept in the message
            rule = rules[index]
            used = self._fire(rule, doc)
            if used is None:
                continue
            if self._rule_rank[index] > risk_rank:
                risk = rule.risk
                risk_rank = self._rule_rank[index]
            categories.update(rule.categories)
            removed.update(rule.removes)
            for h in used:
                start, end = doc.original_span(h)
                key = (rule.id, start, end)
                if key not in seen:
                    seen.add(key)
                    reasons.append(Reason(rule.id, original[start:end], (start, end)))
        categories -= removed
        distress = (
            self._distress.options
            and not present.isdisjoint(self._signal_only)
            and self._any_active(doc, self._distress)
        )
        signals = ("distress",) if distress else ()
        result = TriageResult(
            risk, _ordered(categories), tuple(reasons), truncated=truncated, signals=signals
        )
        return result, doc

    def _read(self, original: str) -> _Doc:
        norm = self.normalizer.normalize(original)
        tokens: list[Token] = []
        if norm.text.strip() or norm.emoji:
            norm, tokens = self.tokenizer.tokenize(norm)
        sentence_of, clause_of, quote_depth = self._segment(norm.text, tokens)
        doc = _Doc(original, norm, tokens, sentence_of, clause_of, quote_depth, [], {})
        if tokens:
            self._match(doc)
            self._resolve_overlaps(doc)
            self._set_flags(doc)
        return doc

    # ------------------------------------------------------------------ segmentation

    def _segment(self, text: str, tokens: list[Token]) -> tuple[list[int], list[int], list[int]]:
        ctx = self._ctx
        sentence_of: list[int] = []
        clause_of: list[int] = []
        quote_depth: list[int] = []
        sentence = clause = depth = 0
        prev_end = 0
        for i, tok in enumerate(tokens):
            # a line break in the gap before the word (text.find: no slice of the gap is made)
            if tok.start > prev_end and sentence_of and text.find("\n", prev_end, tok.start) >= 0:
                if sentence_of[-1] == sentence:  # not already broken (after 。 or an emoji)
                    sentence += 1
                    clause += 1
            elif (
                tok.space_before
                and sentence_of
                and not (tok.pos1 in ("助動詞", "助詞", "接尾辞") or tok.surface in ctx.sentence_ends)
            ):
                # LINE writers break with spaces: a clause, within one sentence
                # (いま　彼氏に　なぐられてる is one thought)
                clause += 1
            if tok.surface and tok.surface[0] in ctx.open_quotes:
                depth += 1
            sentence_of.append(sentence)
            clause_of.append(clause)
            quote_depth.append(depth)
            if tok.surface and tok.surface[-1] in ctx.close_quotes:
                depth = max(0, depth - 1)
            if tok.surface in ctx.sentence_ends or tok.synthetic:  # an emoji ends its sentence
                sentence += 1
                clause += 1
            elif tok.surface in ("、", ",") or (
                tok.lemma in ctx.scope_breakers
                and tok.pos2 == "接続助詞"
                # て before an auxiliary verb (されていない, してしまう) joins, it does not break
                and not (i + 1 < len(tokens) and tokens[i + 1].lemma in ctx.aux_after_te)
            ):
                clause += 1
            prev_end = max(prev_end, tok.end)
        return sentence_of, clause_of, quote_depth

    # ------------------------------------------------------------------ matching

    def _match(self, doc: _Doc) -> None:
        tokens = doc.tokens
        found = _Found(doc)
        present: set[str] = set()
        for tok in tokens:
            present.update(tok.keys)
        bits = 0  # the marks of the words present: most patterns are ruled out by them alone
        for key in present:
            bits |= key_bit(key)
        by_form = self._any_first_by_cform
        for i, tok in enumerate(tokens):
            for pat in tok.patterns:  # looked up once per word by the tokenizer
                if pat.plain:
                    found.add(pat.concept, pat.term, i, i)  # one word, no form: found where it is indexed
                    continue
                if (pat.first_bits & bits) == 0 or not _words_present(pat, present):
                    continue
                span = self._match_seq(pat, tokens, i)
                if span is not None:
                    found.add(pat.concept, pat.term, span[0], span[1])
            # patterns that start with a form, not a word (*#意志+と+思う), by the token's form
            first_form = by_form.get(tok.cform)
            if first_form is None:
                first_form = self._any_first_for(tok.cform)
            for pat in first_form:
                span = self._match_seq(pat, tokens, i)
                if span is not None:
                    found.add(pat.concept, pat.term, span[0], span[1])
        # Written forms, from every token start, on the hiragana-folded text (walked as written:
        # the trie leads from a katakana or capital letter where its folded letter leads).
        text = doc.norm.text
        starts = {t.start: i for i, t in enumerate(tokens) if not t.synthetic}
        ends = {t.end: i for i, t in enumerate(tokens) if not t.synthetic}
        token_starts = [t.start for t in tokens]
        trie = self._trie_as_written
        for pos, first in starts.items():
            node: dict[str, Any] = trie
            j = pos
            while j < len(text):
                child: dict[str, Any] | None = node.get(text[j])
                if child is None:
                    break
                node = child
                j += 1
                terms: list[SurfaceTerm] | None = node.get(TRIE_END)
                if not terms:
                    continue
                inside = j not in ends
                # the token holding the last matched character
                last = bisect.bisect_right(token_starts, j - 1) - 1 if inside else ends[j]
                # Ending inside a token is fine for a verb or adjective stem (首しめ|られ).
                stem = not inside or tokens[last].pos1 in ("動詞", "形容詞")
                for term in terms:
                    if not stem and not term.loose:
                        continue
                    if term.strict_end and j not in ends:
                        continue
                    if term.exact and text[pos:j] != term.term:
                        continue
                    if term.reading and not _one_noun(tokens, first, last, text, pos, j):
                        continue  # しよう is not 私用, カし is not 歌詞
                    found.add(term.concept, term.term, first, last)
        doc.hits = sorted(found.hits, key=lambda h: (h.first, h.last))

    def _any_first_for(self, cform: str) -> tuple[SeqPattern, ...]:
        """The patterns starting with a form that ``cform`` has, in the order of ``_any_first``."""
        found = tuple(pat for form, pats in self._any_first if cform.startswith(form) for pat in pats)
        self._any_first_by_cform[cform] = found
        return found

    def _match_seq(self, pat: SeqPattern, tokens: list[Token], i: int) -> tuple[int, int] | None:
        """Match ``pat`` with its anchor element at token ``i``: (first, last) token indexes."""
        els = pat.elements
        k = pat.anchor
        first = i - k
        if first < 0:
            return None
        for e in range(k):  # the elements before the anchor sit right before it
            el, tok = els[e], tokens[first + e]
            if not _meets(el.keys, tok.keys) or (el.cform and not tok.cform.startswith(el.cform)):
                return None
        if els[k].cform and not tokens[i].cform.startswith(els[k].cform):
            return None
        pos = i
        fillers = self._ctx.fillers
        for el in els[k + 1 :]:
            nxt = self._find_next(el, tokens, pos + 1, fillers)
            if nxt is None:
                if el.optional:
                    continue
                return None
            pos = nxt
        return first, pos

    def _find_next(self, el: Element, tokens: list[Token], start: int, fillers: frozenset[str]) -> int | None:
        skipped = 0
        j = start
        while j < len(tokens):
            tok = tokens[j]
            if (el.any or _meets(el.keys, tok.keys)) and (not el.cform or tok.cform.startswith(el.cform)):
                return j
            if tok.lemma in fillers and skipped < self._ctx.max_filler:
                skipped += 1
                j += 1
                continue
            return None
        return None

    def _resolve_overlaps(self, doc: _Doc) -> None:
        """Idioms take the words inside them out of play (死ぬほど眠い); within a group the
        longest hit wins (お母さんの彼氏 over 彼氏). Hits are short, so only hits starting a
        few words earlier can contain another: the look-up stays linear in the text."""
        concepts = self.rules.concepts
        starting: dict[int, list[Hit]] = {}
        longest = 0
        idioms = False
        for h in doc.hits:
            starting.setdefault(h.first, []).append(h)
            longest = max(longest, h.last - h.first)
            idioms = idioms or concepts[h.concept].idiom
        for h in doc.hits:
            c = concepts[h.concept]
            if not c.group and (c.idiom or not idioms):
                continue  # nothing can take it out of play: no group, and no idiom over it
            for first in range(h.first - longest, h.first + 1):
                for o in starting.get(first, ()):
                    if o is h or h.last > o.last:
                        continue
                    oc = concepts[o.concept]
                    if (oc.idiom and not c.idiom) or (
                        c.group and oc.group == c.group and (o.last - o.first) > (h.last - h.first)
                    ):
                        h.suppressed = True
                        break
                if h.suppressed:
                    break
        by: dict[str, list[Hit]] = {}
        for h in doc.hits:
            by.setdefault(h.concept, []).append(h)
        doc.by_concept = by

    # ------------------------------------------------------------------ context flags

    def _quoted_after(self, tokens: list[Token], last: int) -> bool:
        if last + 1 >= len(tokens):
            return False
        nxt = tokens[last + 1]
        if nxt.surface in self._ctx.quote_particles:
            return True
        # と quotes only before a verb of saying (死ねと言われた; not 見ていると)
        return (
            nxt.surface == "と"
            and last + 2 < len(tokens)
            and tokens[last + 2].lemma in self._ctx.speech_verbs
        )

    def _said_to_me(self, tokens: list[Token], last: int) -> bool:
        """Words someone said or wrote to the writer: 『死ねば』って言われた, と書かれた."""
        for j in range(last + 1, min(last + 7, len(tokens) - 1)):
            if tokens[j].lemma in self._ctx.speech_verbs and tokens[j + 1].lemma in ("れる", "られる"):
                return True
        return False

    def _set_flags(self, doc: _Doc) -> None:
        tokens = doc.tokens
        ctx = self._ctx
        flagged = self._flagged
        # Sentences holding each context marker (past_time, fiction, ...), found once.
        marked: dict[str, set[int]] = {}
        for marker in _MARKERS:
            hits = doc.by_concept.get(marker)
            if hits:
                marked[marker] = {m.sentence for m in hits if not m.suppressed}
        # A negator that is part of a phrase found as a whole (しぬ read by the dictionary as す+ぬ,
        # 居場所がない) belongs to that phrase: it negates nothing before it (今からしぬ).
        # Signal concepts (distress.yaml) are left out: they must never change what the rules see.
        inside: set[int] = set()
        signal_only = self._signal_only
        for h in doc.hits:
            if h.suppressed or h.last == h.first or h.concept in signal_only:
                continue
            if h.concept in flagged:
                inside.update(range(h.first + 1, h.last + 1))
        for h in doc.hits:
            if h.suppressed or h.concept not in flagged:
                continue  # settings, people: no rule asks about their context
            # Negation in scope: negators after the hit, up to a conjunction or the clause end.
            # An even count cancels out (死にたくないわけじゃない).
            count = 0
            only = False
            clause = doc.clause_of[h.last]
            j = h.last + 1
            while j < len(tokens) and j <= h.last + ctx.negation_window and doc.clause_of[j] == clause:
                tok = tokens[j]
                if tok.pos2 == "準体助詞" and j == h.last + 1:  # 死にたいのは変わらない: another verb's
                    break
                if tok.lemma == "しか":
                    only = True  # 消えたいしか思わない: "nothing but", not a negation
                elif tok.lemma == "誰" and _next_surfaces(tokens, j, ("に", "も")):
                    # 消えたいって思ってる誰にも言えない (a space or a stop lost when typed run
                    # together): telling nobody is a second thought, not a denial of the first
                    break
                elif tok.surface == "ない" and j + 1 < len(tokens) and tokens[j + 1].lemma in ("てる", "て"):
                    pass  # ないてる is 泣いてる written in kana, not a negation
                elif tok.surface == "ん" and j + 1 < len(tokens) and tokens[j + 1].lemma in ("です", "だ"):
                    pass  # もらえるんです: the ん of explanation, not a negation
                elif j in inside and j > h.last:
                    pass  # the end of another phrase (しぬ), not a negation of this one
                elif (
                    tok.lemma in ctx.negators
                    and tok.pos1 in ("助動詞", "形容詞")
                    or tok.lemma in ctx.negator_words
                ):
                    if only:
                        only = False
                    else:
                        count += 1
                elif (
                    tok.pos1 in ("名詞", "動詞", "形容詞", "副詞")
                    and tok.pos2 != "非自立可能"
                    and tok.lemma not in ctx.negation_pass
                ):
                    break  # another predicate: 切ったら血が止まらない negates 止まる, not 切る
                j += 1
            if count % 2 == 1:
                h.flags.add("negated")
            if _is_completed(tokens, h.last):
                h.flags.add("completed")  # 声が出なかった: over, not happening now
            if _is_conditional(tokens, h.last + 1):
                h.flags.add("hypothetical")  # ホームに立つと (whenever), 落ちたら (if)
            elif _time_in_condition(doc, h, ctx.condition_times, ctx.wondering):
                h.flags.add("hypothetical")  # いま飛び込んだら楽かな: 今 of the condition
            if doc.quote_depth[h.first] > 0 or self._quoted_after(tokens, h.last):
                h.flags.add("quoted")
                if self._said_to_me(tokens, h.last):
                    h.flags.add("said_to_me")
            for flag, marker in _FLAG_MARKERS:
                if h.sentence in marked.get(marker, ()):
                    h.flags.add(flag)
            if "joking" in h.flags and h.sentence in marked.get("serious", ()):
                h.flags.discard("joking")  # まじで…笑: a laugh does not make it a joke
            if "past" in h.flags:
                h.flags.discard("habitual")  # 去年はOD繰り返してた: a habit of the past
            if "past_habit" in doc.by_concept:
                for p in doc.by_concept["past_habit"]:
                    if p.first > h.last and p.first - h.last <= 3 and p.sentence == h.sentence:
                        h.flags.add("used_to")
                        break

    # ------------------------------------------------------------------ rules

    def _active(self, doc: _Doc, cond: Condition) -> list[Hit]:
        out: list[Hit] = []
        concepts = self.rules.concepts
        for name, state in cond.options:
            hits = doc.by_concept.get(name)
            if hits is None:
                continue  # most options of a condition are not in the message
            inactive_when = concepts[name].flags
            for h in hits:
                if h.suppressed:
                    continue
                if state == "any":
                    out.append(h)
                elif state == "active":
                    if not h.flags or h.flags.isdisjoint(inactive_when):
                        out.append(h)
                elif state in h.flags:
                    out.append(h)
        return out

    def _any_active(self, doc: _Doc, cond: Condition) -> bool:
        """``bool(self._active(doc, cond))``, stopping at the first hit."""
        concepts = self.rules.concepts
        for name, state in cond.options:
            hits = doc.by_concept.get(name)
            if not hits:
                continue
            inactive_when = concepts[name].flags
            for h in hits:
                if h.suppressed:
                    continue
                if state == "any":
                    return True
                if state == "active":
                    if not h.flags or h.flags.isdisjoint(inactive_when):
                        return True
                elif state in h.flags:
                    return True
        return False

    def _actor_candidates(self, doc: _Doc, quoted: bool) -> list[Hit]:
        """The people named in a message, in order; ``quoted``: include those inside quotes
        (a person named inside someone's words acts only inside those words)."""
        cache = doc.actors_quoted if quoted else doc.actors_plain
        if cache is None:
            actors = self._ctx.actor_concepts
            cache = sorted(
                (
                    h
                    for name in actors
                    for h in doc.by_concept.get(name, ())
                    if not h.suppressed and (quoted or doc.quote_depth[h.first] == 0)
                ),
                key=lambda h: (h.last, h.first),
            )
            if quoted:
                doc.actors_quoted = cache
            else:
                doc.actors_plain = cache
        return cache

    def _actor_of(self, doc: _Doc, act: Hit) -> str:
        """The actor group of an act: the nearest actor before it in its sentence, then after
        it, then in the sentences before (the topic of a story carries over)."""
        candidates = self._actor_candidates(doc, quoted=doc.quote_depth[act.first] > 0)
        if not candidates:
            return "none"
        actors = self._ctx.actor_concepts
        i = bisect.bisect_left(candidates, act.first, key=_last)  # candidates[:i] end before the act
        before = candidates[i - 1] if i > 0 else None
        if before is not None and before.sentence == act.sentence:
            return actors[before.concept]
        for h in candidates[i:]:
            if h.first > act.last:
                # after the act only within its clause (殴られた、夫に), not whoever is named
                # later in the sentence (上履き隠される　先生に言っても)
                if doc.clause_of[h.first] == doc.clause_of[act.last]:
                    return actors[h.concept]
                # words in quotes said by someone named after them: 「死ねばいいのに」って彼氏に言われた
                if doc.quote_depth[act.first] > 0 and self._speaker_after_quote(doc, act, h):
                    return actors[h.concept]
                break
        if before is not None and act.sentence - self._ctx.actor_sentences_back <= before.sentence:
            return actors[before.concept]
        return "none"

    def _speaker_after_quote(self, doc: _Doc, act: Hit, actor: Hit) -> bool:
        """``actor`` is named right after the quote that holds ``act`` (a quote particle at most
        between them) and followed by に or から and a verb of saying within a few words."""
        tokens = doc.tokens
        if doc.quote_depth[actor.first] > 0 or actor.sentence != act.sentence:
            return False
        between = [t for t in tokens[act.last + 1 : actor.first] if t.surface]
        closed = [t for t in between if t.surface[-1] in self._ctx.close_quotes]
        if not closed or len(between) > 12:
            return False
        after_close = between[between.index(closed[-1]) + 1 :]
        if any(t.surface not in self._ctx.quote_particles and t.surface != "と" for t in after_close):
            return False
        nxt = tokens[actor.last + 1 : actor.last + 5]
        return (
            bool(nxt)
            and nxt[0].surface in ("に", "から")
            and any(t.lemma in self._ctx.speech_verbs for t in nxt[1:])
        )

    def _fire(self, rule: Rule, doc: _Doc) -> list[Hit] | None:
        for cond in rule.unless:
            if self._any_active(doc, cond):
                return None
        extra: list[Hit] = []
        for cond in rule.with_:
            found = self._active(doc, cond)
            if not found:
                return None
            extra.append(found[0])
        others = [self._active(doc, cond) for cond in rule.when[1:]]
        if any(not found for found in others):
            return None
        anchors = self._active(doc, rule.when[0])
        if rule.act_by:
            anchors = [a for a in anchors if self._actor_of(doc, a) in rule.act_by]
        if not anchors:
            return None
        if rule.window is None and rule.after is None:
            used = [anchors[0]]
            for found in others:
                free = [h for h in found if not any(_same(h, u) for u in used)]
                if not free:
                    return None
                used.append(free[0])
            return used + extra
        # Sorted once, searched for each anchor: long texts with many hits stay linear-ish.
        by_sentence = [sorted(found, key=lambda h: h.sentence) for found in others]
        sentences = [[h.sentence for h in found] for found in by_sentence]
        by_first = [sorted(found, key=lambda h: h.first) for found in others]
        firsts = [[h.first for h in found] for found in by_first]
        for anchor in anchors:
            used = [anchor]
            for k in range(len(others)):
                hit = self._nearest(
                    rule, doc, anchor, used, by_first[k], firsts[k], by_sentence[k], sentences[k]
                )
                if hit is None:
                    break
                used.append(hit)
            else:
                return used + extra
        return None

    @staticmethod
    def _nearest(
        rule: Rule,
        doc: _Doc,
        anchor: Hit,
        used: list[Hit],
        by_first: list[Hit],
        firsts: list[int],
        by_sentence: list[Hit],
        sentences: list[int],
    ) -> Hit | None:
        """The hit of one item nearest the anchor within the rule's reach, not used already."""
        if rule.after is not None:
            lo = bisect.bisect_right(firsts, anchor.last)
            hi = bisect.bisect_right(firsts, anchor.last + rule.after + 1)
            pool = by_first[lo:hi]
        else:
            assert rule.window is not None
            lo = bisect.bisect_left(sentences, anchor.sentence - rule.window)
            hi = bisect.bisect_right(sentences, anchor.sentence + rule.window)
            pool = sorted(by_sentence[lo:hi], key=lambda h: abs(h.sentence - anchor.sentence))
        clause = doc.clause_of[anchor.first]
        for hit in pool:
            if rule.window is not None and abs(hit.sentence - anchor.sentence) > rule.window:
                continue
            if rule.clauses is not None and abs(doc.clause_of[hit.first] - clause) > rule.clauses:
                continue
            if any(_same(hit, u) for u in used):
                continue  # each item needs a hit of its own
            return hit
        return None


class _Found:
    """The hits found in a message so far, each concept once per span (the first term found)."""

    def __init__(self, doc: _Doc) -> None:
        self.doc = doc
        self.hits: list[Hit] = []
        self.seen: set[tuple[str, int, int]] = set()

    def add(self, concept: str, term: str, first: int, last: int) -> None:
        key = (concept, first, last)
        if key in self.seen:
            return
        self.seen.add(key)
        doc = self.doc
        tokens = doc.tokens
        self.hits.append(
            Hit(concept, term, first, last, tokens[first].start, tokens[last].end, doc.sentence_of[first])
        )


def _next_surfaces(tokens: list[Token], j: int, surfaces: tuple[str, ...]) -> bool:
    """Whether the words right after ``j`` are written ``surfaces``."""
    if j + len(surfaces) >= len(tokens):
        return False
    return all(tokens[j + 1 + k].surface == s for k, s in enumerate(surfaces))


def _meets(keys: frozenset[str], words: tuple[str, ...]) -> bool:
    """Some of ``words`` is among ``keys`` (``not keys.isdisjoint(words)``, compiled)."""
    for w in words:
        if w in keys:
            return True
    return False


def _words_present(pat: SeqPattern, present: set[str]) -> bool:
    """Every other required word of the pattern is somewhere in the message."""
    for keys in pat.required:
        for key in keys:
            if key in present:
                break
        else:
            return False
    return True


def _one_noun(tokens: list[Token], first: int, last: int, text: str, start: int, end: int) -> bool:
    """Where the kana spelling of a word written with kanji stands for it: one noun the dictionary
    read whole, written in hiragana (くすり: 薬; しよう is not 私用, カし not 歌詞), or a number
    and its counter (2さい: 2歳, 100けん: 100件, shared by the number and a counter word)."""
    if not _all_hiragana(text, start, end):
        return False
    if first == last:
        return tokens[first].pos1 == "名詞"
    return (
        first + 1 == last
        and tokens[first].pos2 == "数詞"
        and tokens[first].surface.isdigit()
        and tokens[last].pos1 in ("名詞", "接尾辞")
    )


def _all_hiragana(text: str, start: int, end: int) -> bool:
    """A kana spelling matches hiragana as written (また), not katakana folded into it (マタハラ)."""
    written = text[start:end]
    return fold(written) == written


def _same(a: Hit, b: Hit) -> bool:
    """Each item of a rule needs words of its own: one hit cannot stand for two items, nor
    the same words twice (さよなら, さよなら), nor two readings of the same words (家の前で
    待ってる is following or being at the door, not both)."""
    if a is b:
        return True
    overlap = a.first <= b.last and b.first <= a.last
    return overlap or (a.concept == b.concept and a.term == b.term)


def _last(h: Hit) -> int:
    return h.last


# Context markers: a concept of the lexicon whose presence in a sentence sets a flag.
_FLAG_MARKERS = (
    ("past", "past_time"),
    ("fiction", "fiction"),
    ("hypothetical", "hypothetical"),
    ("joking", "joking"),
    ("habitual", "habitual"),
    ("sometimes", "sometimes"),
)
_MARKERS = tuple(m for _, m in _FLAG_MARKERS) + ("serious",)
# Verbs before which と quotes (死ぬと決めた: decided to die) instead of making a condition.
_THINKING = frozenset(
    {
        "思う",
        "考える",
        "言う",
        "話す",
        "感じる",
        "思える",
        "悩む",
        "願う",
        "決める",
        "決心",
        "決意",
        "誓う",
        "約束",
        "書く",
        "伝える",
        "宣言",
    }
)


def _is_completed(tokens: list[Token], last: int) -> bool:
    """A past tense right after (出なかった, 隠れた): the event is over."""
    for j in range(last + 1, min(last + 3, len(tokens))):
        tok = tokens[j]
        if tok.lemma == "た" and tok.pos1 == "助動詞" and not tok.cform.startswith("仮定"):
            return True
        if tok.pos1 not in ("助動詞", "形容詞") or tok.lemma not in ("ない", "無い", "ます"):
            return False
    return False


def _time_in_condition(doc: _Doc, h: Hit, times: frozenset[str], wondering: frozenset[str]) -> bool:
    """A word of time right before a verb in the conditional, in a sentence that wonders, is
    part of the condition: いま飛び込んだら楽かな is the thought of what would happen, not
    something happening now (but 今日帰ったら殴られる is what will happen)."""
    tokens = doc.tokens
    if h.first != h.last or tokens[h.first].lemma not in times or h.last + 2 >= len(tokens):
        return False
    if tokens[h.last + 1].pos1 != "動詞" or not _is_conditional(tokens, h.last + 2):
        return False
    j = h.last + 3
    while j < len(tokens) and doc.sentence_of[j] == h.sentence:
        if tokens[j].surface in wondering:
            return True
        j += 1
    return False


def _is_conditional(tokens: list[Token], i: int) -> bool:
    """と, ば and たら after a verb make it a condition, not an event (ホームに立つと) -- but
    と before a verb of thinking quotes a thought (意味がないと考える)."""
    if i >= len(tokens):
        return False
    tok = tokens[i]
    if tok.pos2 == "接続助詞" and tok.lemma in ("と", "ば"):
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        return not (tok.lemma == "と" and nxt is not None and nxt.lemma in _THINKING)
    return tok.lemma == "た" and tok.cform.startswith("仮定")


def _all_present(groups: tuple[tuple[str, ...], ...], present: set[str]) -> bool:
    """A quick look before the real check: each group has a concept in the message."""
    for group in groups:
        for concept in group:
            if concept in present:
                break
        else:
            return False
    return True


def _ordered(categories: set[Category]) -> tuple[Category, ...]:
    return tuple(sorted(categories, key=CATEGORY_ORDER.__getitem__))
