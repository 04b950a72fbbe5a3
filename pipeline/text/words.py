"""SCAN's word tokenization without NLTK data: ``word_tokenize(caption.lower())``.

SCAN and SGRAF build their vocabularies with NLTK's ``word_tokenize`` = Punkt sentence splitting
(needs the downloaded ``punkt`` model) followed by the Penn Treebank word tokenizer. Both are
re-implemented here from their documented behaviour:

- sentences end at a word ending in ``.`` followed by more text, unless the word is a known
  abbreviation (``mr.``, ``st.``), an initial (``w.``), has inner periods (``u.s.``) or is an
  ellipsis — Punkt's decisions on lower-cased captions; only a sentence-final period is split off;
- Treebank rules: opening ``"`` → `````, closing ``"`` → ``''``; ``, ; : @ # $ % & ? !`` and
  brackets split off (``,``/``:`` not between digits); ``...`` and ``--`` become tokens;
  clitics ``'s 'm 'd 'll 're 've n't`` split off; ``cannot gonna gotta wanna gimme lemme`` split.

The Treebank part gives the same tokens as NLTK 3.10's ``TreebankWordTokenizer`` (checked on
60,000 random strings built from captions' special cases). NLTK's newer default word tokenizer
adds rules (``'stop'`` → ``' stop``, ``..`` split off) that the shipped SGRAF vocabularies show no
trace of (they contain ``'stop`` and ``building..``), so those are not copied.
"""

from __future__ import annotations

import re

# Abbreviations Punkt's English model does not end a sentence at (the ones captions use).
ABBREVIATIONS = frozenset(
    "mr mrs ms dr st ave jr sr vs etc e.g i.e u.s u.k d.c a.m p.m no co inc ltd mt ft rd blvd hwy "
    "approx apt dept est fig gen col lt sgt capt prof rev jan feb mar apr jun jul aug sep sept oct "
    "nov dec".split())

# a period, optional closing brackets/quotes, whitespace, more text: a possible sentence end
_PERIOD_BREAK = re.compile(r"\.([\]\)}>\"']*)(\s+)(?=\S)")

_STARTING_QUOTES = [
    (re.compile(r'^"'), r"``"),
    (re.compile(r"(``)"), r" \1 "),
    (re.compile(r"([ (\[{<])(\"|'{2})"), r"\1 `` "),
]
# (characters one of which must be present for the rule to match, rule): rules only add spaces,
# so a rule whose characters are absent can be skipped without changing the result.
_PUNCTUATION = [
    (":,", re.compile(r"([:,])([^\d])"), r" \1 \2"),
    (":,", re.compile(r"([:,])$"), r" \1 "),
    (".", re.compile(r"\.\.\."), r" ... "),
    (";@#$%&", re.compile(r"[;@#$%&]"), r" \g<0> "),
    (None, None, None),  # the sentence-final period: _split_final_period (same rule, without a scan)
    ("?!", re.compile(r"[?!]"), r" \g<0> "),
    ("'", re.compile(r"([^'])' "), r"\1 ' "),
]
_BRACKETS = [
    (re.compile(r"[\]\[\(\)\{\}\<\>]"), r" \g<0> "),
    (re.compile(r"--"), r" -- "),
]
_ENDING_QUOTES = [
    (re.compile(r"''"), " '' "),
    (re.compile(r'"'), " '' "),
    (re.compile(r"([^' ])('[sS]|'[mM]|'[dD]|') "), r"\1 \2 "),
    (re.compile(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) "), r"\1 \2 "),
]
_CONTRACTIONS = [re.compile(p) for p in (
    r"(?i)\b(can)(not)\b", r"(?i)\b(d)('ye)\b", r"(?i)\b(gim)(me)\b", r"(?i)\b(gon)(na)\b",
    r"(?i)\b(got)(ta)\b", r"(?i)\b(lem)(me)\b", r"(?i)\b(more)('n)\b", r"(?i)\b(wan)(na)(?=\s)",
    r"(?i) ('t)(is)\b", r"(?i) ('t)(was)\b")]


_BRACKET_CHARS = re.compile(r"[\]\[(){}<>]|--")
# every contraction above contains one of these (cheap test before ten case-insensitive scans)
_CONTRACTION_HINTS = ("cannot", "'ye", "gimme", "gonna", "gotta", "lemme", "'n", "wanna", "'t")
_CLOSERS = "])}>\"'"


def _split_final_period(text: str) -> str:
    """Treebank's ``([^.])(\\.)([])}>"']*)\\s*$`` → ``\\1 \\2\\3 `` done by slicing the tail."""
    core = text.rstrip()
    body = core.rstrip(_CLOSERS)
    if len(body) < 2 or body[-1] != "." or body[-2] == ".":
        return text
    return f"{body[:-1]} .{core[len(body):]} "


def split_sentences(text: str) -> list[str]:
    """Cut ``text`` where Punkt would: after ``word.`` that is no abbreviation, initial or ellipsis."""
    if "." not in text:
        return [text] if text.strip() else []
    pieces: list[str] = []
    start = 0
    for match in _PERIOD_BREAK.finditer(text):
        period = match.start()
        begin = period
        while begin > start and not text[begin - 1].isspace():
            begin -= 1
        word = text[begin:period]  # the token before its final period
        if not word or word.endswith(".") or "." in word or len(word) == 1 or word.lower() in ABBREVIATIONS:
            continue  # lone "." / ellipsis / inner periods (u.s.) / initial (w.) / abbreviation (st.)
        pieces.append(text[start:match.start(2)])
        start = match.end(2)
    pieces.append(text[start:])
    return [p for p in pieces if p.strip()]


def treebank_tokenize(sentence: str) -> list[str]:
    """Penn Treebank word tokenization of one sentence.

    Rule groups whose trigger characters are absent are skipped: they could not match, and most
    captions have no quotes, brackets or clitics (together with the two hand-written rules, ~5x faster).
    """
    text = sentence
    if '"' in text or "`" in text or "''" in text:
        for pattern, repl in _STARTING_QUOTES:
            text = pattern.sub(repl, text)
    for trigger, pattern, repl in _PUNCTUATION:
        if trigger is None:
            text = _split_final_period(text)
        elif any(c in text for c in trigger):
            text = pattern.sub(repl, text)
    if _BRACKET_CHARS.search(text):
        for pattern, repl in _BRACKETS:
            text = pattern.sub(repl, text)
    text = f" {text} "
    if '"' in text or "'" in text:
        for pattern, repl in _ENDING_QUOTES:
            text = pattern.sub(repl, text)
    lowered = text.lower()
    if any(hint in lowered for hint in _CONTRACTION_HINTS):
        for pattern in _CONTRACTIONS:
            text = pattern.sub(r" \1 \2 ", text)
    return text.split()


def word_tokenize(text: str) -> list[str]:
    """NLTK-style ``word_tokenize`` (sentence split, then Treebank) without downloaded data."""
    return [tok for sentence in split_sentences(text) for tok in treebank_tokenize(sentence)]


def scan_tokenize(caption: str) -> list[str]:
    """What SCAN does to a caption before looking words up: lower-case, then word_tokenize."""
    return word_tokenize(caption.lower())
