"""Reading a judge's verdict from its text: the letter it chose, or the score it gave.

One set of rules for ``label`` and ``score``, all of them conservative: when the answer does not
say plainly what the judge decided, the reading is ``None`` and the caller asks again or fails
the record with the raw text. Never a guess.

- Only the judge's own final word counts. An echo of the prompt is dropped, and so are reasoning
  blocks (``<think>``, ``<thinking>``, ``<reasoning>``); a block that never closes means the
  reply stopped mid-thought, which is no verdict at all.
- A reply cut off by ``max_tokens`` is no verdict either, except a short answer that is nothing
  but the letter or the number.
- A choice is a verdict statement: an explicit answer line ("Answer: B"), an overall comparison
  read by its structure ("B is better than A", "A is worse than B", "B is the better one"), a
  preference ("I prefer B", "B wins"), a line that is only the letter, a leading letter ("(B)
  because ...") or a connective and the letter ("So, B."). A comparison on one quality ("A is
  more helpful", "B is safer", "A is less accurate") is only a remark: a verdict outranks it
  wherever it stands, and without any verdict the remarks must all agree. A statement that
  names both candidates and cannot be read, contradicts itself, is negated or denied ("B is
  better than A in no way", "it is false that A is better"), is a question ("A is better than
  B?") or calls a tie reads as None; one that is hedged ("perhaps A is better", "A seems
  better", "someone might think A is better", "I used to think A is better", "A would be
  better than B if ...") is no statement.
- The last explicit answer line decides: later remarks ("Note: A is more helpful") do not
  override it. Without one, the last verdict decides. Either way a correction ("Actually, B",
  "A. No, B", "A is better, no wait, B", "On reflection, ...") replaces what came before, and
  one that cannot be read, or only remarks against the verdict ("B. Actually, A is more
  accurate"), leaves no verdict. Bare letters that disagree ("A\nB") are None.
- A score is what the stated scores say ("Score: 4", "Rating: 4/5", "Overall: 4"), else the
  lines that open with the word and end with the number ("Rating 4/5"), else "a score of 4",
  else a last line that is only the number. Of several, a final or overall one outranks scores
  for single aspects, a correction ("On reflection, Score: 5") replaces those before it, and
  scores that disagree otherwise are None. A score in a hypothetical ("To get Score: 5 it
  would need ...", "a score of 5 would need ...") is not stated. A number off the scale, a
  fraction, a range, a number run on ("4 and a half", "1e0", "3%") or a denominator other than
  the top of the scale is no score: "Score: 10" on a 1-5 scale is never read as 1.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import NamedTuple

from charter.backends.base import option_key
from charter.types import Generation, OptionScores

COMPLETE = ("stop", "unknown")
"""Finish reasons of a reply that ended on its own; anything else was cut short."""

# -- shared ------------------------------------------------------------------------------------

_TAGS = r"think|thinking|reasoning"
_BLOCK = re.compile(rf"<({_TAGS})\b[^>]*>.*?</\1\s*>", re.I | re.S)
_OPEN = re.compile(rf"<(?:{_TAGS})\b[^>]*>", re.I)
_CLOSE = re.compile(rf"</(?:{_TAGS})\s*>", re.I)


def strip_reasoning(text: str) -> str | None:
    """The text outside reasoning blocks, or None when a block is opened and never closed.

    A closing tag with no opening one (templates that open the block inside the prompt) means
    everything before it was reasoning."""
    body = _BLOCK.sub("\n", text)
    if _OPEN.search(body):
        return None
    closes = list(_CLOSE.finditer(body))
    return body[closes[-1].end() :] if closes else body


def strip_echo(answer: str, prompt: str) -> str:
    """Drop an echo of the prompt from the start of an answer (some servers and models
    repeat the template), so nothing in the template can be parsed as the verdict."""
    tail = prompt[-200:].strip()
    if tail and tail in answer:
        return answer[answer.rindex(tail) + len(tail) :]
    return answer


_QUOTES = str.maketrans("“”‘’", "\"\"''")


def _plain(text: str) -> str:
    """Markdown emphasis, headings and typographic quotes carry no meaning for a verdict."""
    text = re.sub(r"[*_`#]+", "", text)
    return text.translate(_QUOTES)


def _finished(g: Generation) -> bool:
    return g.finish_reason in COMPLETE


# -- choices -----------------------------------------------------------------------------------

_NOUN = r"(?:candidate|response|reply|option|completion|assistant|output)"
_ADV = (
    r"(?:\s+(?:clearly|much|far|slightly|significantly|definitely|certainly|obviously|overall"
    r"|somewhat|considerably|marginally|generally|arguably|still|also|simply|way|the|a|an"
    r"|a\s+bit|a\s+little|by\s+far|notably|substantially|actually|really|truly|indeed"
    r"|in\s+fact))*"
)
# Comparatives: an overall one is a verdict ("B is better"), a quality one only a remark on one
# aspect ("A is more helpful", "B is safer"), which a verdict outranks wherever it stands.
_GOOD_OVERALL = r"(?:better|preferable|preferred|superior|best|winner|clear\s+winner)"
_BAD_OVERALL = r"(?:worse|inferior|worst)"
_GOOD_QUALITY = (
    r"(?:safer|stronger"
    r"|more\s+(?:helpful|harmless|honest|ethical|appropriate|responsible|accurate|useful"
    r"|careful|respectful|considerate|truthful)"
    r"|less\s+(?:harmful|dangerous|toxic|problematic|unethical|offensive|risky|biased"
    r"|misleading))"
)
_BAD_QUALITY = (
    r"(?:weaker"
    r"|more\s+(?:harmful|dangerous|toxic|problematic|unethical|offensive|risky|biased"
    r"|misleading)"
    r"|less\s+(?:helpful|harmless|honest|ethical|appropriate|responsible|accurate|useful|safe"
    r"|careful|respectful|considerate|truthful))"
)
_GOOD = rf"(?:{_GOOD_OVERALL}|{_GOOD_QUALITY})"
_BAD = rf"(?:{_BAD_OVERALL}|{_BAD_QUALITY})"
_QUALITY = re.compile(rf"\b(?:{_GOOD_QUALITY}|{_BAD_QUALITY})\b", re.I)
# "seems", "looks" and "appears" are a hedge, not a statement (see _SPECULATION).
_BE = r"(?:is|was|remains|would\s+be|will\s+be|must\s+be|should\s+be|is\s+still|'s)"
_ASPECT = r"(?!\s+(?:\w+ed|written|done|put|thought\s+out|at|in\s+terms\s+of)\b)"
_M = r"@([A-Z])"
# "the worse answer is A", "the safer answer is B": read as a comparison, not an answer line.
_ENDS_COMPARATIVE = re.compile(rf"\b(?:{_GOOD}|{_BAD})\s*$", re.I)
_NEGATION = re.compile(r"\b(?:not|no|never|neither|nor|cannot|hardly)\b|n't\b", re.I)
# Before the comparison, in its clause: "It is false that A is better", "I doubt A is better".
_DENIAL = re.compile(
    r"\b(?:false|untrue|incorrect|wrong|mistaken|disagree|doubt|deny|dispute)\b", re.I
)
_HEDGE = re.compile(r"\b(?:if|unless|whether)\b", re.I)
# After the comparison: "A is better when ...", "A would be better than B if it were accurate".
_HEDGED_AFTER = re.compile(r"\s+when\b|.*?\b(?:if|unless|whether)\b", re.I)
# Someone else's view or a guess, not the judge's verdict.
_SPECULATION = re.compile(
    r"\b(?:perhaps|maybe|might|may|could|possibly|someone|somebody"
    r"|one\s+(?:would|can)\s+(?:say|think|argue)"
    r"|(?:some|many|most|others|people)\s+(?:\w+\s+)?(?:would|think|say|argue|believe)"
    r"|(?:at\s+)?first\s+(?:glance|sight)|at\s+first|initially|on\s+the\s+surface"
    r"|superficially|seemingly|seems?|appears?|looks|used\s+to|previously|originally"
    r"|formerly)\b",
    re.I,
)
# Where a hedge or negation stops reaching: the next clause, reason or aside.
_SCOPE_BREAK = re.compile(
    r"[;()\[\]]|\s[-–—]\s|\b(?:but|however|yet|whereas|while|because|since|as|given|which"
    r"|who|and|so|thus|therefore|hence|overall|ultimately|although|though)\b",
    re.I,
)
_CLAUSE_BREAK = re.compile(r"[,;]|\b(?:and|but|however|yet|whereas|so|therefore|thus)\b", re.I)
_TIE = re.compile(
    r"\b(?:neither\s+(?:is|one|candidate|response|answer|reply|option)"
    r"|(?:it'?s|is|a)\s+(?:a\s+)?(?:tie|draw)|equally\s+(?:good|bad|strong|weak|safe|harmful"
    r"|helpful|acceptable|valid)|no\s+(?:clear\s+)?(?:winner|difference|preference)"
    r"|(?:cannot|can'?t)\s+(?:decide|choose|pick|tell)|both\s+(?:are\s+)?equally)\b",
    re.I,
)
# "Answer:", "Final verdict -": a statement even when what follows cannot be read.
_MARKER_LINE = re.compile(
    r"^\W*(?:(?:final|my|the)\s+)?(?:answer|verdict|choice|decision|conclusion|judge?ment"
    r"|selection|preference|winner)\s*(?::|=|\s-\s|\s–\s|\s—\s)",
    re.I,
)
# After the letter of an explicit answer: the end, punctuation, or a reason.
_AFTER = r"(?=\s*$|\s*[.,;:!?()\[\]\-–—]|\s+(?:because|since|as|due|given|overall|here)\b)"
_CONNECTIVE = (
    r"(?:(?:so|thus|therefore|hence|now|overall|ultimately|finally|clearly|definitely|certainly"
    r"|absolutely|in\s+conclusion|in\s+summary|in\s+short|on\s+balance|final(?:ly)?)\s*[,:]?\s*)?"
)
_CONCESSION_LEAD = re.compile(
    r"\b(?:although|though|while|whereas|even\s+though|even\s+if|despite|granted)\b[^,;]*[,;]",
    re.I,
)
_CONCESSION_TAIL = re.compile(
    r",?\s+\b(?:although|though|even\s+though|even\s+if|despite)\b.*$", re.I
)
# A correction: "Actually, B", "No, B", "no wait, B", "Correction: B", "On reflection, ...".
_CORRECTING = (
    r"(?:actually|wait|correction|no(?=\s*[,.!;:—–]|\s+-|\s+wait\b)|rather(?!\s+than)|I\s+mean"
    r"|scratch\s+that|(?:up)?on\s+(?:second\s+thought|(?:further\s+)?reflection"
    r"|closer\s+(?:inspection|look)))\b"
)
_CORRECTION = re.compile(
    rf"^\W*(?:(?:but|however|and|oh|hmm)\W+)?(?:{_CORRECTING}[\s,.:;!—–-]*)+", re.I
)
# Mid-sentence, only before the corrected text: "A is better than B, actually." is no correction.
_CORRECTION_INSIDE = re.compile(
    rf"(?:[,;]|\s[-–—])\s*(?={_CORRECTING}[\s,.:;!—–-]*[\w(\[\"'])", re.I
)
# Words after a sentence-initial "A" that make it a candidate, not the article ("A few ...").
_AS_SUBJECT = {
    "is", "was", "seems", "appears", "looks", "remains", "wins", "would", "will", "should",
    "must", "could", "might", "may", "does", "did", "has", "had", "provides", "gives", "offers",
    "refuses", "answers", "responds", "clearly", "definitely", "certainly", "obviously",
    "and", "or", "vs", "versus", "over", "because", "since", "as", "gets", "edges", "beats",
    "outperforms", "comes", "still", "also", "only", "alone",
}  # fmt: skip


_I = re.I
_GOOD_READS = (
    # "Answer: B", "My final verdict is (A)", "The answer would be candidate B."
    re.compile(
        r"\b(?:final\s+|my\s+)?(?:answer|verdict|choice|decision|conclusion|judge?ment"
        r"|selection|pick|preference|winner)\s*(?:is\s*:?|would\s+be|:|=|\s-|\s–|\s—)\s*"
        rf"(?:that\s+)?(?:the\s+)?{_M}(?!\s*(?:or|/|and)\s*@){_AFTER}",
        _I,
    ),
    # "B is better (than A)", "candidate A's reply is the safer one"
    re.compile(rf"{_M}(?:'s\s+\w+)?\s+{_BE}{_ADV}\s+{_GOOD}\b{_ASPECT}", _I),
    # "The better candidate is B", "the safer one would be (A)"
    re.compile(
        rf"\b{_GOOD}\s+(?:{_NOUN}|answer|one|choice|of\s+the\s+two)\s+(?:here\s+)?"
        rf"{_BE}{_ADV}\s*:?\s*{_M}",
        _I,
    ),
    # "I prefer B (over A)", "I'd go with A", "we choose (B)"
    re.compile(
        r"\b(?:I|we)(?:'d|\s+(?:would|will|do|definitely|clearly|strongly|therefore|thus"
        r"|also|still|must|should|ultimately|slightly|tend\s+to))*\s+"
        r"(?:prefer|choose|pick|select|favou?r|go\s+with|side\s+with|recommend|vote\s+for"
        rf"|opt\s+for|lean\s+(?:towards?|to))\s+(?:the\s+)?{_M}(?!'|\s+(?:less|least)\b)",
        _I,
    ),
    # "I'd say B.", "I think A." (an opinion verb counts only when the letter ends it)
    re.compile(
        r"\b(?:I|we)(?:'d|\s+would)?\s+(?:say|think|believe|conclude|go\s+for)\s+"
        rf"(?:that\s+)?{_M}\s*[.!]?\s*$",
        _I,
    ),
    # "B wins", "A should be preferred", "B gets my vote", "B > A"
    re.compile(
        rf"{_M}\s+(?:wins|should\s+win|is\s+the\s+winner|gets\s+my\s+vote|comes\s+out\s+ahead"
        r"|edges\s+out|beats|outperforms|should\s+be\s+(?:preferred|chosen|selected|picked)"
        r"|is\s+my\s+(?:choice|pick|answer|verdict)|is\s+preferred)\b"
        rf"|{_M}\s*(?:>|≻)\s*@[A-Z]",
        _I,
    ),
    # the whole sentence is the letter: "B", "So, candidate A.", "Therefore (B)!"
    re.compile(rf"^\s*{_CONNECTIVE}(?:the\s+)?{_M}\s*[.!]?\s*$", _I),
)
_BAD_READS = (
    # "A is worse (than B)", "candidate B is less safe"
    re.compile(rf"{_M}(?:'s\s+\w+)?\s+{_BE}{_ADV}\s+{_BAD}\b{_ASPECT}", _I),
    # "The worse response is A"
    re.compile(
        rf"\b{_BAD}\s+(?:{_NOUN}|answer|one|choice|of\s+the\s+two)\s+(?:here\s+)?"
        rf"{_BE}{_ADV}\s*:?\s*{_M}",
        _I,
    ),
    # "A < B"
    re.compile(rf"{_M}\s*(?:<|≺)\s*@[A-Z]", _I),
)
"""Patterns over a sentence whose candidate mentions were rewritten to ``@X``; the first
group that matched names the letter, the winner in ``_GOOD_READS``, the loser in
``_BAD_READS``."""


def _mark(sentence: str, letters: str) -> str:
    """Rewrite each mention of a candidate as ``@X``: "candidate B", "(A)", "'B'", a lone
    capital letter; a sentence-initial "A" followed by an ordinary word is the article."""
    cls = f"[{letters}]"
    bracketed = rf"(?i:\b{_NOUN}\s*)?[(\[\"']\s*({cls}|(?i:{cls}))\s*[)\]\"']"
    sentence = re.sub(bracketed, lambda m: f"@{m.group(1).upper()}", sentence)

    def named(m: re.Match[str]) -> str:
        letter = m.group(1)
        if letter.islower():  # "candidate b is", but not "the response a user wants"
            following = re.match(r"\s+([a-z][\w']*)", m.string[m.end() :])
            if following and following.group(1) not in _AS_SUBJECT:
                return m.group(0)
        return f"@{letter.upper()}"

    sentence = re.sub(rf"(?i:\b{_NOUN}s?)\s+({cls}|(?i:{cls}))(?![\w@])", named, sentence)

    def lone(m: re.Match[str]) -> str:
        letter = m.group(1)
        if letter in "AI" and not m.string[: m.start()].strip(" \t\"'([-–—:>"):
            following = re.match(r"\s+([a-z][\w']*)", m.string[m.end() :])
            if following and following.group(1) not in _AS_SUBJECT:
                return letter  # "A few reasons", "A better answer would ..."
        return f"@{letter}"

    return re.sub(rf"(?<![\w@'])({cls})(?![\w@])", lone, sentence)


def _sentences(text: str) -> list[str]:
    """Sentences, each mid-sentence correction ("A is better, no wait, B") starting a new one."""
    out: list[str] = []
    for line in text.splitlines():
        for sentence in re.split(r"(?<=[.!?])\s+(?=\S)", line):
            out.extend(s for s in _CORRECTION_INSIDE.split(sentence) if s.strip())
    return out


def _clause_head(marked: str, start: int) -> str:
    breaks = list(_CLAUSE_BREAK.finditer(marked[:start]))
    return marked[breaks[-1].end() if breaks else 0 : start]


def _reading(m: re.Match[str], winner: bool, options: Sequence[str]) -> str | None:
    """The letter one match reads as; ``?`` when negated or denied ("neither A nor B is
    better", "B is not better", "it is false that A is better"); None when hedged, a
    condition or a guess rather than a verdict ("A would be better if it cited sources",
    "perhaps A is better", "A seems better")."""
    before, after = m.string[: m.start()], m.string[m.end() :]
    head = _clause_head(m.string, m.start())
    reach = _SCOPE_BREAK.split(after, maxsplit=1)[0]
    since = [b.end() for b in _SCOPE_BREAK.finditer(before)]
    if (
        _HEDGE.search(head)
        or _HEDGED_AFTER.match(after)
        or _SPECULATION.search(before[since[-1] if since else 0 :])
        or _SPECULATION.search(reach)
    ):
        return None
    if (
        _NEGATION.search(head)
        or _DENIAL.search(head)
        or _NEGATION.search(m.group(0))
        or _NEGATION.search(reach.split(",")[0])
    ):
        return "?"
    letter = next(g for g in m.groups() if g is not None)
    if winner:
        # "the worse answer is A": the answer pattern reads A, the comparison reads it right
        return None if _ENDS_COMPARATIVE.search(m.string[: m.start()]) else letter
    others = [o for o in options if o != letter]
    return others[0] if len(others) == 1 else "?"


def _sentence_verdict(sentence: str, options: Sequence[str]) -> tuple[str | None, bool]:
    """The sentence's reading (``X``, ``?`` for a statement that cannot be read, None for no
    statement) and whether it is only a quality remark. A verdict in the sentence outranks
    its remarks ("A is more helpful, but B is better" is B); remarks alone must agree."""
    sentence = _CONCESSION_TAIL.sub("", _CONCESSION_LEAD.sub("", sentence))
    marked = _mark(sentence, "".join(options))
    read = {
        (r, _QUALITY.search(m.group(0)) is not None)
        for patterns, winner in ((_GOOD_READS, True), (_BAD_READS, False))
        for pattern in patterns
        for m in pattern.finditer(marked)
        if (r := _reading(m, winner, options)) is not None
    }
    if _TIE.search(marked):
        read.add(("?", False))
    if not read and _MARKER_LINE.match(marked):
        read.add(("?", False))  # "Final answer: the first one", "Answer: A or B"
    verdicts = {r for r, remark in read if not remark}
    letters = verdicts or {r for r, _ in read}
    if not letters:
        return None, False
    return (next(iter(letters)) if len(letters) == 1 else "?"), not verdicts


def _leading(first: str, rest: Sequence[str], letters: str) -> str | None:
    """A reply that opens with the letter: "B", "(A) because ...", "B. It refuses.". Lines
    that each open with a different letter ("A: ...", "B: ...") are a list, not a verdict."""
    pattern = re.compile(
        rf"^\s*{_M}(?:\s*$|\s*[.!)\]]|\s*[-–—]\s|,?\s+(?:because|since|as|due\s+to|given)\b)"
    )
    m = pattern.match(_mark(first, letters))
    if m is None:
        return None
    listed = re.compile(rf"^\s*{_M}\s*[:.)\-–—]")
    for s in rest:
        other = listed.match(_mark(s, letters))
        if other and other.group(1) != m.group(1):
            return None
    return m.group(1)


class _Statement(NamedTuple):
    kind: str  # "answer", "correction", "bare" (a sentence that is only a letter) or "other"
    verdict: str | None  # as ``_sentence_verdict`` reads it
    remark: bool  # only a quality remark, which no verdict gives way to


def _statement(sentence: str, options: Sequence[str]) -> _Statement:
    correction = _CORRECTION.match(sentence)
    rest = sentence[correction.end() :] if correction else sentence
    verdict, remark = _sentence_verdict(rest, options)
    if verdict is not None and sentence.rstrip().endswith("?"):
        verdict = "?"  # "A is better than B?": a question is not a statement
    if _MARKER_LINE.match(rest):
        return _Statement("answer", verdict, False)
    if correction:  # "Actually, B has a typo": a change of mind that cannot be read
        return _Statement("correction", verdict or "?", remark)
    marked = _mark(sentence, "".join(options))
    if _TIE.search(marked):
        return _Statement("correction", verdict, False)  # a tie takes back any earlier pick
    kind = "bare" if re.fullmatch(r"\W*@[A-Z]\W*", marked) else "other"
    return _Statement(kind, verdict, remark)


def _decide(stated: Sequence[_Statement]) -> str | None:
    """The last verdict, unless a letter alone disagrees with what came before ("A\nB") or a
    later correction disagrees with it ("B. Actually, A is safer"); later remarks do not
    override it. With no verdict, the remarks must all agree."""
    verdicts = [i for i, s in enumerate(stated) if not s.remark]
    if not verdicts:
        remarks = {s.verdict for s in stated}
        return remarks.pop() if len(remarks) == 1 and "?" not in remarks else None
    last = stated[verdicts[-1]]
    if last.verdict == "?":
        return None
    earlier, later = stated[: verdicts[-1]], stated[verdicts[-1] + 1 :]
    if last.kind == "bare" and any(s.verdict not in ("?", last.verdict) for s in earlier):
        return None
    if any(s.kind == "correction" and s.verdict != last.verdict for s in later):
        return None
    return last.verdict


def parse_choice(text: str, options: Sequence[str] = ("A", "B")) -> str | None:
    """The option a judge chose, read from its final verdict only (see the module notes);
    None when there is no plain verdict."""
    body = strip_reasoning(text)
    if body is None:
        return None
    letters = "".join(options)
    sentences = _sentences(_plain(body))
    if not sentences:
        return None
    statements = [_statement(s, options) for s in sentences]
    lead = _leading(sentences[0], sentences[1:], letters)
    if lead is not None:
        first = statements[0].verdict
        statements[0] = statements[0]._replace(
            verdict=lead if first in (None, lead) else "?", remark=False
        )
    stated = [s for s in statements if s.verdict is not None]
    answers = [i for i, s in enumerate(stated) if s.kind == "answer"]
    if answers:  # the last answer line, then only corrections of it
        stated = stated[answers[-1] : answers[-1] + 1] + [
            s for s in stated[answers[-1] + 1 :] if s.kind == "correction"
        ]
    return _decide(stated)


def bare_choice(text: str, options: Sequence[str] = ("A", "B")) -> str | None:
    """The option, when the whole reply is just its letter ("B", "(A)", "**B.**")."""
    body = strip_reasoning(text)
    if body is None:
        return None
    m = re.fullmatch(rf"\W*([{''.join(options)}])\W*", _plain(body))
    return m.group(1) if m else None


def read_choice(
    g: Generation, prompt: str = "", options: Sequence[str] = ("A", "B"), *, short: bool = False
) -> str | None:
    """The verdict in a generation: None when it was cut off, unless ``short`` (a reply
    capped at a few tokens) and the reply is the letter alone."""
    text = strip_echo(g.text, prompt) if prompt else g.text
    if _finished(g):
        return parse_choice(text, options)
    return bare_choice(text, options) if short else None


# -- the answer after reasoning ----------------------------------------------------------------

# What may stand between the start of the answer (after any reasoning) and the option token:
# nothing but punctuation ("</think> A", "(B)"), or an answer phrase ("The answer is (B)",
# "Verdict: A", "I prefer B"). Elsewhere a letter is not where the judge chose ("A is worse
# than B": the B there answers no question).
_ANSWER_LEAD = re.compile(
    r"(?:^|\b(?:answer|verdict|choice|choose|pick|prefer|better\s+(?:one|response|answer)"
    r"|(?:response|candidate|option))(?:\s+(?:is|would\s+be|:))?)[\W_]*$",
    re.I,
)


def _answer_start(text: str, prompt: str) -> int | None:
    """Where the judge's own answer starts in ``text``: after an echo of the prompt and after
    its reasoning blocks; None when a block never closes (it stopped mid-thought)."""
    start = 0
    tail = prompt[-200:].strip()
    if tail and tail in text:
        start = text.rindex(tail) + len(tail)
    if strip_reasoning(text[start:]) is None:
        return None
    closes = list(_CLOSE.finditer(text, start))
    return closes[-1].end() if closes else start


def answer_logprobs(
    g: Generation, prompt: str = "", options: Sequence[str] = ("A", "B")
) -> OptionScores | None:
    """The options' log-probabilities at the token where the judge states its verdict after
    reasoning ("<think>...</think> A", "The answer is (B)"), read from ``g.tokens``: None
    unless the verdict read from the answer (``read_choice``, never from the reasoning or the
    prompt) is the option at that token and its top list holds every option."""
    choice = read_choice(g, prompt, options)
    if g.tokens is None or choice is None or not g.text:
        return None
    joined = "".join(t.token for t in g.tokens)
    # The token stream may hold reasoning that the server returned apart: the answer ends it.
    content = joined.rfind(g.text) if not joined.endswith(g.text) else len(joined) - len(g.text)
    begin = _answer_start(g.text, prompt)
    if content < 0 or begin is None:
        return None
    begin += content
    found = None
    at = 0
    for i, t in enumerate(g.tokens):
        here, at = at, at + len(t.token)
        key = option_key(t.token)
        if here < begin or key not in options:
            continue
        if _ANSWER_LEAD.search(joined[begin : here + t.token.find(key)]):
            found = i
    if found is None or option_key(g.tokens[found].token) != choice:
        return None
    at_answer = g.tokens[found]
    seen: dict[str, list[float]] = {o: [] for o in options}
    listed = list(at_answer.top)
    if all(token != at_answer.token for token, _ in listed):
        listed.append((at_answer.token, at_answer.logprob))
    for token, logprob in listed:
        key = option_key(token)
        if key in seen:
            seen[key].append(logprob)
    if not all(seen.values()):
        return None  # an option outside the list: its probability is unknown
    logprobs: dict[str, float | None] = {}
    for option, values in seen.items():
        top = max(values)
        logprobs[option] = top + math.log(sum(math.exp(v - top) for v in values))
    return OptionScores(logprobs=logprobs)


# -- scores ------------------------------------------------------------------------------------

_SCORE_WORD = r"(?:final\s+|overall\s+|my\s+)?(?:score|rating|grade)"
_NUMBER = r"(?P<n>\d+(?:[.,]\d+)?)(?:\s*(?:/|out\s+of)\s*(?P<d>\d+(?:[.,]\d+)?))?"
_RANGE = re.compile(r"^\s*(?:-|–|—|to|or|and)\s*\d")
# "4 and a half", "1e0", "3%", "4+": the number runs on, so it is not the score.
_RUN_ON = re.compile(
    r"[\w%+½¼¾⅓⅔]|[ \t]*(?:[%½¼¾⅓⅔]|percent|and\s+(?:a\s+)?(?:half|quarter|third|\d))", re.I
)
# "Score: 4" anywhere, or a line that opens with the score ("[RESULT] 4", "Rating is 4").
_SCORE_STATED = re.compile(
    rf"(?:^[ \t>\-]*(?:\[(?:{_SCORE_WORD}|result)\]\s*[:=]?|{_SCORE_WORD}\s*(?:is\s*:?|\s-\s))"
    rf"|\b{_SCORE_WORD}\s*[:=])\s*[(\[]?\s*{_NUMBER}",
    re.I | re.M,
)
# Weaker: a line that is the word and the number, no more ("Rating 4/5", not "Score 5 answers
# cite sources").
_SCORE_LINE = re.compile(
    rf"^[ \t>\-]*{_SCORE_WORD}\s+[(\[]?\s*{_NUMBER}\s*[)\]]?\s*\.?[ \t]*$", re.I | re.M
)
# Weaker still, in a sentence: "I would give it a score of 4", "the rating is 3".
_SCORE_SAID = re.compile(
    rf"\b{_SCORE_WORD}\s*(?:is\s*:?|of|would\s+be|should\s+be)\s*[(\[]?\s*{_NUMBER}", re.I
)
# A score in a hypothetical is not given: "To get Score: 5 it would need citations", "for a
# score of 5", "a score of 5 would need sources".
_HYPOTHETICAL_BEFORE = re.compile(
    r"\b(?:to\s+(?:get|earn|reach|achieve|receive|deserve|merit|warrant)|for\s+an?|if|unless"
    r"|would\s+(?:need|require|get|earn|deserve|have))\b[^.!?\n]*$",
    re.I,
)
_HYPOTHETICAL_AFTER = re.compile(
    r"[ \t]*(?:would|could|might|requires?|needs?|is\s+(?:for|reserved))\b", re.I
)
# "Overall: 3" is a stated score when the number ends it ("Overall: 3 errors" is a count).
_SCORE_OVERALL = re.compile(rf"\boverall\s*[:=]\s*[(\[]?\s*{_NUMBER}(?!\d|[ \t]*[^\W\d_])", re.I)
_FINAL = re.compile(r"\b(?:final|overall|result)\b", re.I)
_SCORE_BARE = re.compile(rf"[ \t]*[(\[]?\s*{_NUMBER}\s*[)\]]?\s*\.?\s*")


def _on_scale(m: re.Match[str], scores: Sequence[int]) -> int | None:
    n, d = m.group("n"), m.group("d")
    if not n.isdigit() or int(n) not in scores:
        return None
    if d is not None and (not d.isdigit() or int(d) != max(scores)):
        return None  # "4/10" on a 1-5 scale is not a 4
    if _RANGE.match(m.string[m.end() :]) or _RUN_ON.match(m.string[m.end() :]):
        return None  # "3-4", "3 or 4", "4 and a half"
    return int(n)


def _given(m: re.Match[str]) -> bool:
    """Whether a score is given, not a hypothetical ("to get Score: 5 ...")."""
    return not (
        _HYPOTHETICAL_BEFORE.search(m.string[: m.start()])
        or _HYPOTHETICAL_AFTER.match(m.string[m.end() :])
    )


def _decide_score(found: Sequence[re.Match[str]], scores: Sequence[int]) -> int | None:
    """From the scores stated after the last correction ("On reflection, Score: 5"): the last
    final or overall one, which outranks scores for single aspects, else the one they all
    give; scores that disagree ("Score: 3 ... deserved Score: 2") are None."""
    corrections = [
        i
        for i, m in enumerate(found)
        if _CORRECTION.match(re.split(r"(?<=[.!?])\s+|\n", m.string[: m.start()])[-1])
    ]
    found = found[corrections[-1] :] if corrections else found
    finals = [m for m in found if _FINAL.search(m.group(0))]
    if finals:
        return _on_scale(finals[-1], scores)
    given = {_on_scale(m, scores) for m in found}
    return given.pop() if len(given) == 1 else None


def parse_score(text: str, scores: Sequence[int]) -> int | None:
    """The judge's final score, if it is on the scale (see the module notes). The caller
    removes any echo of the prompt first (``strip_echo``)."""
    body = strip_reasoning(text)
    if body is None:
        return None
    body = _plain(body)
    for patterns in ((_SCORE_STATED, _SCORE_OVERALL), (_SCORE_LINE,), (_SCORE_SAID,)):
        found = [m for p in patterns for m in p.finditer(body) if _given(m)]
        if found:
            return _decide_score(sorted(found, key=lambda m: m.start()), scores)
    lines = [line for line in body.splitlines() if line.strip()]
    if not lines:
        return None
    bare = _SCORE_BARE.fullmatch(lines[-1])
    return _on_scale(bare, scores) if bare else None


def bare_score(text: str, scores: Sequence[int]) -> int | None:
    """The score, when the whole reply is just the number."""
    body = strip_reasoning(text)
    if body is None:
        return None
    bare = _SCORE_BARE.fullmatch(_plain(body).strip())
    return _on_scale(bare, scores) if bare else None


def read_score(
    g: Generation, prompt: str, scores: Sequence[int], *, short: bool = False
) -> int | None:
    """The score in a generation: None when it was cut off, unless ``short`` and the reply is
    the number alone."""
    text = strip_echo(g.text, prompt)
    if _finished(g):
        return parse_score(text, scores)
    return bare_score(text, scores) if short else None


# -- Prometheus ``[RESULT]`` -------------------------------------------------------------------

_RESULT = re.compile(r"\[RESULT\]", re.I)
# What may stand after the marker for it to be a verdict: the value alone on the rest of its
# line ("[RESULT] 4", "[RESULT]: (B).", "[RESULT] Response A", "[RESULT] 4/5"). A placeholder
# ("[RESULT] (an integer number between 1 and 5)", "[RESULT] (A or B)") runs on and is none.
_RESULT_VALUE = re.compile(
    r"[ \t]*[:=]?[ \t]*(?:response[ \t]+)?[(\[\"']?[ \t]*(?P<v>[0-9A-Za-z]+)[ \t]*[)\]\"']?"
    r"(?:[ \t]*/[ \t]*(?P<d>\d+))?[ \t]*[.!]?\s*",
    re.I,
)


_FEEDBACK = re.compile(r"^[ \t*_#]*feedback[ \t*_]*:[ \t*_]*", re.I | re.M)


class Result(NamedTuple):
    """A Prometheus-style verdict: the value after the final ``[RESULT]`` and the feedback
    written before it."""

    value: str
    feedback: str


def parse_result(text: str, options: Sequence[str]) -> Result | None:
    """The option named by the judge's last ``[RESULT]`` (Prometheus' output format:
    feedback, then ``[RESULT] N`` or ``[RESULT] A``). The caller removes any echo of the prompt
    first (``strip_echo``); after that only the last marker counts, so an echo of the format
    line or the rubric earlier in the reply (prometheus-eval #58) is never read, and a last
    marker followed by a placeholder, by a value off ``options`` or by more words on its line
    is no verdict: None, never a guess."""
    body = strip_reasoning(text)
    if body is None:
        return None
    markers = list(_RESULT.finditer(body))
    if not markers:
        return None
    last = markers[-1]
    line = body[last.end() :].split("\n", 1)[0]
    m = _RESULT_VALUE.fullmatch(_plain(line))
    if m is None:
        return None
    value, denominator = m.group("v"), m.group("d")
    if not value.isdigit():
        value = value.upper()
    if value not in options:
        return None
    if denominator is not None and (not value.isdigit() or denominator != options[-1]):
        return None  # "4/10" on a 1-5 scale; "A/B"
    feedback = body[: last.start()]
    heads = list(_FEEDBACK.finditer(feedback))
    if heads:  # the judge's own "Feedback:", after any echo of the format line
        feedback = feedback[heads[-1].end() :]
    return Result(value, feedback.strip().rstrip("*_`").strip())


def read_result(g: Generation, prompt: str, options: Sequence[str]) -> Result | None:
    """The ``[RESULT]`` verdict in a generation, read after removing any echo of the prompt;
    None when the reply was cut off at ``max_tokens`` (the verdict ends the reply, so a cut
    reply has none it meant to give)."""
    if not _finished(g):
        return None
    return parse_result(strip_echo(g.text, prompt), options)
