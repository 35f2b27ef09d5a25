"""The same words however they are typed: the reading channel of the triage.

Each row is a message as a person might type it, the risk it must get, and the words its reasons
must point at (in the text as typed: a romaji reason quotes the romaji). The second table holds
kana that sound like a word of the lexicon and mean something harmless: they stay low.
"""

from __future__ import annotations

import pytest

from triage import triage

SPELLINGS = [
    # kana typed without kanji conversion: the lexicon's words found by their readings
    ("つまがほうちょうをもっておいかけてきて、いまふろばにかぎかけてにげてる", "crisis", ["ほうちょう"]),
    ("ツマガホウチョウヲモッテオイカケテキテ、イマフロバニカギカケテニゲテル", "crisis", ["ホウチョウ"]),
    ("れんたんかった　こんやくるまでやる", "crisis", ["れんたん"]),
    ("きしねんりょがはんとしくらいきえません", "high", ["きしねんりょ"]),
    ("けいふにまいばんなぐられる", "high", ["なぐら"]),
    # romaji, Hepburn and keyboard spellings, with and without spaces
    ("ima kara shinu", "crisis", ["shinu", "ima"]),
    ("kyouokujoukaratobioriru", "crisis", ["tobioriru"]),
    ("konnya kubi turu", "crisis", ["kubi turu"]),
    ("sinitai", "high", ["sinitai"]),
    ("今日はsinitaiです", "crisis", ["sinitai"]),
    # one character a line, a space between every character
    ("し\nに\nた\nい", "high", ["し\nに\nた\nい"]),
    ("今 夜 、 屋 上 か ら 飛 び 降 り る", "crisis", ["飛 び 降 り る"]),
    # digits and symbols for kana
    ("もう42たい", "high", []),
    ("かれしにくび4められた", "high", ["くび4め"]),
    ("練炭で今夜氏ぬ", "crisis", []),
    ("電車に夜中の3時に飛び込む", "crisis", ["飛び込む"]),
    # one wish typed over and over with no break, in kana or with 4 for し
    ("きえたいきえたいきえたいきえたい", "high", []),
    ("42たい42たい42たい", "high", []),
    # a space after every word (こんや しぬ): not joined into こんやし|ぬ
    ("こんや しぬ つもり", "crisis", []),
    # northern ぐ for く (居ねぐなった, 帰りたぐねぇ)
    ("おれなんか居ねぐなったほうがいいべ", "high", []),
    # a verb the dictionary reads as another in a form that is no grammar where it stands: いき
    # before て is 生きる (行く's is いっ), しん before だ is 死ぬ (not 芯, not 知れる)
    ("いきてるいみがわかんない", "high", ["いきてるいみがわかんない"]),
    ("もういきとってもしゃあないわ", "high", []),
    ("しんだららくになれるかな", "high", []),
    ("しんだほうがましだとおもう", "high", []),
    ("なんかもうしんでしまいたい", "high", []),
    # quotes typed on a Latin keyboard around kana ("しにたい"): read as 「」
    ('ノートに"しにたい"ってかいてあった', "high", []),
    # romaji: the writer's spaces kept where joining would cut their words (ima manin: いま|まんいん,
    # not い|まま|に|ん); を written o in romaji run together (kubioshimerareta); a loanword with its
    # long vowel as romaji writes it inside a longer word (ekinohoomu: ホーム); Hepburn zu for づ
    # (kizuitara: 気づいたら)
    ("ima manin densha de zutto oshiri sawarareteru", "crisis", ["ima"]),
    ("kinou karenikubioshimerareta", "crisis", ["kubioshimera"]),
    ("mou shinu. ekinohoomunohashikkoniiru", "crisis", ["hoomunohashikko"]),
    ("kizuitara shiranai hoteru ni ita", "high", ["kizuitara shiranai hoteru"]),
    # romaji run together writes ん before お or を as n: shashinokutte is 写真送って (not しゃし|の);
    # a loanword is not found inside from right after っ (mottookuranaito: もっと送らないと, not トーク)
    (
        "geemudeshiriattahitonishashinokutchatta. mottookuranaitogakkounibarasutte",
        "high",
        ["shashin", "okuranaito"],
    ),
    # kana not respelt from a particle into a noun the dictionary read whole (おや|が|びょういん is
    # 親が病院, not 画鋲)
    ("おやがびょういんにつれてってくれない", "high", ["びょういんにつれてってくれない"]),
    # a verb's continuative form where the dictionary read another word: あい before に行く is 会い
    ("いえのまえでまってるってDM。こんやあいにいくって", "crisis", ["あいにいく"]),
    # a loanword of the lexicon typed in hiragana is found as written, not in a verb's form of the
    # same kana (くらし is 暮らす, not クラス: no class, no school, the partner's violence stays)
    ("どうせいのぱーとなーとくらしています。きにはいらないことがあるとけられます", "high", ["けら"]),
    # kana that are a word (弱さ) and a verb's form before the passive (酔わさ|れ): the form there
    ("ともだちがのみかいでよわされて、ヤられたっぽい", "high", ["よわさ"]),
    # the て of a verb's form is not the start of a word (なっ|て|くび: なって首, not 手首)
    ("このまえかれしとけんかになってくびしめられた", "high", ["くびしめ"]),
    # Hepburn writes a stretched ending as its vowel again (shinitee: 死にてぇ; shinidee, northern)
    ("majishinitee. mainichisoreshikakangaetenai", "high", ["shinitee"]),
    ("shinideetteomotteru", "high", ["shinidee"]),
]


@pytest.mark.parametrize("text,risk,spans", SPELLINGS)
def test_spelling_keeps_its_meaning(text: str, risk: str, spans: list[str]) -> None:
    result = triage(text)
    assert result.risk.value == risk, [(r.rule, r.matched) for r in result.reasons]
    matched = {r.matched for r in result.reasons}
    for words in spans:
        assert words in matched, (words, matched)
    for reason in result.reasons:
        start, end = reason.span
        assert text[start:end] == reason.matched  # reasons point at the text as typed


HARMLESS_HOMOPHONES = [
    "あとでれんらくするね",  # あと is "later", not 痕 (a mark)
    "あしたいくね",  # いく is "go", not 逝く
    "まだだれもいないよ",  # いない is "nobody is here", not 以内
    "しないでね、おねがい",  # し is する, not 死
    "ふつうにいきてるよ、げんき",  # alive and well
    "いくつあるの？",  # 幾つ, not 逝く
    "LINEでそうだんしたい",  # LINE stays a word, not romaji
    "I want to talk to someone",  # English is not read as romaji words
    "だいがく4ねんです",  # a year of study, not し
    "しぬほどねむい",  # the idiom, typed in kana
    "がちゃがちゃまわしたらあたった",  # a sound word typed twice stays one word
    "ぴんぽんぴんぽん、たくはいきたよ",  # the doorbell, not a repeated wish
    # いき before たい is 行く's own form (行きたい): not read as 生きる
    "あしたはやくいきたいな",
    "いきたいところがいっぱいある",
    "いきてかえってきたよ、ぶじでよかった",  # alive and back, no wish at all
    # しん before だ where it is a word of its own (本心だ, 確信だった, 地震だった)
    "ほんしんだよ、うそじゃない",
    "かれはかくしんだった",
    "きのうのじしんだいじょうぶだった？",
    "しんでれらのえほんをよんだ",  # Cinderella, not しんで
    'ノートに"すき"ってかいた',  # quotes read as 「」 change nothing else
    # kana cut through a particle the dictionary read whole are not respelt (くる|まで: 来るまで,
    # not 車で; から|だし: から出し, not 体)
    "かれがくるまでまってる",
    "おしいれからだしてきた",
    # nor a noun over a verb whose ending follows (どう|し|たら: not 同士)
    "あしたのしゅくだいどうしたらいい？",
    # romaji: o, wa, e between words read as particles only where a particle stands; kizu is still 傷
    "okaasan ni aitai",
    "kyouwaatsuidesune",
    "ude ni kizu ga aru kedo mou naoru",
    "ookii kaado wo katta",
    # romaji の after the letters of a noun ending in ん stays の where it is (投資の, 講師の)
    "toushinohanashiokiita",
    "koushinohanashiwatanoshikatta",
    # a continuative form before ながら or に行く read as the lexicon's verb only where it is one
    "こんどのみにいこうよ",
    "あしたパンかいにいくね",
    "なきながらえいがみた、いいはなしだった",
    "2さいのむすこがかわいい",
    # 弱さ before a particle stays 弱さ; a verb's て before くび stays its て (fired from a job)
    "かれのつよさとよわさがすき",
    "がんばってたのにかいしゃをくびになった",
    # ... but not i or u, which end words (kawaii, kuu)
    "kono neko kawaii",
    "hara hetta kara nanka kuu",
    "ashita hareta ra ee na",
]


@pytest.mark.parametrize("text", HARMLESS_HOMOPHONES)
def test_harmless_homophones_stay_low(text: str) -> None:
    result = triage(text)
    assert result.risk.value == "low", [(r.rule, r.matched) for r in result.reasons]
